"""Aggregate finished runs (their ``summary.json``) into Markdown tables.

Base-to-new: one row per (dataset, method) with mean ± sample std over seeds, then an
"Average" row per method. As in the GRAM paper, H of any aggregated row is the harmonic mean
of the aggregated Base and New, never the mean of per-seed or per-dataset H values.
Transfer: one table per (source dataset, target set), rows = methods.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from gramprompt.eval.metrics import harmonic_mean, mean_std
from gramprompt.runs import SUMMARY

BASE2NEW = "base2new"
TRANSFER = "transfer"


def collect(dirs: Iterable[str | os.PathLike]) -> list[dict]:
    """Every ``summary.json`` under ``dirs`` (recursive, sorted, each file once)."""
    seen: set[Path] = set()
    out: list[dict] = []
    for d in dirs:
        d = Path(d)
        found = [d] if d.is_file() else sorted(d.rglob(SUMMARY))
        for path in found:
            key = path.resolve()
            if key in seen:
                continue
            seen.add(key)
            try:
                out.append(json.loads(path.read_text(encoding="utf-8")))
            except json.JSONDecodeError as e:
                raise ValueError(f"malformed summary {path}: {e}") from e
    return out


def row_label(summary: dict) -> str:
    """The table row a run belongs to: its ``label`` (e.g. "coop+gram"), else its method."""
    return summary.get("label") or summary["method"]


def protocol(summary: dict) -> str:
    return summary.get("protocol", BASE2NEW)


def _ordered(values: Iterable) -> list:
    """Unique values in order of first appearance (stable, follows run order)."""
    return list(dict.fromkeys(values))


def _cell(values: Sequence[float]) -> str:
    m, s = mean_std(values)
    return f"{m:.2f} ± {s:.2f}"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _check_group(runs: list[dict], what: str) -> None:
    """Refuse to pool runs that are not repeats of one experiment (a silent wrong mean is worse)."""
    seeds = [r.get("seed") for r in runs]
    dupes = sorted({str(s) for s in seeds if seeds.count(s) > 1})
    if dupes:
        raise ValueError(f"{what}: seed(s) {', '.join(dupes)} appear more than once")
    for key in ("backbone", "shots"):
        vals = _ordered(r.get(key) for r in runs)
        if len(vals) > 1:
            raise ValueError(f"{what}: mixes {key} values {vals}; filter the summaries first")


def _seeds(runs: list[dict]) -> str:
    return ", ".join(str(s) for s in sorted(r.get("seed") for r in runs if r.get("seed") is not None))


def _seed_group(runs: Sequence[dict], dataset: str, label: str) -> list[dict]:
    """The runs of one table cell (a dataset and a row label), checked to be repeats of one experiment."""
    group = [s for s in runs if s["dataset"] == dataset and row_label(s) == label]
    if group:
        _check_group(group, f"{dataset}/{label}")
    return group


def _means(group: Sequence[dict]) -> tuple[float, float]:
    """Mean Base and mean New over the seeds of a cell."""
    return mean_std(float(s["base"]) for s in group)[0], mean_std(float(s["new"]) for s in group)[0]


def base2new_table(summaries: Sequence[dict]) -> str:
    """Dataset | Method | Base | New | H | seeds, followed by per-method Average rows."""
    runs = [s for s in summaries if protocol(s) == BASE2NEW]
    datasets = _ordered(s["dataset"] for s in runs)
    methods = _ordered(row_label(s) for s in runs)
    rows: list[list[str]] = []
    per_method: dict[str, list[tuple[float, float]]] = {m: [] for m in methods}
    for ds in datasets:
        for m in methods:
            group = _seed_group(runs, ds, m)
            if not group:
                continue
            b, n = _means(group)
            per_method[m].append((b, n))
            rows.append([ds, m, _cell([float(s["base"]) for s in group]), _cell([float(s["new"]) for s in group]),
                         f"{harmonic_mean(b, n):.2f}", _seeds(group)])
    for m in methods:
        pairs = per_method[m]
        b = mean_std(p[0] for p in pairs)[0]
        n = mean_std(p[1] for p in pairs)[0]
        count = f"{len(pairs)} dataset" + ("s" if len(pairs) != 1 else "")
        rows.append(["Average", m, f"{b:.2f}", f"{n:.2f}", f"{harmonic_mean(b, n):.2f}", count])
    return _markdown(["Dataset", "Method", "Base", "New", "H", "seeds"], rows)


def paper_table(summaries: Sequence[dict], rows: Sequence[tuple[str, str]], datasets: Sequence[str]) -> str:
    """The GRAM paper's Table 1 layout: one row per method (``(label, title)`` pairs, in order),
    Base / New / H averaged over datasets first, then each dataset's mean over seeds.

    A row's average needs every dataset (else "–"): an average over a subset would not compare."""
    runs = [s for s in summaries if protocol(s) == BASE2NEW]
    out = []
    for label, title in rows:
        cells, means = [], []
        for ds in datasets:
            group = _seed_group(runs, ds, label)
            if not group:
                cells.append("–")
                continue
            b, n = _means(group)
            means.append((b, n))
            cells.append(f"{b:.2f} / {n:.2f} / {harmonic_mean(b, n):.2f}")
        if means and len(means) == len(datasets):
            b, n = (mean_std(m[i] for m in means)[0] for i in (0, 1))
            avg = [f"{b:.2f}", f"{n:.2f}", f"**{harmonic_mean(b, n):.2f}**"]
        else:
            avg = ["–", "–", "–"]
        out.append([title, *avg, *cells])
    header = ["Method", "Avg Base", "Avg New", "Avg H", *(f"{d} (B / N / H)" for d in datasets)]
    return _markdown(header, out)


def transfer_paper_table(summaries: Sequence[dict], rows: Sequence[tuple[str, str]], source: str,
                         targets: Sequence[str]) -> str:
    """The paper's Tables 2-5 layout: Method | source | targets... | Average over the targets, each cell
    the mean over seeds (a row's Average needs every target, else "–")."""
    runs = [s for s in summaries if protocol(s) == TRANSFER]
    out = []
    for label, title in rows:
        group = _seed_group(runs, source, label)
        if not group:
            out.append([title, *["–"] * (len(targets) + 2)])
            continue
        cells = [f"{mean_std(float(s['source']) for s in group)[0]:.2f}"]
        means = []
        for t in targets:
            if all(t in s["targets"] for s in group):
                means.append(mean_std(float(s["targets"][t]) for s in group)[0])
                cells.append(f"{means[-1]:.2f}")
            else:
                cells.append("–")
        avg = f"**{mean_std(means)[0]:.2f}**" if means and len(means) == len(targets) else "–"
        out.append([title, *cells, avg])
    return _markdown(["Method", f"{source} (source)", *targets, "Average"], out)


def transfer_table(summaries: Sequence[dict]) -> str:
    """Per source/target-set table: Method | <source> | targets... | Average (over targets).

    The Average cell is mean ± std over seeds of each seed's target average; its mean equals
    the mean of the per-target means because every run in a table has the same targets.
    """
    runs = [s for s in summaries if protocol(s) == TRANSFER]
    # Key on the target *set* so JSON key order can't split a group; columns keep run order.
    groups = _ordered((s["dataset"], frozenset(s["targets"])) for s in runs)
    tables: list[str] = []
    for source, target_set in groups:
        group = [s for s in runs if s["dataset"] == source and frozenset(s["targets"]) == target_set]
        targets = _ordered(t for s in group for t in s["targets"])
        rows = []
        for m in _ordered(row_label(s) for s in group):
            mruns = [s for s in group if row_label(s) == m]
            _check_group(mruns, f"transfer {source}/{m}")
            cells = [_cell([float(s["source"]) for s in mruns])]
            cells += [_cell([float(s["targets"][t]) for s in mruns]) for t in targets]
            avg = [mean_std(float(s["targets"][t]) for t in targets)[0] for s in mruns] if targets else []
            cells.append(_cell(avg) if avg else "–")
            rows.append([m, *cells, _seeds(mruns)])
        header = ["Method", f"{source} (source)", *targets, "Average", "seeds"]
        tables.append(f"### Transfer from {source}\n\n" + _markdown(header, rows))
    return "\n\n".join(tables)


def render(dirs: Iterable[str | os.PathLike]) -> str:
    """All tables that apply to the finished runs under ``dirs``."""
    dirs = list(dirs)
    summaries = collect(dirs)
    unknown = _ordered(p for p in map(protocol, summaries) if p not in (BASE2NEW, TRANSFER))
    if unknown:
        raise ValueError(f"unknown protocol(s) in summaries: {unknown}")
    parts = []
    if any(protocol(s) == BASE2NEW for s in summaries):
        parts.append("## Base-to-new generalization\n\n" + base2new_table(summaries))
    if any(protocol(s) == TRANSFER for s in summaries):
        parts.append("## Transfer\n\n" + transfer_table(summaries))
    if not parts:
        return "No finished runs (summary.json) found under: " + ", ".join(map(str, dirs)) + "\n"
    return "\n\n".join(parts) + "\n"


def zero_shot_table(rows: Sequence[dict]) -> str:
    """Rows of :func:`gramprompt.eval.protocols.zero_shot_all_classes`, with chance beside accuracy."""
    header = ["Dataset", "classes", "test images", "chance", "zero-shot top-1", "x chance"]
    return _markdown(header, [[r["dataset"], str(r["classes"]), str(r["test_images"]), f"{r['chance']:.2f}",
                               f"{r['zeroshot']:.2f}", f"{r['x_chance']:.2f}"] for r in rows])
