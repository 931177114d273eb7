"""GRAM's gain against the size of its meta-training corpus: the scale study's table and figure.

Each config of the study (``offline/scale/*``) is one corpus; every comparison its rows declare
(``compare``, e.g. CoOp + GRAM vs CoOp) gives, at that corpus size, the paired differences ΔBase, ΔNew
and ΔH with their bootstrap intervals, pooled over CHC hierarchies and per hierarchy: Table 1's
significance protocol (``eval.table.compare_rows``). The corpus size is the number of pairs the
first hierarchy's features stage kept.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib.figure import Figure

from ..data.registry import spec_name
from ..eval.figures import HIGHLIGHT, _figure
from ..eval.significance import HDiff
from ..eval.table import _holds, _markdown, _with_interval, compare_rows
from .config import Experiment
from .report import comparisons
from .runner import chc_dir, summaries


@dataclass(frozen=True)
class ScalePoint:
    """One comparison at one corpus size."""

    config: str
    corpus: str  # the pair source spec
    pairs: int | None  # pairs in the corpus (None: its CHC has not run)
    row: str  # "CoOp + GRAM vs CoOp"
    pooled: HDiff | None
    per_hierarchy: tuple[tuple[int, HDiff | None], ...]
    note: str = ""  # why there is no interval


def corpus_pairs(exp: Experiment) -> int | None:
    """Pairs kept by the features stage of the experiment's first hierarchy, if it has run."""
    folder = chc_dir(exp)
    path = folder / "config.json" if folder is not None else None
    if path is None or not path.exists():
        return None
    return int(json.loads(path.read_text())["counts"]["pairs"])


def scale_points(experiments: Sequence[Experiment], *, replicates: int = 2000, level: float = 0.95,
                 seed: int = 0) -> list[ScalePoint]:
    """Every comparison of every experiment (one per corpus), in the order given."""
    out = []
    for exp in experiments:
        runs = summaries(exp)
        datasets = [spec_name(c) for c in exp.columns]
        size = corpus_pairs(exp)
        corpus = exp.hierarchy.pairs if exp.hierarchy is not None else ""
        for label, title, base, base_title in comparisons(list(exp.rows)):
            d, per = compare_rows(runs, label, base, datasets, replicates=replicates, level=level, seed=seed)
            out.append(ScalePoint(exp.name, corpus, size, f"{title} vs {base_title}", None if isinstance(d, str) else d,
                                  tuple(per), d if isinstance(d, str) else ""))
    return out


def scale_table(points: Sequence[ScalePoint], level: float = 0.95) -> str:
    """One line per comparison and corpus: ΔBase, ΔNew, ΔH with their intervals, ΔH per hierarchy."""
    pct = f"{100 * level:g}%"
    rows = []
    for p in sorted(points, key=lambda p: (p.row, p.pairs or 0)):
        size = f"{p.pairs:,}" if p.pairs is not None else "–"
        if p.pooled is None:
            rows.append([p.row, p.corpus, size, "–", "–", "–", "–", "n/a"])
            continue
        d = p.pooled
        per = "; ".join(f"h{h}: {_with_interval(x.d_h, (x.low, x.high)) if x else '–'}" for h, x in p.per_hierarchy)
        rows.append([p.row, p.corpus, size, _with_interval(d.d_base, d.base_interval), _with_interval(d.d_new, d.new_interval),
                     _with_interval(d.d_h, (d.low, d.high)), per or "–", _holds([x for _, x in p.per_hierarchy])])
    header = ["Comparison", "corpus", "pairs", f"ΔBase [{pct}]", f"ΔNew [{pct}]", f"ΔH [{pct}]",
              f"per hierarchy ΔH [{pct}]", "holds on every hierarchy"]
    notes = [f"{p.config}: {p.row}: {p.note}" for p in points if p.note]
    return "\n\n".join([_markdown(header, rows), *(["Not tested: " + "; ".join(notes)] if notes else [])])


def scale_figure(points: Sequence[ScalePoint], title: str | None = None) -> Figure:
    """ΔBase, ΔNew and ΔH against corpus size (log scale): pooled difference with its interval per
    comparison, each hierarchy's ΔH as a small mark beside it."""
    fig = _figure(11.0, 3.6)
    axes = fig.subplots(1, 3, sharex=True)
    shown = [p for p in points if p.pooled is not None and p.pairs]
    names = list(dict.fromkeys(p.row for p in shown))
    for ax, metric, label in zip(axes, ("base", "new", "h"), ("ΔBase", "ΔNew", "ΔH"), strict=True):
        ax.axhline(0.0, color="#888888", lw=0.8)
        for k, name in enumerate(names):
            line = sorted((p for p in shown if p.row == name), key=lambda p: p.pairs)
            xs = [p.pairs * (1.0 + 0.03 * (k - (len(names) - 1) / 2)) for p in line]  # side by side, not on top
            ys, lows, highs = [], [], []
            for p in line:
                d = p.pooled
                y, (lo, hi) = {"base": (d.d_base, d.base_interval), "new": (d.d_new, d.new_interval),
                               "h": (d.d_h, (d.low, d.high))}[metric]
                ys.append(y)
                lows.append(y - lo)
                highs.append(hi - y)
            colour = HIGHLIGHT[k % len(HIGHLIGHT)]
            ax.errorbar(xs, ys, yerr=[lows, highs], color=colour, marker="o", capsize=3, label=name)
            if metric == "h":
                for x, p in zip(xs, line, strict=True):
                    hs = [x_.d_h for _, x_ in p.per_hierarchy if x_ is not None]
                    ax.plot([x * 1.06] * len(hs), hs, ls="none", marker="_", ms=8, color=colour, alpha=0.7)
        ax.set_xscale("log")
        ax.set_xlabel("meta-training pairs (log scale)")
        ax.set_ylabel(f"{label} (points, 95% interval)")
        ax.set_title(label)
    if names:
        axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(title or "GRAM's gain against meta-training corpus size")
    return fig

