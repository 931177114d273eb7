"""Tuning and evaluation: gram fewshot, transfer, zeroshot, drift."""
from __future__ import annotations

import argparse
from pathlib import Path

from tqdm.auto import tqdm

from .. import locks
from ..autocast import AUTOCAST
from ..backbones import load_backbone
from ..backbones.registry import DTYPES, resolve_device
from ..data.registry import SPEC_FORMS as DATASET_FORMS
from ..data.registry import load_dataset
from ..errors import RunFolderError
from ..eval.protocols import FewShotConfig, base_to_new, run_config, transfer, zero_shot_all_classes
from ..eval.table import zero_shot_table
from ..prompts import METHODS, PromptConfig
from ..runs import RunDir
from ..tuning.config import TuneConfig
from .common import (Entry, add_backbone_args, add_command, add_objective_args, add_overwrite_arg, lr_scale,
                     objective_settings)

TITLE = "tuning and evaluation"


def add_commands(sub: argparse._SubParsersAction) -> list[Entry]:
    text = "tune prompts on the base classes of a dataset, test on base and new classes"
    p = add_command(sub, "fewshot", text, f"{text} (the paper's base-to-new protocol; Table 1)")
    add_backbone_args(p)
    p.add_argument("--dataset", required=True, help=f"dataset spec: {', '.join(DATASET_FORMS)}")
    _add_fewshot_args(p)
    p.set_defaults(fn=cmd_fewshot)
    entries = [("fewshot", text)]

    text = "tune on all classes of a source dataset, test on target datasets"
    p = add_command(sub, "transfer", text, f"{text} (cross-dataset and cross-domain; Tables 2-5)")
    add_backbone_args(p)
    p.add_argument("--source", required=True, help=f"dataset spec: {', '.join(DATASET_FORMS)}")
    p.add_argument("--targets", required=True, nargs="+", help="target dataset specs")
    _add_fewshot_args(p)
    p.set_defaults(fn=cmd_transfer)
    entries.append(("transfer", text))

    text = "zero-shot accuracy on all classes of datasets, with chance level"
    p = add_command(sub, "zeroshot", text)
    add_backbone_args(p)
    p.add_argument("--datasets", required=True, nargs="+", help=f"dataset specs: {', '.join(DATASET_FORMS)}")
    p.add_argument("--max-test-per-class", type=int, default=None,
                   help="seeded subset of the test split (default: the whole test split)")
    p.set_defaults(fn=cmd_zeroshot)
    entries.append(("zeroshot", text))

    from ..eval.drift import RATIO_LIMIT

    text = "how far tuning moved the prompts; whether GRAM's regulator drifted them"
    p = add_command(sub, "drift", text, "how far tuning moved the prompts from their start, per epoch; whether "
                                        "GRAM's R_phi* drifted them (exit 1 when it did)")
    p.add_argument("dirs", nargs="+", type=Path, metavar="RUN_DIR",
                   help="few-shot run folders, or folders holding them (searched recursively)")
    p.add_argument("--limit", type=float, default=RATIO_LIMIT,
                   help="a regulated run whose final drift exceeds this multiple of the same run's without R_phi* "
                        "drifted (offline: literal 15x, scale-invariant 3.3x, bounded 1.4x)")
    p.set_defaults(fn=cmd_drift)
    return [*entries, ("drift", text)]


def _add_fewshot_args(p: argparse.ArgumentParser) -> None:
    """The flags gram fewshot and gram transfer share: the method, the sample, the run folder, the schedule."""
    d_tune, d_prompt = TuneConfig(), PromptConfig()
    p.add_argument("--method", required=True, choices=sorted(METHODS), metavar="METHOD",
                   help=f"prompt method: {', '.join(METHODS)}")
    p.add_argument("--shots", type=int, default=16, help="training images per class")
    p.add_argument("--seed", type=int, default=1, help="seed of the few-shot sample, init and shuffling")
    p.add_argument("--out", required=True, type=Path, help="run folder to write")
    add_overwrite_arg(p)
    p.add_argument("--init", default=None,
                   help="start from these prompts (.safetensors or run folder), e.g. GRAM's gram.safetensors "
                        "(default: a fresh initialization)")
    p.add_argument("--no-regulator", action="store_true",
                   help="with a GRAM --init: plain updates instead of regulating them with its R_phi* (ablation)")
    p.add_argument("--label", default=None, help='row name in result tables (default: the method, "+init" with --init)')
    p.add_argument("--max-test-per-class", type=int, default=None,
                   help="evaluate on a seeded test subset (default: the whole test split)")
    p.add_argument("--init-seed", type=int, default=None,
                   help="seed of the fresh prompt initialization (default: --seed); vary it alone to compare "
                        "initializations on the same few-shot sample (gram figure fig1a)")
    p.add_argument("--eval-every-epoch", action="store_true",
                   help="log test accuracy after every epoch to metrics.jsonl (gram figure fig3a)")
    p.add_argument("--allow-fewer-shots", action="store_true",
                   help="use all images of a class with fewer than --shots (default: error)")
    p.add_argument("--epochs", type=int, default=d_tune.epochs, help="passes over the few-shot training set")
    p.add_argument("--lr", type=float, default=d_tune.lr,
                   help="peak learning rate of SGD (one warm-up epoch, then cosine decay)")
    p.add_argument("--lr-scale", action="append", default=[], metavar="GROUP=X", type=lr_scale,
                   help="multiply the lr of one parameter group (text, visual, meta_net), e.g. visual=0.3 "
                        "(default: none; repeatable)")
    p.add_argument("--batch-size", type=int, default=d_tune.batch_size, help="training images per step")
    p.add_argument("--gpa", nargs=2, type=float, default=None, metavar=("MEAN", "STD"),
                   help="return the prompts averaged over epochs with Gaussian weights N(epoch; MEAN, STD), PromptSRC's "
                        "aggregation (official: 15 1 over 20 epochs) (default: the last epoch's)")
    p.add_argument("--autocast", choices=sorted(AUTOCAST), default=None,
                   help="bf16: each training step's forward and backward under bfloat16 autocast, the prompts and SGD's "
                        "state fp32 (for a GPU; agrees with fp32 on the offline Table 1 rows, docs/RESULTS.md) (default: fp32)")
    p.add_argument("--feature-views", type=int, default=d_tune.feature_views,
                   help="augmented views per training image cached for text-only methods (0: no augmentation)")
    p.add_argument("--text-tokens", type=int, default=d_prompt.text_tokens, help="learned text context tokens")
    p.add_argument("--text-init", default=None,
                   help='phrase initialization of the text context, e.g. "a photo of a" (default: random)')
    p.add_argument("--visual-tokens", type=int, default=d_prompt.visual_tokens, help="learned visual prompt tokens")
    p.add_argument("--visual-depth", type=int, default=None,
                   help="layers with their own prompts, for vpt-deep (default: all)")
    add_objective_args(p)

def _fewshot_config(a: argparse.Namespace) -> FewShotConfig:
    return FewShotConfig(
        method=a.method, label=a.label, shots=a.shots, seed=a.seed, init=a.init, regulator=not a.no_regulator,
        allow_fewer_shots=a.allow_fewer_shots,
        max_test_per_class=a.max_test_per_class, init_seed=a.init_seed, eval_every_epoch=a.eval_every_epoch,
        prompt=PromptConfig(text_tokens=a.text_tokens, text_init=a.text_init, visual_tokens=a.visual_tokens,
                            visual_depth=a.visual_depth, **objective_settings(a)),
        tune=TuneConfig(epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, feature_views=a.feature_views,
                        lr_scale=dict(a.lr_scale), autocast=None if a.autocast == "none" else a.autocast,
                        **({} if a.gpa is None else {"gpa_mean": a.gpa[0], "gpa_std": a.gpa[1]})))


def _run_dir(a: argparse.Namespace, config: dict) -> RunDir:
    """The run folder --out; the prompts of --init must not be among the files a rerun there replaces."""
    if a.init is not None and Path(a.out).resolve() in (init := Path(a.init).resolve(), *init.parents):
        raise RunFolderError(f"--init {a.init} lies inside --out {a.out}, where this run writes: use another --out")
    locks.acquire(a.out, "a few-shot run")  # held until this command ends
    return RunDir.create(a.out, config, overwrite=a.overwrite)


def cmd_fewshot(a: argparse.Namespace) -> int:
    cfg = _fewshot_config(a)
    dataset = load_dataset(a.dataset)
    backbone = load_backbone(a.backbone, device=resolve_device(a.device), dtype=DTYPES[a.dtype])
    run = _run_dir(a, run_config(backbone.name, [a.dataset], cfg, "base2new"))
    s = base_to_new(backbone, dataset, cfg, run=run)
    print(f"{s['dataset']} {s['method']} seed {s['seed']}: base {s['base']:.2f}  new {s['new']:.2f}  "
          f"H {s['h']:.2f}  ({s['seconds']:.1f} s) -> {a.out}")
    return 0


def cmd_transfer(a: argparse.Namespace) -> int:
    cfg = _fewshot_config(a)
    source = load_dataset(a.source)
    targets = [load_dataset(t) for t in a.targets]
    backbone = load_backbone(a.backbone, device=resolve_device(a.device), dtype=DTYPES[a.dtype])
    run = _run_dir(a, run_config(backbone.name, [a.source, *a.targets], cfg, "transfer"))
    s = transfer(backbone, source, targets, cfg, run=run)
    accs = "  ".join(f"{k} {v:.2f}" for k, v in s["targets"].items())
    print(f"source {s['dataset']} {s['source']:.2f}  targets: {accs}  -> {a.out}")
    return 0


def cmd_zeroshot(a: argparse.Namespace) -> int:
    backbone = load_backbone(a.backbone, device=resolve_device(a.device), dtype=DTYPES[a.dtype])
    rows = [zero_shot_all_classes(backbone, load_dataset(spec), max_per_class=a.max_test_per_class)
            for spec in tqdm(a.datasets, desc="zero-shot")]
    print(zero_shot_table(rows))
    return 0


def cmd_drift(a: argparse.Namespace) -> int:
    """Drift per epoch and the regulated-vs-unregulated verdicts; 1 when an R_phi* drifted."""
    from ..eval.drift import report

    text, drifted = report(a.dirs, a.limit)
    print(text)
    return 1 if drifted else 0
