"""Experiments and tables: gram experiment, demo, ablations (whole pipelines from configs), table, figure."""
from __future__ import annotations

import argparse
import os
import textwrap
from pathlib import Path

from ..eval.table import render
from ..experiments.runner import EXECUTORS, MAX_BATCH_RUNS
from .common import (Entry, HelpFormatter, add_command, add_device_arg, add_set_arg, at_least_one,
                     check_run_folders)

TITLE = "experiments and tables"

BATCH_RUNS_HELP = ("few-shot runs of a CoOp, CoCoOp, VPT or joint row that differ only in seed and start are tuned "
                   "together, this many at most (1: one by one)")


def add_commands(sub: argparse._SubParsersAction) -> list[Entry]:
    entries = [_add_experiment(sub), *_add_demos(sub)]
    text = "aggregate run folders into Markdown tables (mean ± std over seeds)"
    p = add_command(sub, "table", text)
    p.add_argument("dirs", nargs="+", type=Path, help="run folders (searched recursively for summary.json)")
    p.set_defaults(fn=cmd_table)
    return [*entries, ("table", text), _add_figure(sub)]


def _add_experiment(sub: argparse._SubParsersAction) -> Entry:
    from ..experiments.config import ENV_VARS

    text = "run a YAML experiment (CHC, meta-training, few-shot runs); print its tables"
    env = "\n".join(textwrap.fill(f"{name}: {what}", 100, initial_indent="  ", subsequent_indent="    ")
                    for name, what in ENV_VARS.items())
    p = add_command(sub, "experiment", text,
                    "run a YAML experiment config (datasets x rows x seeds, with its CHC and meta-training stages), "
                    "or print its tables",
                    f"environment variables the packaged configs read (the vit_b16/ ones need GRAM_DATA):\n{env}")
    p.add_argument("action", choices=["run", "plan", "table"],
                   help="run: do what is not done, then print the tables; plan: list every job and its status; "
                        "table: print the tables of the finished runs")
    p.add_argument("configs", nargs="+", help="config files or packaged names (e.g. offline/base2new)")
    add_set_arg(p, "override a config key, e.g. --set seeds=[1] --set fewshot.tune.epochs=2")
    p.add_argument("--jobs", type=at_least_one, default=1, help="worker processes for meta-training and few-shot runs")
    p.add_argument("--max-batch-runs", type=at_least_one, default=MAX_BATCH_RUNS, help=BATCH_RUNS_HELP)
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: this machine (--jobs processes); ray: one Ray task per meta-training and per batch "
                        "of runs, on the cluster of --ray-address (or RAY_ADDRESS, or one started here by `ray start`, "
                        "else a local instance); run folders must be on shared storage; a killed worker's task "
                        "is rerun")
    p.add_argument("--ray-address", default=None,
                   help="with --executor ray: the Ray cluster's address (default: RAY_ADDRESS, else a cluster "
                        "started here, else a local instance)")
    p.add_argument("--dry-run", action="store_true", help="with run: only list the jobs (same as plan)")
    add_device_arg(p)
    p.set_defaults(fn=cmd_experiment)
    return "experiment", text


def _add_demos(sub: argparse._SubParsersAction) -> list[Entry]:
    """gram demo and gram ablations: the offline pipeline on packaged configs, with the same flags."""
    entries = []
    for name, ablations, text, description in (
            ("demo", False, "the whole pipeline offline: a small Table 1 in ~13 minutes (--quick: < 5)",
             "offline GRAM pipeline: CHC on openclipart, meta-training, then the paper's Table 1 (base-to-new) for "
             "CLIP, CoCoOp, CoOp, CoOp+GRAM, VPT, VPT+GRAM and UNIGRAM, at a size that takes about 13 minutes on 2 "
             "cores (--full: docs/RESULTS.md's Table 1, hours)"),
            ("ablations", True, "the demo's pipeline for Tables 6 (ablations) and 7 (prompt token counts)",
             "the demo's pipeline for the paper's Table 6 (ablations of UNIGRAM) and Table 7 (prompt token counts)")):
        p = add_command(sub, name, text, description)
        p.add_argument("--quick", action="store_true", help="the same pipeline at reduced size (a smoke run)")
        if not ablations:
            p.add_argument("--full", action="store_true",
                           help="docs/RESULTS.md's Table 1 (offline/base2new: 3 CHC hierarchies, 5 seeds) instead of "
                                "the demo's size (offline/demo)")
        p.add_argument("--out", default=None,
                       help="root folder (default: the config's, runs/offline-demo, runs/offline with --full or "
                            "ablations, runs/offline-quick with --quick); stages and runs with unchanged settings "
                            "are reused")
        p.add_argument("--backbone", default=None, help="backbone spec (default: the shipped offline backbone)")
        p.add_argument("--pairs", default=None, help="image-text pairs for CHC, see gram chc (default: openclipart)")
        p.add_argument("--datasets", nargs="+", default=None,
                       help="dataset specs to tune and test on (default: the config's)")
        p.add_argument("--seeds", nargs="+", type=int, default=None, help="few-shot seeds (default: the config's)")
        add_set_arg(p, "override a key of the configs (see gram experiment)")
        p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                       help="worker processes for meta-training and few-shot runs (default: 2, or 1 on one core)")
        p.add_argument("--max-batch-runs", type=int, default=MAX_BATCH_RUNS, help=BATCH_RUNS_HELP)
        add_device_arg(p)
        if ablations:
            p.add_argument("--tables", nargs="+", type=int, choices=[6, 7], default=[6, 7],
                           help="which of the paper's tables to compute")
        p.set_defaults(fn=cmd_demo, ablations=ablations)
        entries.append((name, text))
    return entries


def _add_figure(sub: argparse._SubParsersAction) -> Entry:
    text = "the paper's Fig. 1a, 3a, 3b and GRAM's gain against corpus size, as PNG"
    p = add_command(sub, "figure", text)
    figs = p.add_subparsers(dest="figure", required=True, metavar="FIGURE")
    for name, what, dirs_help in (
            ("fig1a", "accuracy across prompt initializations (one label per initialization, e.g. --init-seed "
                      "or --text-init runs, vs GRAM's theta*)", "finished base-to-new runs (searched recursively)"),
            ("fig3a", "test accuracy per epoch, base (solid) and new (dashed), per label; prints the points",
             "base-to-new runs tuned with --eval-every-epoch (searched recursively)"),
            ("fig3b", "normalized support-query gradient inner product during meta-training",
             "gram meta-train run folders, one line each (folders given one --labels name: their mean)")):
        f = figs.add_parser(name, help=what, description=what, formatter_class=HelpFormatter)
        f.add_argument("dirs", nargs="+", type=Path, metavar="RUN_DIRS", help=dirs_help)
        f.add_argument("--out", required=True, type=Path, help="image to write, e.g. fig.png")
        f.add_argument("--title", default=None, help="replace the default title (default: the figure's own)")
        if name == "fig1a":
            f.add_argument("--metric", choices=["base", "new", "h"], default="h", help="what to plot")
            f.add_argument("--highlight", nargs="+", default=None, metavar="LABEL",
                           help='theta* row(s) to highlight (default: labels containing "gram")')
        if name in ("fig1a", "fig3a"):
            f.add_argument("--only", nargs="+", default=None, metavar="LABEL",
                           help="plot only runs with these labels, in this order (default: every label)")
        if name == "fig3b":
            f.add_argument("--labels", nargs="+", default=None,
                           help="legend names, one per run folder; a name given to several folders (one variant on "
                                "several hierarchies) draws their mean (default: the folder names)")
            f.add_argument("--smooth", type=int, default=1, metavar="K",
                           help="trailing moving average over K logged points (default: 1, no smoothing)")
        f.set_defaults(fn=cmd_figure)
    what = "GRAM's gain against meta-training corpus size: ΔBase, ΔNew, ΔH with their paired intervals (and a table)"
    f = figs.add_parser("scale", help=what, description=what, formatter_class=HelpFormatter)
    f.add_argument("configs", nargs="+", metavar="CONFIG",
                   help="experiment configs, one per corpus size "
                        "(e.g. offline/scale/openclipart offline/scale/iconify-10k)")
    add_set_arg(f, "override a key of every config")
    f.add_argument("--out", required=True, type=Path, help="image to write, e.g. scale.png")
    f.add_argument("--title", default=None, help="replace the default title (default: the figure's own)")
    f.set_defaults(fn=cmd_figure)
    return "figure", text


def cmd_experiment(a: argparse.Namespace) -> int:
    from ..experiments.config import load_experiment
    from ..experiments.report import experiment_tables
    from ..experiments.runner import describe, run_experiment

    experiments = [load_experiment(c, a.set) for c in a.configs]
    if a.action != "table":  # every config's inputs exist before the first job of any starts
        for exp in experiments:
            exp.check_inputs()
    for exp in experiments:
        if a.action == "plan" or a.dry_run:
            print(describe(exp))
            continue
        if a.action == "run":
            run_experiment(exp, jobs=a.jobs, device=a.device, max_batch_runs=a.max_batch_runs, executor=a.executor,
                           address=a.ray_address)
        text = experiment_tables(exp)
        report = Path(exp.root) / f"{exp.name}.md"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(text)
        print(text)
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from ..demo import ABLATIONS, DEMO, FULL, demo_experiments, run_demo

    overrides = [f"{k}={v}" for k, v in (("root", a.out), ("backbone", a.backbone), ("hierarchy.pairs", a.pairs),
                                         ("datasets", a.datasets and f"[{', '.join(a.datasets)}]"),
                                         ("seeds", a.seeds and f"[{', '.join(map(str, a.seeds))}]")) if v]
    configs = [ABLATIONS[t] for t in a.tables] if a.ablations else FULL if a.full else DEMO
    print(run_demo(demo_experiments(configs, [*overrides, *a.set], a.quick), jobs=a.jobs, device=a.device,
                   max_batch_runs=a.max_batch_runs, quick=a.quick))
    return 0


def cmd_table(a: argparse.Namespace) -> int:
    check_run_folders(a.dirs)
    print(render(a.dirs))
    return 0


def cmd_figure(a: argparse.Namespace) -> int:
    from ..eval import figures

    if a.figure == "scale":
        from ..experiments.config import load_experiment
        from ..experiments.scale import scale_figure, scale_points, scale_table

        points = scale_points([load_experiment(c, a.set) for c in a.configs])
        print(scale_table(points))
        print(f"wrote {figures.save(scale_figure(points, a.title), a.out)}")
        return 0
    check_run_folders(a.dirs)
    if a.figure == "fig1a":
        fig = figures.fig1a(figures.base2new_summaries(a.dirs), metric=a.metric, highlight=a.highlight,
                            only=a.only, title=a.title)
    elif a.figure == "fig3a":
        curves = figures.fig3a_data(figures.epoch_runs(a.dirs), a.only)
        fig = figures.fig3a(curves, title=a.title)
        print(figures.epoch_table(curves))
    else:
        series = figures.alignment_series(a.dirs, a.labels)
        fig = figures.fig3b(series, smooth=a.smooth, title=a.title)
        print(figures.alignment_table(series))
    print(f"wrote {figures.save(fig, a.out)}")
    return 0
