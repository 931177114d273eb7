"""The GRAM paper's analysis figures, drawn from run folders.

* Fig. 1a: accuracy of one method across prompt initializations (random, phrase, GRAM's theta*),
  from finished base-to-new runs (``summary.json``);
* Fig. 3a: test accuracy per epoch, base (solid) and new (dashed), from runs tuned with
  ``--eval-every-epoch`` (``{"epoch", "test_base", "test_new"}`` records in ``metrics.jsonl``);
* Fig. 3b: the normalized inner product of the regulated support gradient and the query gradient
  against meta-training iteration (``{"iteration", "alignment"}`` records of ``gram meta-train``),
  beside the unregulated gradient's (``alignment_raw``) where logged.

Loaders read run folders; the ``*_data`` functions are the pure aggregation (what the tests check);
the figure functions turn records into a :class:`~matplotlib.figure.Figure` on its own Agg canvas,
so nothing touches pyplot's global state or the process-wide backend.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ..runs import METRICS, SUMMARY, RunDir, read_summary
from .metrics import harmonic_mean
from .table import BASE2NEW, collect, hierarchy, protocol, repeat, row_label

logger = logging.getLogger(__name__)

METRICS_1A = {"base": "Base accuracy (%)", "new": "New accuracy (%)", "h": "H (%)"}
EPOCH_HINT = "rerun them with `gram fewshot ... --eval-every-epoch`"
# Neutral shades for the initializations theta* is compared against; strong colours for theta* rows.
NEUTRAL = {"random": "#c4c4c4", "phrase": "#8c8c8c", "other": "#a8a8b8"}
HIGHLIGHT = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd")


def _figure(width: float, height: float) -> Figure:
    """A figure bound to its own Agg canvas: safe in threads and servers, no pyplot registry."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Write ``fig`` (format from the suffix, e.g. .png), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def _mean(xs: Iterable[float]) -> float:
    xs = [float(x) for x in xs]
    return math.fsum(xs) / len(xs)


def _ordered(values: Iterable) -> list:
    return list(dict.fromkeys(values))


def _select(labels: list[str], only: Sequence[str] | None) -> list[str]:
    """``labels`` restricted to (and ordered as) ``only``; a name in ``only`` that no run has is an error."""
    if only is None:
        return labels
    unknown = [x for x in only if x not in labels]
    if unknown:
        raise ValueError(f"no runs labelled {unknown}; the runs have labels {labels}")
    return list(dict.fromkeys(only))


def _repeat_key(summary: dict):
    """A run's seed, or (hierarchy, seed) for a GRAM run of a multi-hierarchy experiment: every (hierarchy,
    seed) is one repeat of its cell, as in the tables."""
    h = hierarchy(summary)
    return summary.get("seed") if h is None else (h, summary.get("seed"))


def _check_seeds(runs: Sequence, seed_of, what: str) -> None:
    """Refuse duplicate repeats in one cell: they would silently weigh one repeat twice."""
    seeds = [seed_of(r) for r in runs]
    dupes = sorted({str(s) for s in seeds if seeds.count(s) > 1})
    if dupes:
        raise ValueError(f"{what}: seed(s) {', '.join(dupes)} appear more than once")


# ---------------------------------------------------------------- Fig. 1a: initializations


@dataclass(frozen=True)
class InitPoint:
    """One initialization (a run label) on one dataset, or averaged over datasets."""

    label: str
    values: tuple[float, ...]  # the metric per repeat (per dataset in the "Average" panel): the dots
    keys: tuple  # the seed, (hierarchy, seed) or dataset of each value
    base: float  # mean Base over the values' runs
    new: float  # mean New over the values' runs
    mean: float  # the bar: mean of the values for base/new; for h the H of (base, new), as the tables do


def _point(label: str, metric: str, values: list[float], keys: list, base: float, new: float) -> InitPoint:
    mean = harmonic_mean(base, new) if metric == "h" else _mean(values)
    return InitPoint(label, tuple(values), tuple(keys), base, new, mean)


def base2new_summaries(dirs: Iterable[str | os.PathLike]) -> list[dict]:
    """Summaries of the finished base-to-new runs under ``dirs`` (recursive)."""
    dirs = list(dirs)
    runs = [s for s in collect(dirs) if protocol(s) == BASE2NEW]
    if not runs:
        raise ValueError("no finished base-to-new runs (summary.json) under: " + ", ".join(map(str, dirs)))
    return runs


def fig1a_data(summaries: Sequence[dict], metric: str = "h",
               only: Sequence[str] | None = None) -> dict[str, list[InitPoint]]:
    """Per dataset (in run order), one :class:`InitPoint` per label: the metric of every seed and the
    mean over seeds. With several datasets an ``"Average"`` entry follows, over the labels present on
    every dataset: dots are the per-dataset means; base/new are averaged first and H taken from them,
    exactly as the Average rows of ``gram table`` are."""
    if metric not in METRICS_1A:
        raise ValueError(f"metric must be one of {sorted(METRICS_1A)}, not {metric!r}")
    runs = [s for s in summaries if protocol(s) == BASE2NEW]
    labels = _select(_ordered(row_label(s) for s in runs), only)
    datasets = _ordered(s["dataset"] for s in runs if row_label(s) in labels)
    out: dict[str, list[InitPoint]] = {}
    for ds in datasets:
        points = []
        for label in labels:
            group = sorted((s for s in runs if s["dataset"] == ds and row_label(s) == label),
                           key=lambda s: (hierarchy(s) or 0, s.get("seed") is None, s.get("seed")))
            if not group:
                continue
            _check_seeds(group, repeat, f"{ds}/{label}")
            missing = [repeat(s) for s in group if metric not in s]
            if missing:
                raise ValueError(f"{ds}/{label}: summaries of seed(s) {missing} have no {metric!r}")
            points.append(_point(label, metric, [float(s[metric]) for s in group], [_repeat_key(s) for s in group],
                                 _mean(s["base"] for s in group), _mean(s["new"] for s in group)))
        out[ds] = points
    if len(datasets) > 1:
        average = []
        for label in labels:
            per_ds = [(ds, p) for ds in datasets for p in out[ds] if p.label == label]
            if len(per_ds) < len(datasets):
                continue  # an average over a subset of the datasets would not compare
            average.append(_point(label, metric, [p.mean for _, p in per_ds], [ds for ds, _ in per_ds],
                                  _mean(p.base for _, p in per_ds), _mean(p.new for _, p in per_ds)))
        if average:
            out["Average"] = average
    return out


def init_kind(label: str, highlight: Sequence[str]) -> str:
    """"highlight" (theta* rows), "random", "phrase" or "other", from the label's wording."""
    if label in highlight:
        return "highlight"
    low = label.lower()
    if "random" in low or "rand" in low.split("-"):
        return "random"
    if "phrase" in low:
        return "phrase"
    return "other"


def fig1a(summaries: Sequence[dict], metric: str = "h", highlight: Sequence[str] | None = None,
          only: Sequence[str] | None = None, title: str | None = None) -> Figure:
    """Bars: mean over the repeats (seeds, x hierarchies for GRAM rows) of each initialization, dots: the
    repeats; neutral colours for random and phrase initializations, strong ones for ``highlight`` (default: labels containing "gram"), whose
    level is carried across the panel as a dashed line against the grey band spanning the others."""
    data = fig1a_data(summaries, metric, only)
    labels = _ordered(p.label for points in data.values() for p in points)
    if highlight is None:
        highlight = [x for x in labels if "gram" in x.lower()]
    else:
        unknown = [x for x in highlight if x not in labels]
        if unknown:
            raise ValueError(f"--highlight {unknown}: no runs with that label; labels are {labels}")
    colour = {x: HIGHLIGHT[i % len(HIGHLIGHT)] for i, x in enumerate(highlight)}
    if only is None:  # neutral initializations first, theta* rows last
        order = ["random", "phrase", "other", "highlight"]
        labels = sorted(labels, key=lambda x: order.index(init_kind(x, highlight)))
    panels = list(data)
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    fig = _figure(max(4.0, 0.45 * len(labels) + 1.5) * ncols, 3.8 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, panels):
        points = sorted(data[name], key=lambda p: labels.index(p.label))
        xs = range(len(points))
        kinds = [init_kind(p.label, highlight) for p in points]
        ax.bar(xs, [p.mean for p in points], width=0.7, edgecolor="black", linewidth=0.5, zorder=2,
               color=[colour[p.label] if k == "highlight" else NEUTRAL[k] for p, k in zip(points, kinds)])
        for x, p in zip(xs, points):
            n = len(p.values)
            offsets = [0.0] if n == 1 else [-0.18 + 0.36 * i / (n - 1) for i in range(n)]
            ax.scatter([x + o for o in offsets], p.values, s=12, color="black", zorder=3)
        others = [p.mean for p, k in zip(points, kinds) if k != "highlight"]
        if len(others) > 1:
            ax.axhspan(min(others), max(others), color="#bbbbbb", alpha=0.25, zorder=1, linewidth=0)
        for p, k in zip(points, kinds):
            if k == "highlight":
                ax.axhline(p.mean, color=colour[p.label], linestyle="--", linewidth=1, zorder=1)
        every = [v for p in points for v in (*p.values, p.mean)]
        lo, hi = min(every), max(every)
        pad = max(1.0, 0.15 * (hi - lo))
        ax.set_ylim(max(0.0, lo - pad), min(100.0, hi + pad))
        ax.set_xticks(list(xs), [p.label for p in points], rotation=40, ha="right", fontsize=8)
        ax.set_title(name if name != "Average" else f"Average over {len(panels) - 1} datasets (dots: datasets)",
                     fontsize=10)
        ax.set_ylabel(METRICS_1A[metric])
        ax.grid(axis="y", alpha=0.3, zorder=0)
    present = _ordered(init_kind(x, highlight) for x in labels)
    handles = [Patch(color=NEUTRAL[k], label=f"{k} initialization" if k != "other" else "other")
               for k in ("random", "phrase", "other") if k in present]
    handles += [Patch(color=colour[x], label=f"{x} (theta*)") for x in highlight]
    handles.append(Line2D([], [], marker="o", color="black", linestyle="", markersize=4, label="seeds"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5), fontsize=8, frameon=False)
    fig.suptitle(title or f"{METRICS_1A[metric]} across prompt initializations (bars: mean over seeds)")
    return fig


# ---------------------------------------------------------------- Fig. 3a: accuracy per epoch


@dataclass(frozen=True)
class EpochRun:
    """The per-epoch test accuracies of one finished base-to-new run."""

    path: Path
    label: str
    dataset: str
    seed: int | None
    epochs: tuple[int, ...]
    base: tuple[float, ...]
    new: tuple[float, ...]
    hierarchy: int | None = None  # the CHC hierarchy of a GRAM run of a multi-hierarchy experiment


@dataclass(frozen=True)
class Curve:
    """One label's accuracy per epoch: mean over seeds, then over datasets (each dataset weighs the same)."""

    label: str
    epochs: tuple[int, ...]
    base: tuple[float, ...]
    new: tuple[float, ...]
    datasets: tuple[str, ...]
    runs: int


def _run_folders(dirs: Iterable[str | os.PathLike]) -> list[Path]:
    """Folders holding a summary.json, under ``dirs`` (recursive, each once, in a stable order)."""
    seen: dict[Path, None] = {}
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise FileNotFoundError(f"no such run folder: {d}")
        for path in [d / SUMMARY] if (d / SUMMARY).is_file() else sorted(d.rglob(SUMMARY)):
            seen.setdefault(path.parent.resolve(), None)
    return list(seen)


def epoch_records(records: Iterable[dict]) -> list[dict]:
    """The ``{"epoch", "test_base", "test_new"}`` records of a metrics log, by epoch; the last record of
    an epoch wins (a rerun into the same folder appends)."""
    by_epoch = {int(r["epoch"]): r for r in records if "epoch" in r and "test_base" in r and "test_new" in r}
    return [by_epoch[e] for e in sorted(by_epoch)]


def epoch_runs(dirs: Iterable[str | os.PathLike]) -> list[EpochRun]:
    """The finished base-to-new runs under ``dirs`` that logged test accuracy every epoch. Runs without
    such records are skipped with a warning; none at all is an error that says how to get them."""
    dirs = list(dirs)
    out, without, other = [], [], 0
    for folder in _run_folders(dirs):
        summary = read_summary(folder)
        if protocol(summary) != BASE2NEW:
            other += 1
            continue
        recs = epoch_records(RunDir(folder).read_metrics())
        if not recs:
            without.append(folder)
            continue
        out.append(EpochRun(folder, row_label(summary), summary["dataset"], summary.get("seed"),
                            tuple(int(r["epoch"]) for r in recs), tuple(float(r["test_base"]) for r in recs),
                            tuple(float(r["test_new"]) for r in recs), hierarchy(summary)))
    where = ", ".join(map(str, dirs))
    if not out:
        found = f"{len(without)} base-to-new run(s)" + (f" and {other} other run(s)" if other else "")
        raise ValueError(f"no per-epoch test accuracy (test_base/test_new records in {METRICS}) under {where}: "
                         f"found {found} without them; {EPOCH_HINT}")
    if without:
        logger.warning("skipped %d run(s) without per-epoch test accuracy (%s): %s", len(without), EPOCH_HINT,
                       ", ".join(map(str, without)))
    return out


def fig3a_data(runs: Sequence[EpochRun], only: Sequence[str] | None = None) -> list[Curve]:
    """One :class:`Curve` per label (run order, or ``only``'s). Every run of a label must log the same
    epochs, and every label must cover the same datasets: a mean over different sets would mislead."""
    labels = _select(_ordered(r.label for r in runs), only)
    curves = []
    for label in labels:
        mine = [r for r in runs if r.label == label]
        epochs = _ordered(r.epochs for r in mine)
        if len(epochs) > 1:
            raise ValueError(f"{label}: runs log different epochs ({', '.join(str(len(e)) for e in epochs)} "
                             "epochs); use runs tuned with the same --epochs")
        datasets = _ordered(r.dataset for r in mine)
        per_ds_base, per_ds_new = [], []
        for ds in datasets:
            group = [r for r in mine if r.dataset == ds]
            _check_seeds(group, lambda r: (r.hierarchy, r.seed), f"{ds}/{label}")
            per_ds_base.append([_mean(r.base[i] for r in group) for i in range(len(epochs[0]))])
            per_ds_new.append([_mean(r.new[i] for r in group) for i in range(len(epochs[0]))])
        curves.append(Curve(label, epochs[0], tuple(_mean(col) for col in zip(*per_ds_base)),
                            tuple(_mean(col) for col in zip(*per_ds_new)), tuple(datasets), len(mine)))
    sets = _ordered(frozenset(c.datasets) for c in curves)
    if len(sets) > 1:
        cover = "; ".join(f"{c.label}: {', '.join(c.datasets)}" for c in curves)
        raise ValueError(f"labels cover different datasets ({cover}); pass the same datasets for every label")
    return curves


def epoch_table(curves: Sequence[Curve]) -> str:
    """Markdown: the figure's points, one row per epoch, Base / New / H of every label (H of the two means, as
    Table 1's averages), so that what a text says about the curves comes from a command."""
    header = "| epoch | " + " | ".join(f"{c.label} Base | New | H" for c in curves) + " |"
    lines = [header, "|---|" + "---|---|---|" * len(curves)]
    for i, epoch in enumerate(curves[0].epochs if curves else ()):
        cells = [f"{c.base[i]:.2f} | {c.new[i]:.2f} | {harmonic_mean(c.base[i], c.new[i]):.2f}" for c in curves]
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fig3a(curves: Sequence[Curve], title: str | None = None) -> Figure:
    """Test accuracy per epoch (:func:`fig3a_data`'s curves): one colour per label, base solid, new dashed."""
    fig = _figure(6.4, 4.2)
    ax = fig.subplots()
    for i, c in enumerate(curves):
        colour = f"C{i % 10}"
        ax.plot(c.epochs, c.base, color=colour, linestyle="-", marker="o", markersize=3)
        ax.plot(c.epochs, c.new, color=colour, linestyle="--", marker="o", markersize=3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=f"C{i % 10}", label=c.label) for i, c in enumerate(curves)]
    handles += [Line2D([], [], color="black", linestyle="-", label="base"),
                Line2D([], [], color="black", linestyle="--", label="new")]
    ax.legend(handles=handles, fontsize=8)
    datasets = curves[0].datasets
    if title is None:
        if len(datasets) == 1:
            title = f"Test accuracy per epoch on {datasets[0]} (mean over seeds)"
        else:
            title = f"Test accuracy per epoch, mean over seeds and {len(datasets)} datasets"
            ax.set_title(", ".join(datasets), fontsize=8)
    fig.suptitle(title, fontsize=11)
    return fig


# ---------------------------------------------------------------- Fig. 3b: gradient alignment


@dataclass(frozen=True)
class AlignmentSeries:
    """The support-query gradient alignment logged by meta-training, one run or the mean of several
    (``runs``); ``raw`` is the same tasks' alignment with the unregulated support gradient, where logged."""

    label: str
    iterations: tuple[int, ...]
    values: tuple[float, ...]
    raw: tuple[float, ...] | None = None
    runs: int = 1


def alignment_records(records: Iterable[dict], key: str = "alignment") -> tuple[tuple[int, ...], tuple[float, ...]]:
    """(iterations, ``key``) of a meta-training log, by iteration, finite values only; the last record
    of an iteration wins (a resumed run may redo a few)."""
    by_it: dict[int, float] = {}
    for r in records:
        if "iteration" in r and r.get(key) is not None and math.isfinite(float(r[key])):
            by_it[int(r["iteration"])] = float(r[key])
    its = tuple(sorted(by_it))
    return its, tuple(by_it[i] for i in its)


def _legend_names(folders: Sequence[Path]) -> list[str]:
    """Folder names, with their parent prepended where two would read the same."""
    names = [f.name for f in folders]
    return [f"{f.parent.name}/{f.name}" if names.count(f.name) > 1 else f.name for f in folders]


def _pooled(label: str, runs: list[tuple[dict[int, float], dict[int, float]]]) -> AlignmentSeries:
    """The mean over runs at the iterations all of them logged; ``raw`` only if every run logged it and it differs
    somewhere (a run without a regulator logs its one gradient twice: a second line would only hide the first)."""
    its = sorted(set.intersection(*(set(v) for v, _ in runs)))
    if not its:
        raise ValueError(f"the runs labelled {label!r} share no logged iteration")
    values = tuple(_mean(v[i] for v, _ in runs) for i in its)
    raw = None
    if all(set(its) <= set(r) for _, r in runs) and any(v[i] != r[i] for v, r in runs for i in its):
        raw = tuple(_mean(r[i] for _, r in runs) for i in its)
    return AlignmentSeries(label, tuple(its), values, raw, len(runs))


def alignment_series(dirs: Sequence[str | os.PathLike], labels: Sequence[str] | None = None) -> list[AlignmentSeries]:
    """One series per legend name (from ``labels`` or the folder names), in first-seen order: folders
    given the same name (e.g. one variant on several CHC hierarchies) are pooled into their mean."""
    folders = [Path(d) for d in dirs]
    if labels is not None and len(labels) != len(folders):
        raise ValueError(f"--labels gives {len(labels)} name(s) for {len(folders)} run folder(s)")
    for f in folders:
        if not f.is_dir():
            raise FileNotFoundError(f"no such run folder: {f}")
        if not (f / METRICS).is_file():
            raise ValueError(f"{f} has no {METRICS}: not a `gram meta-train` run folder")
    names = list(labels) if labels is not None else _legend_names([f.resolve() for f in folders])
    groups: dict[str, list[tuple[dict[int, float], dict[int, float]]]] = {}
    for f, name in zip(folders, names):
        records = RunDir(f).read_metrics()
        its, vals = alignment_records(records)
        if not its:
            raise ValueError(f"{f / METRICS} has no `alignment` records (gram meta-train logs them every "
                             "--stats-every iterations; --pretrain runs have none)")
        groups.setdefault(name, []).append((dict(zip(its, vals)), dict(zip(*alignment_records(records, "alignment_raw")))))
    return [_pooled(name, runs) for name, runs in groups.items()]


def alignment_table(series: Sequence[AlignmentSeries]) -> str:
    """Markdown: each series' mean alignment over the first and the last third of its logged iterations, and the
    same for the unregulated gradient where logged: the numbers behind the figure's two claims (does alignment
    rise during meta-training; does R_phi raise it over the raw gradient on the same tasks)."""
    def third(values: Sequence[float], last: bool) -> float:
        k = max(1, len(values) // 3)
        return _mean(values[-k:] if last else values[:k])

    lines = ["| series | runs | first third | last third | change | unregulated: first third | last third | "
             "regulated - unregulated, last third |", "|---|---|---|---|---|---|---|---|"]
    for s in series:
        a, b = third(s.values, False), third(s.values, True)
        raw = ["-", "-", "-"] if s.raw is None else [
            f"{third(s.raw, False):.3f}", f"{third(s.raw, True):.3f}", f"{b - third(s.raw, True):+.3f}"]
        lines.append(f"| {s.label} | {s.runs} | {a:.3f} | {b:.3f} | {b - a:+.3f} | " + " | ".join(raw) + " |")
    return "\n".join(lines)


def moving_average(values: Sequence[float], k: int) -> list[float]:
    """Trailing mean over the last ``k`` points (fewer at the start), so the output keeps every iteration."""
    if k < 1:
        raise ValueError(f"--smooth must be at least 1, not {k}")
    return [_mean(values[max(0, i - k + 1):i + 1]) for i in range(len(values))]


def fig3b(series: Sequence[AlignmentSeries], smooth: int = 1, title: str | None = None) -> Figure:
    """Alignment against meta-training iteration, one line per series; dashed in the same colour, the
    unregulated gradient's alignment on the same tasks where it was logged (what R_phi adds is the gap).
    With ``smooth`` > 1 the raw values stay as a faint line under their moving average."""
    fig = _figure(6.4, 4.2)
    ax = fig.subplots()
    for i, s in enumerate(series):
        colour = f"C{i % 10}"
        if smooth > 1:
            ax.plot(s.iterations, s.values, color=colour, alpha=0.25, linewidth=1)
        label = s.label if s.runs == 1 else f"{s.label} (mean of {s.runs})"
        ax.plot(s.iterations, moving_average(s.values, smooth), color=colour, linewidth=1.6, label=label)
        if s.raw is not None:
            ax.plot(s.iterations, moving_average(s.raw, smooth), color=colour, linewidth=1.2, linestyle="--",
                    label=f"{s.label}: unregulated gradient")
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xlabel("meta-training iteration")
    ax.set_ylabel("normalized gradient inner product")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if smooth > 1:
        ax.set_title(f"moving average over {smooth} logged points (faint: raw)", fontsize=8)
    fig.suptitle(title or "Support-query gradient alignment during meta-training", fontsize=11)
    return fig
