"""gram: few-shot prompt tuning of frozen CLIP models, transfer evaluation, result tables, the demo."""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from pathlib import Path

from tqdm.auto import tqdm

from .backbones import load_backbone
from .backbones.registry import DTYPES, SPEC_FORMS, resolve_device
from .data.registry import SPEC_FORMS as DATASET_FORMS
from .data.registry import load_dataset
from . import locks
from .errors import USER_ERRORS, RunFolderError
from .eval.protocols import FewShotConfig, base_to_new, run_config, transfer, zero_shot_all_classes
from .eval.table import render, zero_shot_table
from .experiments.runner import EXECUTORS, MAX_BATCH_RUNS
from .prompts import METHODS, PromptConfig
from .runs import RunDir
from .tuning.config import TuneConfig

def _add_backbone_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", required=True, help=f"backbone spec: {', '.join(SPEC_FORMS)}")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="precision of the frozen backbone")


def _add_overwrite_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run with other settings in --out (default: refuse; the same settings are redone)")


def _add_fewshot_args(p: argparse.ArgumentParser) -> None:
    d_tune, d_prompt = TuneConfig(), PromptConfig()
    p.add_argument("--method", required=True, choices=sorted(METHODS), metavar="METHOD",
                   help=f"prompt method: {', '.join(METHODS)}")
    p.add_argument("--shots", type=int, default=16, help="training images per class (default 16)")
    p.add_argument("--seed", type=int, default=1, help="seed of the few-shot sample, init and shuffling")
    p.add_argument("--out", required=True, type=Path, help="run folder to write")
    _add_overwrite_arg(p)
    p.add_argument("--init", default=None,
                   help="start from these prompts (.safetensors or run folder), e.g. GRAM's gram.safetensors")
    p.add_argument("--no-regulator", action="store_true",
                   help="with a GRAM --init: plain updates instead of regulating them with its R_phi* (ablation)")
    p.add_argument("--label", default=None, help='row name in result tables (default: the method, "+init" with --init)')
    p.add_argument("--max-test-per-class", type=int, default=None, help="evaluate on a seeded test subset")
    p.add_argument("--init-seed", type=int, default=None,
                   help="seed of the fresh prompt initialization (default: --seed); vary it alone to compare "
                        "initializations on the same few-shot sample (gram figure fig1a)")
    p.add_argument("--eval-every-epoch", action="store_true",
                   help="log test accuracy after every epoch to metrics.jsonl (gram figure fig3a)")
    p.add_argument("--allow-fewer-shots", action="store_true",
                   help="use all images of a class with fewer than --shots (default: error)")
    p.add_argument("--epochs", type=int, default=d_tune.epochs)
    p.add_argument("--lr", type=float, default=d_tune.lr)
    p.add_argument("--lr-scale", action="append", default=[], metavar="GROUP=X", type=_lr_scale,
                   help="multiply the lr of one parameter group (text, visual, meta_net), e.g. visual=0.3 (repeatable)")
    p.add_argument("--batch-size", type=int, default=d_tune.batch_size)
    p.add_argument("--feature-views", type=int, default=d_tune.feature_views,
                   help="augmented views per training image cached for text-only methods (0: no augmentation)")
    p.add_argument("--text-tokens", type=int, default=d_prompt.text_tokens)
    p.add_argument("--text-init", default=None, help='phrase initialization of the text context, e.g. "a photo of a"')
    p.add_argument("--visual-tokens", type=int, default=d_prompt.visual_tokens)
    p.add_argument("--visual-depth", type=int, default=None, help="layers with their own prompts (vpt-deep; default all)")


def _fewshot_config(a: argparse.Namespace) -> FewShotConfig:
    text_tokens = a.text_tokens
    return FewShotConfig(
        method=a.method, label=a.label, shots=a.shots, seed=a.seed, init=a.init, regulator=not a.no_regulator,
        allow_fewer_shots=a.allow_fewer_shots,
        max_test_per_class=a.max_test_per_class, init_seed=a.init_seed, eval_every_epoch=a.eval_every_epoch,
        prompt=PromptConfig(text_tokens=text_tokens, text_init=a.text_init, visual_tokens=a.visual_tokens,
                            visual_depth=a.visual_depth),
        tune=TuneConfig(epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, feature_views=a.feature_views,
                        lr_scale=dict(a.lr_scale)))


def _lr_scale(text: str) -> tuple[str, float]:
    group, sep, value = text.partition("=")
    try:
        if sep and group.strip():
            return group.strip(), float(value)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected GROUP=X (e.g. visual=0.3), got {text!r}")


def _at_least_one(text: str) -> int:
    """An integer >= 1, for counts that must be positive (refused by the parser, before any work)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


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


def cmd_table(a: argparse.Namespace) -> int:
    missing = [d for d in a.dirs if not Path(d).is_dir()]
    if missing:
        raise FileNotFoundError(f"no such run folder: {', '.join(map(str, missing))}")
    print(render(a.dirs))
    return 0


def cmd_drift(a: argparse.Namespace) -> int:
    """Drift per epoch and the regulated-vs-unregulated verdicts; 1 when an R_phi* drifted."""
    from .eval.drift import report

    text, drifted = report(a.dirs, a.limit)
    print(text)
    return 1 if drifted else 0


def cmd_figure(a: argparse.Namespace) -> int:
    from .eval import figures

    if a.figure == "scale":
        from .experiments.config import load_experiment
        from .experiments.scale import scale_figure, scale_points, scale_table

        points = scale_points([load_experiment(c, a.set) for c in a.configs])
        print(scale_table(points))
        print(f"wrote {figures.save(scale_figure(points, a.title), a.out)}")
        return 0
    missing = [d for d in a.dirs if not Path(d).is_dir()]
    if missing:
        raise FileNotFoundError(f"no such run folder: {', '.join(map(str, missing))}")
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


def cmd_zeroshot(a: argparse.Namespace) -> int:
    backbone = load_backbone(a.backbone, device=resolve_device(a.device), dtype=DTYPES[a.dtype])
    rows = [zero_shot_all_classes(backbone, load_dataset(spec), max_per_class=a.max_test_per_class)
            for spec in tqdm(a.datasets, desc="zero-shot")]
    print(zero_shot_table(rows))
    return 0


def cmd_build_default_backbone(a: argparse.Namespace) -> int:
    from .backbones.default.build import build, build_config
    from .backbones.default.model import weights_path
    from .data.pairs import openclipart_pairs

    given = (("base_epochs", a.base_epochs), ("full_epochs", a.full_epochs), ("distill_weight", a.distill_weight))
    cfg = build_config(a.version, seed=a.seed, limit=a.limit, **{k: v for k, v in given if v is not None})
    out = a.out or weights_path(a.version)
    command = " ".join(["gram", "build-default-backbone", *sys.argv[2:]])
    result = build(openclipart_pairs(), cfg, out=out, command=command)
    print(f"wrote {out} (sha256 {result['sha256']})")
    return 0


def cmd_make_random_clip(a: argparse.Namespace) -> int:
    from .backbones.random_clip import build_random_clip

    print(build_random_clip(a.out, a.preset, a.seed))
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import ABLATIONS, DEMO, FULL, demo_experiments, run_demo

    overrides = [f"{k}={v}" for k, v in (("root", a.out), ("backbone", a.backbone), ("hierarchy.pairs", a.pairs),
                                         ("datasets", a.datasets and f"[{', '.join(a.datasets)}]"),
                                         ("seeds", a.seeds and f"[{', '.join(map(str, a.seeds))}]")) if v]
    configs = [ABLATIONS[t] for t in a.tables] if a.ablations else FULL if a.full else DEMO
    print(run_demo(demo_experiments(configs, [*overrides, *a.set], a.quick), jobs=a.jobs, device=a.device,
                   max_batch_runs=a.max_batch_runs, quick=a.quick))
    return 0


def cmd_experiment(a: argparse.Namespace) -> int:
    from .experiments.config import load_experiment
    from .experiments.report import experiment_tables
    from .experiments.runner import describe, run_experiment

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


def _chc_config(a: argparse.Namespace):
    from .chc.config import CHCConfig, DomainConfig, FeatureConfig, FilterConfig, TopicConfig

    return CHCConfig(
        FeatureConfig(a.text_model, a.batch_size, a.feature_dtype, a.stems),
        FilterConfig(a.filter_threshold, a.filter_quantile),
        TopicConfig(umap_neighbors=a.umap_neighbors, umap_components=a.umap_components,
                    min_cluster_size=a.min_cluster_size, min_samples=a.min_samples, clusterer=a.clusterer,
                    noise=a.noise, duplicates=a.duplicates, fit_size=a.fit_size, assign=a.assign,
                    word_min_share=a.word_min_share,
                    extra_stop_words=tuple(a.stop_words)),
        DomainConfig(domains=a.domains, min_domain_size=a.min_domain_size),
        seed=a.seed, shard_size=a.shard_size)


def cmd_chc(a: argparse.Namespace) -> int:
    from .chc.executor import make_executor
    from .chc.pipeline import run_chc
    from .chc.report import topic_table

    from .data.pairs.iconify_source import exclusion_summary, with_exclusions

    executor = make_executor(a.executor, a.workers, a.ray_address)
    a.pairs = with_exclusions(a.pairs, a.exclude_images, a.exclude_sets)
    h = run_chc(a.pairs, a.backbone, a.out, _chc_config(a), executor, a.stage, a.shard_index, a.num_shards,
                a.features, resolve_device(a.device), report=not a.no_report, agreement_field=a.agreement,
                domain_field=a.domain_agreement)
    if h is None:
        print(f"stage {a.stage} done (job {a.shard_index} of {a.num_shards}) in {a.out}")
        return 0
    print(" ".join(f"{k}={v}" for k, v in h.info["counts"].items()))
    source_report = (a.features or a.out / "features") / "source.json"
    if source_report.exists():
        print(exclusion_summary(json.loads(source_report.read_text())))
    print(topic_table(h, limit=a.show))
    if a.agreement:
        score = json.loads((a.out / "report" / "agreement.json").read_text())
        print(f"agreement with {a.agreement}: ARI {score['ari']:.3f} NMI {score['nmi']:.3f} "
              f"({score['pairs']} pairs, {score['classes']} classes, {score['topics']} topics)")
    if a.domain_agreement:
        score = json.loads((a.out / "report" / "domain_agreement.json").read_text())
        print(f"domains against {a.domain_agreement} within {score['topics']} topics: NMI {score['nmi']:.3f} "
              f"(shuffled {score['nmi_shuffled']:.3f})")
    print(f"hierarchy written to {a.out}")
    return 0


def cmd_meta_train(a: argparse.Namespace) -> int:
    from .meta.regulator import RegulatorConfig
    from .meta.run import meta_train
    from .meta.tasks import TaskConfig
    from .meta.trainer import MetaConfig

    backbone = load_backbone(a.backbone, device=resolve_device(a.device), dtype=DTYPES[a.dtype])
    cfg = MetaConfig(mode="pretrain" if a.pretrain else "gram", iterations=a.iterations, task_batch=a.task_batch,
                     inner_lr=a.inner_lr, inner_steps=a.inner_steps,
                     lr_theta=a.lr_theta, lr_phi=a.lr_phi, second_order=a.second_order,
                     use_regulator=not a.no_regulator, grad_clip=a.grad_clip, stats_every=a.stats_every,
                     checkpoint_every=a.checkpoint_every, seed=a.seed, autocast=a.autocast,
                     tasks=TaskConfig(a.ways, a.support_shots, a.query_shots, domain_shift=not a.no_domain_shift),
                     regulator=RegulatorConfig(a.regulator, form=a.regulator_form))
    prompt = PromptConfig(text_tokens=a.text_tokens, visual_tokens=a.visual_tokens, visual_depth=a.visual_depth)
    path, state = meta_train(a.supervised or a.hierarchy, backbone, a.method, a.out, cfg, prompt,
                             supervised=a.supervised is not None, overwrite=a.overwrite)
    print(f"{state.iteration} meta-iterations ({state.skipped} skipped batches); theta* and phi* in {path}")
    print(f"use it: gram fewshot --init {path} --method {a.method} ...")
    return 0


def cmd_data_check(a: argparse.Namespace) -> int:
    """Table of the datasets under ROOT against their published sizes; 1 when anything is wrong."""
    from .data.check import ALL_DATASETS, all_ok, check_root, dataset_folder, render

    rows = check_root(a.root, a.datasets, sample=a.sample, seed=a.seed)
    if rows:
        print(render(rows, markdown=a.format == "markdown"))
    else:
        print(f"no CoOp dataset folder under {a.root} (layouts: docs/DATASETS.md)")
    checked = {r.dataset for r in rows}
    absent = [f"{n} ({dataset_folder(n)}/)" for n in ALL_DATASETS if n not in checked]
    if a.datasets is None and absent:
        print("not present, skipped: " + ", ".join(absent))
    return 0 if all_ok(rows) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gram", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("fewshot", help="tune prompts on the base classes of a dataset, test base and new")
    _add_backbone_args(p)
    p.add_argument("--dataset", required=True, help=f"dataset spec: {', '.join(DATASET_FORMS)}")
    _add_fewshot_args(p)
    p.set_defaults(fn=cmd_fewshot)

    p = sub.add_parser("transfer", help="tune on all classes of a source dataset, test on target datasets")
    _add_backbone_args(p)
    p.add_argument("--source", required=True, help=f"dataset spec: {', '.join(DATASET_FORMS)}")
    p.add_argument("--targets", required=True, nargs="+", help="target dataset specs")
    _add_fewshot_args(p)
    p.set_defaults(fn=cmd_transfer)

    p = sub.add_parser("table", help="aggregate run folders into Markdown tables (mean ± std over seeds)")
    p.add_argument("dirs", nargs="+", type=Path, help="run folders (searched recursively for summary.json)")
    p.set_defaults(fn=cmd_table)

    from .eval.drift import RATIO_LIMIT

    p = sub.add_parser("drift", help="how far tuning moved the prompts from their start, per epoch; whether GRAM's "
                                    "R_phi* drifted them (exit 1 when it did)")
    p.add_argument("dirs", nargs="+", type=Path, metavar="RUN_DIR",
                   help="few-shot run folders, or folders holding them (searched recursively)")
    p.add_argument("--limit", type=float, default=RATIO_LIMIT,
                   help=f"a regulated run whose final drift exceeds this multiple of the same run's without "
                        f"R_phi* drifted (default {RATIO_LIMIT:g}; offline: literal 15x, scale-invariant 3.3x, "
                        "bounded 1.4x)")
    p.set_defaults(fn=cmd_drift)

    p = sub.add_parser("figure", help="the paper's Fig. 1a, 3a, 3b as PNG from run folders")
    figs = p.add_subparsers(dest="figure", required=True, metavar="FIGURE")
    for name, text, dirs_help in (
            ("fig1a", "accuracy across prompt initializations (one label per initialization, e.g. --init-seed "
                      "or --text-init runs, vs GRAM's theta*)", "finished base-to-new runs (searched recursively)"),
            ("fig3a", "test accuracy per epoch, base (solid) and new (dashed), per label; prints the points",
             "base-to-new runs tuned with --eval-every-epoch (searched recursively)"),
            ("fig3b", "normalized support-query gradient inner product during meta-training",
             "gram meta-train run folders, one line each (folders given one --labels name: their mean)")):
        f = figs.add_parser(name, help=text, description=text)
        f.add_argument("dirs", nargs="+", type=Path, metavar="RUN_DIRS", help=dirs_help)
        f.add_argument("--out", required=True, type=Path, help="image to write, e.g. fig.png")
        f.add_argument("--title", default=None, help="replace the default title")
        if name == "fig1a":
            f.add_argument("--metric", choices=["base", "new", "h"], default="h", help="what to plot (default h)")
            f.add_argument("--highlight", nargs="+", default=None, metavar="LABEL",
                           help='theta* row(s) to highlight (default: labels containing "gram")')
        if name in ("fig1a", "fig3a"):
            f.add_argument("--only", nargs="+", default=None, metavar="LABEL",
                           help="plot only runs with these labels, in this order")
        if name == "fig3b":
            f.add_argument("--labels", nargs="+", default=None, help="legend names, one per run folder; a name given "
                           "to several folders (one variant on several hierarchies) draws their mean")
            f.add_argument("--smooth", type=int, default=1, metavar="K",
                           help="trailing moving average over K logged points (default 1: none)")
        f.set_defaults(fn=cmd_figure)
    text = "GRAM's gain against meta-training corpus size: ΔBase, ΔNew, ΔH with their paired intervals (and a table)"
    f = figs.add_parser("scale", help=text, description=text)
    f.add_argument("configs", nargs="+", metavar="CONFIG",
                   help="experiment configs, one per corpus size (e.g. offline/scale/openclipart offline/scale/iconify-10k)")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of every config")
    f.add_argument("--out", required=True, type=Path, help="image to write, e.g. scale.png")
    f.add_argument("--title", default=None, help="replace the default title")
    f.set_defaults(fn=cmd_figure)

    p = sub.add_parser("zeroshot", help="zero-shot accuracy on all classes of datasets, with chance level")
    _add_backbone_args(p)
    p.add_argument("--datasets", required=True, nargs="+", help=f"dataset specs: {', '.join(DATASET_FORMS)}")
    p.add_argument("--max-test-per-class", type=int, default=None, help="seeded subset of the test split")
    p.set_defaults(fn=cmd_zeroshot)

    from .backbones.default.model import DEFAULT_VERSION, VERSIONS

    p = sub.add_parser("build-default-backbone", help="retrain the offline default backbone's image head")
    p.add_argument("--version", choices=VERSIONS, default=DEFAULT_VERSION,
                   help="which head to rebuild (v2 distils the shipped v1)")
    p.add_argument("--out", type=Path, default=None,
                   help="weights file to write (a .json card and .log go beside it); default: the shipped file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base-epochs", type=int, default=None, help="v1's base stage (default: the shipped build's)")
    p.add_argument("--full-epochs", type=int, default=None,
                   help="v1's full stage, v2's distillation (default: the shipped build's)")
    p.add_argument("--distill-weight", type=float, default=None,
                   help="v2: weight of the distillation term (default: the shipped build's)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N openclipart pairs")
    p.set_defaults(fn=cmd_build_default_backbone)

    p = sub.add_parser("make-random-clip", help="write a random-weight CLIP checkpoint (HF format) for offline tests")
    p.add_argument("--preset", default="tiny", help="tiny, small, vit-b-32, vit-b-16, vit-l-14")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(fn=cmd_make_random_clip)

    from .chc.config import DomainConfig, FeatureConfig, TopicConfig
    from .chc.pipeline import STAGES

    d_feat, d_topic, d_dom = FeatureConfig(), TopicConfig(), DomainConfig()
    p = sub.add_parser("chc", help="Cross-Modal Hierarchical Clustering: image-text pairs -> topics -> visual domains")
    p.add_argument("--pairs", required=True,
                   help="openclipart, noto-emoji, iconify[:N][?key=value&...] (the Iconify icon sets, docs/DATA.md), "
                        "folder:PATH (images + captions file), wds:GLOB (tar shards), or A+B (one after the other)")
    p.add_argument("--exclude-images", nargs="+", default=None, metavar="DIR",
                   help="iconify: also remove every icon that matches an image under these folders (your own "
                        "evaluation sets; the shipped ones are always removed)")
    p.add_argument("--exclude-sets", nargs="+", default=None, metavar="PREFIX",
                   help="iconify: leave out these icon sets (e.g. noto twemoji)")
    p.add_argument("--backbone", required=True, help=f"backbone spec (image features): {', '.join(SPEC_FORMS)}")
    p.add_argument("--out", required=True, type=Path, help="hierarchy folder (rerun the same command to resume)")
    p.add_argument("--features", type=Path, default=None, help="feature store folder (default OUT/features)")
    p.add_argument("--device", default=None, help="torch device of the backbone (default: cuda if available, else cpu)")
    p.add_argument("--stage", choices=list(STAGES), default="all",
                   help="features / assign: this job's shards only; fit: the topic model; "
                        "cluster: whatever is left, then topic words, domains, report")
    p.add_argument("--shard-index", type=int, default=0, help="this job's index (with --num-shards, e.g. a SLURM array)")
    p.add_argument("--num-shards", type=int, default=1, help="number of jobs sharing the features and assign stages")
    p.add_argument("--executor", choices=["serial", "process", "ray"], default="serial",
                   help="where per-shard and per-topic work runs (ray: pip install 'gramprompt[ray]')")
    p.add_argument("--workers", type=int, default=2, help="processes of the process executor")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local one)")
    p.add_argument("--text-model", default=d_feat.text_model,
                   help="sentence-transformers model name or path for captions (default: offline all-MiniLM-L6-v2)")
    p.add_argument("--batch-size", type=int, default=d_feat.batch_size)
    p.add_argument("--feature-dtype", choices=["float32", "float16"], default=d_feat.dtype)
    p.add_argument("--stems", action="store_true",
                   help="also store the backbone's image stems (float16; default backbone), so VPT/UNIGRAM "
                        "meta-training reads them instead of decoding every image again")
    p.add_argument("--shard-size", type=int, default=1000, help="pairs per shard of listed sources")
    p.add_argument("--filter-threshold", type=float, default=None, help="drop pairs with image-text cosine below this")
    p.add_argument("--filter-quantile", type=float, default=None, help="drop this lowest fraction of pairs by cosine")
    p.add_argument("--umap-neighbors", type=int, default=d_topic.umap_neighbors)
    p.add_argument("--umap-components", type=int, default=d_topic.umap_components)
    p.add_argument("--min-cluster-size", type=int, default=d_topic.min_cluster_size)
    p.add_argument("--min-samples", type=int, default=d_topic.min_samples)
    p.add_argument("--clusterer", choices=["hdbscan", "sklearn"], default=d_topic.clusterer)
    p.add_argument("--noise", choices=["drop", "reassign"], default=d_topic.noise,
                   help="HDBSCAN noise pairs: leave out, or give to the nearest topic")
    p.add_argument("--duplicates", choices=["merge", "disambiguate"], default=d_topic.duplicates,
                   help="topics with the same top word: merge them, or name them apart")
    p.add_argument("--fit-size", type=int, default=d_topic.fit_size, help="fit UMAP + HDBSCAN on this many pairs")
    p.add_argument("--assign", choices=["predict", "centroid"], default=d_topic.assign,
                   help="pairs outside the fit: hdbscan.approximate_predict or nearest topic centroid")
    p.add_argument("--stop-words", nargs="*", default=[], help="extra words never to use as topic words")
    p.add_argument("--word-min-share", type=float, default=d_topic.word_min_share,
                   help="count a cluster in Eq. 3's L_w only if the word is this share of its words "
                        "(0: Eq. 3 exactly; e.g. 0.002 against stray captions at scale)")
    p.add_argument("--domains", type=int, default=d_dom.domains, help="visual domains per topic (U)")
    p.add_argument("--min-domain-size", type=int, default=d_dom.min_domain_size)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show", type=int, default=20, help="topics to print")
    p.add_argument("--no-report", action="store_true", help="skip the PNG report")
    p.add_argument("--agreement", default=None, metavar="FIELD",
                   help="also score topics against this metadata field (ARI/NMI), e.g. category for openclipart "
                        "or iconify (the set's own theme of the icon)")
    p.add_argument("--domain-agreement", default=None, metavar="FIELD",
                   help="also measure whether visual domains follow this metadata field within topics (NMI "
                        "against a within-topic shuffle), e.g. set for iconify (each set is one drawing style)")
    p.set_defaults(fn=cmd_chc)

    from .meta.regulator import FORMS
    from .meta.trainer import MetaConfig
    from .meta.tasks import TaskConfig

    d_meta, d_task = MetaConfig(), TaskConfig()
    p = sub.add_parser("meta-train", help="GRAM: meta-learn a prompt initialization theta* and a gradient regulator "
                                          "phi* on tasks from a CHC hierarchy")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--hierarchy", type=Path, help="a `gram chc` output folder")
    src.add_argument("--supervised", default=None, metavar="DATASET",
                     help="ablation (- CHC): tasks from a labelled dataset's classes instead, e.g. clipart-categories")
    _add_backbone_args(p)
    p.add_argument("--method", required=True, choices=sorted(METHODS), metavar="METHOD",
                   help="prompt method GRAM wraps: coop, cocoop, vpt, vpt-deep, joint (UNIGRAM: joint, 2+2 tokens)")
    p.add_argument("--out", required=True, type=Path, help="run folder; rerun the same command to resume")
    _add_overwrite_arg(p)
    p.add_argument("--iterations", type=int, default=d_meta.iterations)
    p.add_argument("--task-batch", type=int, default=d_meta.task_batch, help="tasks per meta-batch (B)")
    p.add_argument("--ways", type=int, default=d_task.ways, help="classes per task (K_t)")
    p.add_argument("--support-shots", type=int, default=d_task.support_shots)
    p.add_argument("--query-shots", type=int, default=d_task.query_shots)
    p.add_argument("--inner-lr", type=float, default=d_meta.inner_lr, help="alpha")
    p.add_argument("--inner-steps", type=int, default=d_meta.inner_steps)
    p.add_argument("--lr-theta", type=float, default=d_meta.lr_theta, help="lambda_1 (Adam)")
    p.add_argument("--lr-phi", type=float, default=d_meta.lr_phi, help="lambda_2 (Adam)")
    p.add_argument("--second-order", action="store_true", help="keep the Hessian term (slower, more memory)")
    p.add_argument("--regulator", choices=["shared", "diagonal", "full"], default=d_meta.regulator.shape)
    p.add_argument("--no-regulator", action="store_true", help="ablation: raw gradients in the inner loop")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--regulator-form", choices=list(FORMS), default=d_meta.regulator.form_name,
                      help="literal (the paper's formula), scale-invariant (sees g / rms(g), beta scaled by rms(g)), "
                           "bounded (R(0) = 0, ||R(g)|| <= ||g||, gated toward g; the default, chosen by measurement); "
                           "see README")
    form.add_argument("--scale-invariant", dest="regulator_form", action="store_const", const="scale-invariant",
                      help="alias of --regulator-form scale-invariant")
    p.add_argument("--no-domain-shift", action="store_true", help="ablation: support sets from all domains")
    p.add_argument("--pretrain", action="store_true",
                   help="ablation (- meta-learning): plain classification of the clustered images, topic words as classes")
    p.add_argument("--autocast", choices=["none", "bf16"], default=d_meta.autocast,
                   help="bf16: forward passes under bfloat16 autocast (on a GPU; theta, phi and Adam stay fp32)")
    p.add_argument("--grad-clip", type=float, default=d_meta.grad_clip)
    p.add_argument("--stats-every", type=int, default=d_meta.stats_every)
    p.add_argument("--checkpoint-every", type=int, default=d_meta.checkpoint_every)
    p.add_argument("--text-tokens", type=int, default=PromptConfig().text_tokens)
    p.add_argument("--visual-tokens", type=int, default=PromptConfig().visual_tokens)
    p.add_argument("--visual-depth", type=int, default=None)
    p.add_argument("--seed", type=int, default=d_meta.seed)
    p.set_defaults(fn=cmd_meta_train)

    p = sub.add_parser("experiment", help="run a YAML experiment config (datasets x rows x seeds, with its CHC and "
                                         "meta-training stages), or print its tables")
    p.add_argument("action", choices=["run", "plan", "table"],
                   help="run: do what is not done, then print the tables; plan: list every job and its status; "
                        "table: print the tables of the finished runs")
    p.add_argument("configs", nargs="+", help="config files or packaged names (e.g. offline/base2new)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set seeds=[1] --set fewshot.tune.epochs=2 (repeatable)")
    p.add_argument("--jobs", type=_at_least_one, default=1, help="worker processes for meta-training and few-shot runs")
    p.add_argument("--max-batch-runs", type=_at_least_one, default=MAX_BATCH_RUNS,
                   help=f"few-shot runs of a CoOp, CoCoOp, VPT or joint row that differ only in seed and start "
                        f"are tuned together, this many at most (default {MAX_BATCH_RUNS}; 1: one by one)")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: this machine (--jobs processes); ray: one Ray task per meta-training and per batch "
                        "of runs, on the cluster of --ray-address (or RAY_ADDRESS, or one started here by `ray start`, "
                        "else a local instance); run folders must be on shared storage; a killed worker's task "
                        "is rerun")
    p.add_argument("--ray-address", default=None, help="with --executor ray: the Ray cluster's address")
    p.add_argument("--dry-run", action="store_true", help="with run: only list the jobs (same as plan)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(fn=cmd_experiment)

    for name, ablations, text in (
            ("demo", False, "offline GRAM pipeline: CHC on openclipart, meta-training, then the paper's Table 1 "
                            "(base-to-new) for CLIP, CoCoOp, CoOp, CoOp+GRAM, VPT, VPT+GRAM and UNIGRAM, at a size "
                            "that takes about 13 minutes on 2 cores (--full: the README's Table 1, hours)"),
            ("ablations", True, "the demo's pipeline for the paper's Table 6 (ablations of UNIGRAM) and Table 7 "
                                "(prompt token counts)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--quick", action="store_true", help="the same pipeline at reduced size (a smoke run)")
        if not ablations:
            p.add_argument("--full", action="store_true",
                           help="the README's Table 1 (offline/base2new: 3 CHC hierarchies, 5 seeds) instead of "
                                "the demo's size (offline/demo)")
        p.add_argument("--out", default=None,
                       help="root folder (default: the config's, runs/offline-demo, runs/offline with --full or "
                            "ablations, runs/offline-quick with --quick); stages and runs with unchanged settings "
                            "are reused")
        p.add_argument("--backbone", default=None, help="backbone spec (default: the shipped offline backbone)")
        p.add_argument("--pairs", default=None, help="image-text pairs for CHC (default openclipart; see gram chc)")
        p.add_argument("--datasets", nargs="+", default=None)
        p.add_argument("--seeds", nargs="+", type=int, default=None)
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a key of the configs (see gram experiment)")
        p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                       help="worker processes for meta-training and few-shot runs (default: 2, or 1 on one core)")
        p.add_argument("--max-batch-runs", type=int, default=MAX_BATCH_RUNS,
                       help=f"few-shot runs of a CoOp, CoCoOp, VPT or joint row that differ only in seed and start "
                            f"are tuned together, this many at most (default {MAX_BATCH_RUNS}; 1: one by one)")
        p.add_argument("--device", default=None)
        if ablations:
            p.add_argument("--tables", nargs="+", type=int, choices=[6, 7], default=[6, 7],
                           help="which of the paper's tables to compute")
        p.set_defaults(fn=cmd_demo, ablations=ablations)

    p = sub.add_parser("data", help="data tools: gram data check ROOT")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    p = data_sub.add_parser("check", help="check a CoOp data root: split sizes against the published ones, "
                                          "missing image files (exit 1 when anything is wrong)")
    p.add_argument("root", type=Path, help="data root holding imagenet/, caltech-101/, ... (CoOp's layout)")
    p.add_argument("--datasets", nargs="+", default=None,
                   help="names to check (default: every dataset whose folder is under ROOT)")
    p.add_argument("--sample", type=int, default=None, help="check only N seeded random image files per dataset")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample")
    p.add_argument("--format", choices=["markdown", "plain"], default="markdown")
    p.set_defaults(fn=cmd_data_check)
    return parser


def _one_line(err: BaseException) -> str:
    """The message of ``err`` on one line; OS errors name the file (``[Errno 13] ...`` says nothing to a user)."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = err.filename if err.filename is not None else "the output folder's disk"
        text = f"no space left on the device while writing {where}: free space, then rerun the same command to resume"
    elif isinstance(err, OSError) and err.strerror and err.filename is not None:
        text = f"{err.filename}: {err.strerror}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return args.fn(args)
    except USER_ERRORS as err:  # bad input: one line, exit 2 (anything else is a bug and keeps its traceback)
        print(f"gram: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gram: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
