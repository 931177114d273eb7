"""Meta-training: gram meta-train (GRAM's theta* and R_phi* from the tasks of a CHC hierarchy)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..autocast import AUTOCAST
from ..backbones import load_backbone
from ..backbones.registry import DTYPES, resolve_device
from ..prompts import METHODS, PromptConfig
from .common import Entry, add_backbone_args, add_command, add_objective_args, add_overwrite_arg, objective_settings

TITLE = "meta-training"


def add_commands(sub: argparse._SubParsersAction) -> list[Entry]:
    text = "meta-learn a prompt initialization and a gradient regulator on CHC tasks"
    p = add_command(sub, "meta-train", text, "GRAM: meta-learn a prompt initialization theta* and a gradient "
                                             "regulator phi* on tasks from a CHC hierarchy")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--hierarchy", type=Path, help="a `gram chc` output folder (this or --supervised is required)")
    src.add_argument("--supervised", default=None, metavar="DATASET",
                     help="ablation (- CHC): tasks from a labelled dataset's classes instead, e.g. clipart-categories "
                          "(this or --hierarchy is required)")
    add_backbone_args(p)
    p.add_argument("--method", required=True, choices=sorted(METHODS), metavar="METHOD",
                   help="prompt method GRAM wraps: coop, cocoop, vpt, vpt-deep, joint (UNIGRAM: joint, 2+2 tokens)")
    p.add_argument("--out", required=True, type=Path, help="run folder; rerun the same command to resume")
    add_overwrite_arg(p)
    _add_meta_args(p)
    p.set_defaults(fn=cmd_meta_train)
    return [("meta-train", text)]


def _add_meta_args(p: argparse.ArgumentParser) -> None:
    """The meta-training schedule, the tasks, the regulator, the ablations and the prompt shape."""
    from ..meta.regulator import FORMS
    from ..meta.tasks import TaskConfig
    from ..meta.trainer import MetaConfig

    d_meta, d_task, d_prompt = MetaConfig(), TaskConfig(), PromptConfig()
    p.add_argument("--iterations", type=int, default=d_meta.iterations, help="meta-iterations (meta-batches)")
    p.add_argument("--task-batch", type=int, default=d_meta.task_batch, help="tasks per meta-batch (B)")
    p.add_argument("--ways", type=int, default=d_task.ways, help="classes per task (K_t)")
    p.add_argument("--support-shots", type=int, default=d_task.support_shots, help="support images per class of a task")
    p.add_argument("--query-shots", type=int, default=d_task.query_shots, help="query images per class of a task")
    p.add_argument("--inner-lr", type=float, default=d_meta.inner_lr, help="alpha")
    p.add_argument("--inner-steps", type=int, default=d_meta.inner_steps, help="inner-loop steps per task (N)")
    p.add_argument("--lr-theta", type=float, default=d_meta.lr_theta, help="lambda_1 (Adam)")
    p.add_argument("--lr-phi", type=float, default=d_meta.lr_phi, help="lambda_2 (Adam)")
    p.add_argument("--second-order", action="store_true", help="keep the Hessian term (slower, more memory)")
    p.add_argument("--regulator", choices=["shared", "diagonal", "full"], default=d_meta.regulator.shape,
                   help="shape of the regulator's W: shared (d x d on the embedding axis, shared by the tokens), "
                        "diagonal (elementwise), full (on the flattened gradient; small prompts only)")
    p.add_argument("--no-regulator", action="store_true", help="ablation: raw gradients in the inner loop")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--regulator-form", choices=list(FORMS), default=d_meta.regulator.form_name,
                      help="literal (the paper's formula), scale-invariant (sees g / rms(g), beta scaled by rms(g)), "
                           "bounded (R(0) = 0, ||R(g)|| <= ||g||, gated toward g; chosen by measurement); "
                           "see docs/DESIGN.md")
    form.add_argument("--scale-invariant", dest="regulator_form", action="store_const", const="scale-invariant",
                      help="alias of --regulator-form scale-invariant")
    p.add_argument("--no-domain-shift", action="store_true", help="ablation: support sets from all domains")
    p.add_argument("--pretrain", action="store_true",
                   help="ablation (- meta-learning): plain classification of the clustered images, topic words "
                        "as classes")
    p.add_argument("--autocast", choices=sorted(AUTOCAST), default=d_meta.autocast,
                   help="bf16: forward passes under bfloat16 autocast (on a GPU; theta, phi and Adam stay fp32)")
    p.add_argument("--grad-clip", type=float, default=d_meta.grad_clip,
                   help="clip the global norm of the (theta, phi) meta-gradient to this (0: off)")
    p.add_argument("--stats-every", type=int, default=d_meta.stats_every,
                   help="log before/after and gradient-alignment statistics every this many iterations (0: off; each "
                        "costs an extra backward per task; gram figure fig3b reads them)")
    p.add_argument("--checkpoint-every", type=int, default=d_meta.checkpoint_every,
                   help="save a resumable checkpoint every this many iterations")
    p.add_argument("--text-tokens", type=int, default=d_prompt.text_tokens, help="learned text context tokens")
    p.add_argument("--visual-tokens", type=int, default=d_prompt.visual_tokens, help="learned visual prompt tokens")
    p.add_argument("--visual-depth", type=int, default=None,
                   help="layers with their own prompts, for vpt-deep (default: all)")
    add_objective_args(p)
    p.add_argument("--seed", type=int, default=d_meta.seed,
                   help="seed of the theta and phi initialization and of the task sampler")


def cmd_meta_train(a: argparse.Namespace) -> int:
    from ..meta.regulator import RegulatorConfig
    from ..meta.run import meta_train
    from ..meta.tasks import TaskConfig
    from ..meta.trainer import MetaConfig

    backbone = load_backbone(a.backbone, device=resolve_device(a.device), dtype=DTYPES[a.dtype])
    cfg = MetaConfig(mode="pretrain" if a.pretrain else "gram", iterations=a.iterations, task_batch=a.task_batch,
                     inner_lr=a.inner_lr, inner_steps=a.inner_steps,
                     lr_theta=a.lr_theta, lr_phi=a.lr_phi, second_order=a.second_order,
                     use_regulator=not a.no_regulator, grad_clip=a.grad_clip, stats_every=a.stats_every,
                     checkpoint_every=a.checkpoint_every, seed=a.seed, autocast=a.autocast,
                     tasks=TaskConfig(a.ways, a.support_shots, a.query_shots, domain_shift=not a.no_domain_shift),
                     regulator=RegulatorConfig(a.regulator, form=a.regulator_form))
    prompt = PromptConfig(text_tokens=a.text_tokens, visual_tokens=a.visual_tokens, visual_depth=a.visual_depth,
                          **objective_settings(a))
    path, state = meta_train(a.supervised or a.hierarchy, backbone, a.method, a.out, cfg, prompt,
                             supervised=a.supervised is not None, overwrite=a.overwrite)
    print(f"{state.iteration} meta-iterations ({state.skipped} skipped batches); theta* and phi* in {path}")
    print(f"use it: gram fewshot --init {path} --method {a.method} ...")
    return 0
