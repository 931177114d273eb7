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

import numpy as np

from gramprompt.backbones.base import Backbone
from gramprompt.locks import writes
from gramprompt.backbones.registry import recorded_backbone
from gramprompt.chc.config import DomainConfig
from gramprompt.chc.domains import cluster_domains
from gramprompt.chc.hierarchy import Hierarchy
from gramprompt.errors import GramError
from gramprompt.meta.checkpoint import save_gram
from gramprompt.meta.inputs import FeatureInputs, ImageInputs
from gramprompt.meta.tasks import TaskSampler
from gramprompt.meta.trainer import MetaConfig, MetaState, MetaTrainer, pretrain_batch_size
from gramprompt.prompts import PromptConfig, build_method
from gramprompt.runs import RunDir

GRAM_FILE = "gram.safetensors"


def task_inputs(method, hierarchy: Hierarchy):
    """Cached store features for text-only methods; the store's stems for visual-prompt methods
    when it kept them (``FeatureConfig.stems``), else stems/pixels decoded on first use."""
    bb, rows, store = method.backbone, hierarchy.rows[hierarchy.kept], hierarchy.store()
    if not method.uses_pixels:
        return FeatureInputs.from_store(store, rows, bb.device)
    if bb.cache_stems and store.has("stem"):
        return FeatureInputs.from_store(store, rows, bb.device, kind="stems", dtype=bb.dtype)
    return ImageInputs(bb, hierarchy.sources)


def class_domains(features: np.ndarray, labels: np.ndarray, cfg: DomainConfig, seed: int) -> np.ndarray:
    """Visual domains inside each class of a labelled dataset: CHC's domain stage (k-means on the
    L2-normalized frozen image features, ``chc.domains``) with each class as a topic (seed + class
    id, as CHC seeds each topic). A labelled dataset has no domains of its own; without these the
    "- CHC" row would also lose the simulated domain shift and confound two ablations."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    features = features / np.where(norms > 0, norms, 1.0)
    domain = np.full(len(labels), -1, np.int64)
    for c in np.unique(labels):
        mine = np.flatnonzero(labels == c)
        domain[mine] = cluster_domains(features[mine], cfg, seed + int(c))
    return domain


def supervised_tasks(method, dataset_spec: str, cfg: MetaConfig, domains: DomainConfig | None = None):
    """The "- CHC" ablation's tasks: a labelled dataset's classes (paper: WebVision), its train split,
    with k-means domains inside each class (``class_domains``) unless ``cfg.tasks.domain_shift`` is off.
    Visual-prompt methods encode every image once for the domains, then read stems/pixels as tasks
    need them."""
    from gramprompt.data.registry import load_dataset
    from gramprompt.tuning.features import encode_images

    dataset = load_dataset(dataset_spec)
    train = list(dataset.train)
    labels = np.array([s.label for s in train])
    feats = None
    if not method.uses_pixels or cfg.tasks.domain_shift:
        feats, kept = encode_images(method.backbone, train, method.backbone.transform.eval, desc="encoding images")
        if len(kept) != len(train):
            raise ValueError(f"{dataset_spec}: {len(train) - len(kept)} unreadable training images; "
                             "supervised meta-training needs every image (remove them from the dataset)")
    domain = None
    if cfg.tasks.domain_shift:
        domain = class_domains(feats.float().cpu().numpy(), labels, domains or DomainConfig(), cfg.seed)
    sampler = TaskSampler.supervised(labels, dataset.classnames, cfg.tasks, domain)
    if method.uses_pixels:
        return sampler, ImageInputs(method.backbone, [s.source for s in train])
    return sampler, FeatureInputs(feats)


def check_hierarchy_backbone(hierarchy: Hierarchy, source, backbone: Backbone) -> None:
    """A hierarchy's stored image features must come from this backbone: another encoder's features
    (even of the same width) are meaningless to its prompts."""
    made_with = hierarchy.info.get("backbone")
    if made_with is not None and recorded_backbone(made_with) != backbone.name:
        raise GramError(f"{source} was clustered with backbone {made_with!r}, not {backbone.name!r}: meta-train "
                        f"with --backbone {made_with}, or rerun gram chc with --backbone {backbone.name}")
    width = hierarchy.store().dim("img")
    if width != backbone.embed_dim:
        raise GramError(f"{source} holds {width}-d image features, backbone {backbone.name!r} makes "
                        f"{backbone.embed_dim}-d ones: rerun gram chc with this backbone")


# meta-training settings a resumed run may change (see MetaTrainer.RESUMABLE_CHANGES)
RESUMABLE = tuple(f"meta.{k}" for k in MetaTrainer.RESUMABLE_CHANGES)


@writes("out", "meta-training")
def meta_train(source: str | os.PathLike, backbone: Backbone, method_name: str, out: str | os.PathLike,
               cfg: MetaConfig | None = None, prompt: PromptConfig | None = None,
               supervised: bool = False, overwrite: bool = False,
               domains: DomainConfig | None = None) -> tuple[Path, MetaState]:
    """Meta-train theta and phi on tasks from the CHC hierarchy folder ``source`` (or, with
    ``supervised``, from the classes of the dataset spec ``source``, with ``domains`` (default: CHC's
    defaults) clustered inside each class); a killed run in ``out`` resumes, a folder holding another
    run is an error unless ``overwrite``. Returns the checkpoint path and the final state."""
    cfg = cfg or MetaConfig()
    prompt = prompt or PromptConfig()
    method = build_method(method_name, backbone, prompt)
    if supervised:
        sampler, inputs = supervised_tasks(method, str(source), cfg, domains)
        origin = {"supervised": str(source), "classes": len(sampler.names),
                  "class_domains": asdict(domains or DomainConfig()) if cfg.tasks.domain_shift else None}
    else:
        hierarchy = Hierarchy.load(source)
        check_hierarchy_backbone(hierarchy, source, backbone)
        sampler, inputs = TaskSampler.from_hierarchy(hierarchy, cfg.tasks), task_inputs(method, hierarchy)
        origin = {"hierarchy": str(source), "topics": len(hierarchy.topics)}
    if cfg.mode == "pretrain":  # recorded so that a folder of the former 5-way pre-training is not resumed
        origin["pretrain"] = {"classes": len(sampler.topics), "batch": pretrain_batch_size(cfg.task_batch, sampler.cfg)}
    run = RunDir.create(out, {"protocol": "meta-train", **origin, "backbone": backbone.name, "method": method_name,
                              "prompt": asdict(prompt), "meta": asdict(cfg), "skipped_topics": sampler.skipped},
                         resume=True, overwrite=overwrite, may_differ=RESUMABLE)
    trainer = MetaTrainer(method, sampler, inputs, cfg, run.path, log=run.log)
    resumed_at = trainer.checkpoint_iteration()  # iterations after the checkpoint are redone: drop their logs
    run.keep_metrics(lambda r: r.get("iteration", 0) <= resumed_at)
    state = trainer.run()
    info = {"method": method_name, "backbone": backbone.name, "prompt": asdict(prompt),
            "regulator": cfg.regulator.metadata() if state.phi else None, "meta": asdict(cfg), **origin,
            "iterations": state.iteration, "skipped_batches": state.skipped}
    path = save_gram(run.path / GRAM_FILE, state.theta, state.phi, info)
    return path, state
