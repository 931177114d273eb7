"""Benchmark: does a regulator R_phi* drift over a long test-time horizon? (issue 14, item 2)

Meta-training applies R_phi for one or a few inner steps; test-time tuning applies the frozen
R_phi* at every step of 10 epochs at batch 1. This script tunes the base half of a dataset from a
GRAM checkpoint's theta* for thousands of batch-1 steps, once with its R_phi* and once without
(plain SGD from theta*), for each regulator form, and logs after every epoch the distance
||theta_t - theta*|| (L2 over all prompt tensors), the training loss and the Base/New test accuracy. A
regulator that drifts shows as a distance that keeps growing and a training loss that stops
falling, with Base below the run without R_phi*. Tuning is the library's own ``train_prompts``
(CoCoOp's schedule: SGD, momentum 0.9, lr 0.002 cosine, one warm-up epoch) with ``on_epoch``;
accuracy is ``eval.evaluate``.

theta* and phi* come from, one of:

* ``--hierarchy DIR``: a short meta-training per form (``--forms``, ``--meta-iterations``) on a
  ``gram chc`` hierarchy made with the same backbone;
* ``--supervised SPEC``: the same on a labelled dataset's classes (the "- CHC" task source);
* ``--checkpoint FILE ...``: existing ``gram.safetensors`` files (each regulates with the form its
  metadata records; a file without phi* is tuned without a regulator only).

    python benchmarks/bench_long_horizon.py --hierarchy runs/chc/openclipart --meta-out runs/bench_lh
    python benchmarks/bench_long_horizon.py --checkpoint runs/meta/*/gram.safetensors --seeds 1 2 3
    python benchmarks/bench_long_horizon.py --quick   # smoke run (tiny random CLIP, digits): numbers meaningless

Defaults (the issue's setting): the default backbone, emoji-subgroups (37 base classes), 16 shots,
batch 1, 10 epochs: about 5,900 steps per run (classes with fewer than 16 images give all they
have). Slow on 2 CPU cores (hours for all forms); no timing is reported or asserted.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from _common import load_average, machine_info, markdown_table

TARGET_STEPS = 5000


@dataclass
class Source:
    """One theta* (and maybe phi*) to tune from."""

    label: str
    path: Path
    form: str  # the regulator form of phi*, "-" without one


@dataclass
class Run:
    source: str
    form: str
    regulated: bool
    seed: int
    steps: int = 0
    skipped: int = 0
    epochs: list[dict] = field(default_factory=list)  # epoch 0: theta* before tuning

    @property
    def final(self) -> dict:
        return self.epochs[-1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from gramprompt.meta.regulator import FORMS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--hierarchy", type=Path, help="meta-train theta*, phi* per form on this `gram chc` output")
    src.add_argument("--supervised", metavar="SPEC", help="meta-train per form on this labelled dataset's classes")
    src.add_argument("--checkpoint", type=Path, nargs="+", metavar="FILE", help="existing gram.safetensors files")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: a tiny random CLIP, digits, 2 shots, 2 epochs, 2 meta-iterations (seconds)")
    p.add_argument("--backbone", help="backbone spec (default: default; --quick: a tiny random CLIP)")
    p.add_argument("--dataset", help="dataset spec whose base half is tuned (default emoji-subgroups; --quick: digits)")
    p.add_argument("--method", default="coop", help="prompt method for meta-training (default coop)")
    p.add_argument("--shots", type=int, help="shots per base class (default 16; --quick: 2)")
    p.add_argument("--epochs", type=int, help="tuning epochs (default 10; --quick: 2)")
    p.add_argument("--batch-size", type=int, default=1, help="tuning batch size (default 1, the paper's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1], help="few-shot seeds (default 1)")
    p.add_argument("--max-test-per-class", type=int, help="a seeded test subset per class (default: all)")
    p.add_argument("--forms", nargs="+", choices=list(FORMS), default=list(FORMS),
                   help="regulator forms to meta-train (with --hierarchy/--supervised; default all)")
    p.add_argument("--meta-iterations", type=int, help="meta-iterations per form (default 300; --quick: 2)")
    p.add_argument("--meta-out", type=Path,
                   help="folder for the meta-training runs (one per form; a rerun resumes); default: temporary")
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write every per-epoch record to PATH")
    a = p.parse_args(argv)
    quick = a.quick
    for name, full, small in [("dataset", "emoji-subgroups", "digits"), ("shots", 16, 2), ("epochs", 10, 2),
                              ("meta_iterations", 300, 2)]:
        if getattr(a, name) is None:
            setattr(a, name, small if quick else full)
    if not (a.hierarchy or a.supervised or a.checkpoint):
        if not quick:
            p.error("give --hierarchy DIR, --supervised SPEC or --checkpoint FILE ... (or --quick)")
        a.supervised = "digits"
    return a


def meta_config(args: argparse.Namespace, form: str):
    from gramprompt.meta.regulator import RegulatorConfig
    from gramprompt.meta.tasks import TaskConfig
    from gramprompt.meta.trainer import MetaConfig

    small = dict(task_batch=2, tasks=TaskConfig(ways=3, support_shots=2, query_shots=2)) if args.quick else {}
    return MetaConfig(iterations=args.meta_iterations, regulator=RegulatorConfig(form=form), **small)


def meta_trained(args: argparse.Namespace, backbone, root: Path) -> list[Source]:
    """theta*, phi* of a short meta-training per form (resumed where ``root`` already holds it)."""
    from gramprompt.meta.run import meta_train

    sources = []
    for form in args.forms:
        print(f"meta-training {args.method} with the {form} regulator ({args.meta_iterations} iterations) ...",
              file=sys.stderr, flush=True)
        path, _ = meta_train(args.supervised or args.hierarchy, backbone, args.method, root / form,
                             meta_config(args, form), supervised=args.supervised is not None)
        sources.append(Source(form, path, form))
    return sources


def from_files(paths: list[Path]) -> list[Source]:
    from gramprompt.meta.checkpoint import load_gram, regulator_config

    sources = []
    for path in paths:
        _, phi, info = load_gram(path)
        form = regulator_config(path, info).form_name if phi else "-"
        sources.append(Source(f"{path.parent.name}/{path.name}", path, form))
    return sources


def tune(backbone, base, new, source: Source, regulated: bool, seed: int, args, cache) -> Run:
    """Tune theta* on the base classes' shots with ``train_prompts``, recording every epoch."""
    from gramprompt.data.splits import few_shot
    from gramprompt.eval.evaluate import evaluate
    from gramprompt.eval.protocols import FewShotConfig, initial_params
    from gramprompt.meta.checkpoint import load_gram, regulated_grad_transform
    from gramprompt.prompts import PromptConfig, build_method, template_for
    from gramprompt.tuning.config import TuneConfig
    from gramprompt.tuning.train import train_prompts

    _, _, info = load_gram(source.path)
    method_name = info.get("method", args.method)
    prompt = PromptConfig(**info["prompt"]) if info.get("prompt") else PromptConfig()
    method = build_method(method_name, backbone, prompt, template=template_for(base.name))
    theta = initial_params(method, FewShotConfig(method_name, init=str(source.path), prompt=prompt))
    tests = {part: few_shot(d.test, args.max_test_per_class, 0, allow_fewer=True, classnames=d.classnames)
             if args.max_test_per_class else d.test for part, d in (("base", base), ("new", new))}
    train = few_shot(base.train, args.shots, seed, allow_fewer=True, classnames=base.classnames)
    cfg = TuneConfig(epochs=args.epochs, batch_size=args.batch_size)
    run = Run(source.label, source.form, regulated, seed)
    losses: dict[int, dict] = {}

    def record(epoch: int, params: dict) -> None:
        dist = math.sqrt(sum(float((params[k].detach() - theta[k]).pow(2).sum()) for k in theta))
        accs = {part: evaluate(method, params, tests[part], d.classnames, batch_size=cfg.eval_batch_size, cache=cache,
                               cache_key=(d.name, part, args.max_test_per_class))
                for part, d in (("base", base), ("new", new))}
        run.epochs.append({"epoch": epoch, "distance": dist, **losses.get(epoch, {}), **accs})

    def log(rec: dict) -> None:
        losses[rec["epoch"]] = {"loss": rec["loss"], "train_acc": rec["train_acc"]}
        run.skipped += rec["skipped_steps"]

    record(0, theta)
    transform = regulated_grad_transform(source.path, backbone.device) if regulated else None
    train_prompts(method, theta, train, base.classnames, cfg, seed=seed, grad_transform=transform, cache=cache,
                  cache_key=(base.name, "base", args.shots), log=log, on_epoch=record)
    run.steps = args.epochs * math.ceil(len(train) / args.batch_size)
    return run


def mean_std(values: list[float], fmt: str = ".2f") -> str:
    """The value, or mean +- sample std over seeds."""
    if len(values) == 1:
        return f"{values[0]:{fmt}}"
    return f"{statistics.mean(values):{fmt}} +- {statistics.stdev(values):{fmt}}"


def summary_table(runs: list[Run]) -> str:
    """One row per (source, with/without R_phi*), over seeds; the paired Base difference on the 'with' row."""
    groups: dict[tuple[str, bool], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.source, r.regulated), []).append(r)
    rows = []
    for (source, regulated), rs in groups.items():
        diff = ""
        plain = {r.seed: r for r in groups.get((source, False), [])}
        if regulated and plain:
            diff = mean_std([r.final["base"] - plain[r.seed].final["base"] for r in rs if r.seed in plain])
        rows.append([source, rs[0].form, "with" if regulated else "without", str(rs[0].steps),
                     mean_std([r.final["distance"] for r in rs], ".4g"), mean_std([r.final["base"] for r in rs]),
                     mean_std([r.final["new"] for r in rs]), diff])
    return markdown_table(["theta* from", "form", "R_phi*", "steps", "final L2 distance to theta*", "Base", "New",
                           "Base(with) - Base(without)"], rows)


def epoch_table(runs: list[Run]) -> str:
    """Every run's epochs; ``steps`` counts the optimizer steps so far (skipped ones included)."""
    rows = [[r.source, "with" if r.regulated else "without", str(r.seed), str(e["epoch"]),
             str(e["epoch"] * r.steps // len(r.epochs[1:])), f"{e['distance']:.4f}",
             f"{e['loss']:.3f}" if "loss" in e else "", f"{e['train_acc']:.1f}" if "train_acc" in e else "",
             f"{e['base']:.2f}", f"{e['new']:.2f}"] for r in runs for e in r.epochs]
    return markdown_table(["theta* from", "R_phi*", "seed", "epoch", "steps", "L2 distance to theta*", "train loss",
                           "train acc", "Base", "New"], rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from gramprompt.backbones import load_backbone
    from gramprompt.backbones.random_clip import build_random_clip
    from gramprompt.data.registry import load_dataset
    from gramprompt.data.splits import base_new_split
    from gramprompt.tuning.features import FeatureCache

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gramprompt-bench-lh-") as tmp:
        spec = args.backbone or (f"hf:{build_random_clip(Path(tmp) / 'clip', 'tiny', 0)}" if args.quick else "default")
        backbone = load_backbone(spec)
        base, new = base_new_split(load_dataset(args.dataset))
        sources = from_files(args.checkpoint) if args.checkpoint else meta_trained(
            args, backbone, args.meta_out or Path(tmp) / "meta")
        cache = FeatureCache(backbone)
        runs = []
        for source in sources:
            for regulated in ([True, False] if source.form != "-" else [False]):
                for seed in args.seeds:
                    print(f"tuning from {source.label} {'with' if regulated else 'without'} R_phi*, seed {seed} ...",
                          file=sys.stderr, flush=True)
                    runs.append(tune(backbone, base, new, source, regulated, seed, args, cache))

    print("## Long-horizon test-time tuning: theta* with and without its R_phi*")
    print()
    print(machine_info())
    origin = (f"checkpoints {', '.join(str(p) for p in args.checkpoint)}" if args.checkpoint else
              f"meta-trained per form for {args.meta_iterations} iterations on "
              f"{args.hierarchy or 'the classes of ' + args.supervised}")
    print(f"backbone {backbone.name}; {args.dataset} base half ({base.num_classes} classes) / new half "
          f"({new.num_classes}); {args.shots} shots, batch {args.batch_size}, {args.epochs} epochs; seeds "
          f"{args.seeds}; theta* {origin}")
    if args.quick:
        print("--quick: smoke run (tiny random CLIP, few steps); the numbers mean nothing")
    elif min(r.steps for r in runs) < TARGET_STEPS:
        print(f"note: fewer than {TARGET_STEPS} steps per run; issue 14 asks for >= {TARGET_STEPS}")
    print()
    print(summary_table(runs))
    print()
    print("Per epoch (epoch 0: theta* before tuning):")
    print()
    print(epoch_table(runs))
    print()
    print(f"Whole run {time.perf_counter() - start:.0f} s.{load_average().replace(' | ', ' End of run: ')}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()},
                                         "runs": [asdict(r) for r in runs]}, indent=1))
        print(f"records written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
