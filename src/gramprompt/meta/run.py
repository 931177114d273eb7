"""``gram meta-train``: a CHC hierarchy + a backbone + a prompt method -> DIR/gram.safetensors.

The run folder holds ``config.yaml``, ``metrics.jsonl`` (one record per meta-iteration, with the
before/after query statistics and the support-query gradient alignment every ``stats_every``),
``checkpoint/`` (resumable), and at the end ``gram.safetensors`` + ``prompts.json``, which
``gram fewshot --init DIR/gram.safetensors`` starts from.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

from gramprompt.backbones.base import Backbone
from gramprompt.chc.hierarchy import Hierarchy
from gramprompt.meta.checkpoint import save_gram
from gramprompt.meta.inputs import FeatureInputs, ImageInputs
from gramprompt.meta.tasks import TaskSampler
from gramprompt.meta.trainer import MetaConfig, MetaState, MetaTrainer
from gramprompt.prompts import PromptConfig, build_method
from gramprompt.runs import RunDir

GRAM_FILE = "gram.safetensors"


def task_inputs(method, hierarchy: Hierarchy):
    """Cached store features for text-only methods, else stems/pixels decoded on first use."""
    if not method.uses_pixels:
        return FeatureInputs.from_store(hierarchy.store(), hierarchy.rows[hierarchy.kept], method.backbone.device)
    return ImageInputs(method.backbone, hierarchy.sources)


def meta_train(hierarchy_dir: str | os.PathLike, backbone: Backbone, method_name: str, out: str | os.PathLike,
               cfg: MetaConfig | None = None, prompt: PromptConfig | None = None) -> tuple[Path, MetaState]:
    """Meta-train theta and phi (resuming a killed run in ``out``); returns the checkpoint path."""
    cfg = cfg or MetaConfig()
    prompt = prompt or PromptConfig()
    hierarchy = Hierarchy.load(hierarchy_dir)
    method = build_method(method_name, backbone, prompt)
    sampler = TaskSampler.from_hierarchy(hierarchy, cfg.tasks)
    run = RunDir.create(out, {"protocol": "meta-train", "hierarchy": str(hierarchy_dir), "backbone": backbone.name,
                              "method": method_name, "prompt": asdict(prompt), "meta": asdict(cfg),
                              "skipped_topics": sampler.skipped})
    state = MetaTrainer(method, sampler, task_inputs(method, hierarchy), cfg, run.path, log=run.log).run()
    info = {"method": method_name, "backbone": backbone.name, "prompt": asdict(prompt),
            "regulator": asdict(cfg.regulator) if state.phi else None, "meta": asdict(cfg),
            "hierarchy": str(hierarchy_dir), "topics": len(hierarchy.topics), "iterations": state.iteration,
            "skipped_batches": state.skipped}
    path = save_gram(run.path / GRAM_FILE, state.theta, state.phi, info)
    return path, state
