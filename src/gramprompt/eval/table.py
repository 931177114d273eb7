"""Aggregate finished runs (their ``summary.json``) into Markdown tables.

Base-to-new: one row per (dataset, method) with mean ± sample std over seeds, then an
"Average" row per method. As in the GRAM paper, H of any aggregated row is the harmonic mean
of the aggregated Base and New, never the mean of per-seed or per-dataset H values.
Transfer: one table per (source dataset, target set), rows = methods.

The runs of a cell are repeats over seeds and, for GRAM rows of a multi-hierarchy experiment, over CHC
hierarchies (a summary's ``hierarchy``): (hierarchy, seed) identifies a repeat. Significance tables compare a
row with its base row by a paired bootstrap over test images, seeds and hierarchies (``eval.significance``).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from gramprompt.eval.metrics import harmonic_mean, mean_std
from gramprompt.eval.significance import HDiff, MeanDiff, RowCells, paired_h_bootstrap, paired_mean_bootstrap
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


def hierarchy(summary: dict) -> int | None:
    """The CHC hierarchy (its clustering seed) a run's theta* was meta-trained on; None: no hierarchy
    (a base row, or an experiment with a single hierarchy)."""
    return summary.get("hierarchy")


def repeat(summary: dict) -> str:
    """What identifies a run among the repeats of one cell: its seed, and its hierarchy if it has one."""
    h = hierarchy(summary)
    return str(summary.get("seed")) if h is None else f"{summary.get('seed')} (hierarchy {h})"


def _check_group(runs: list[dict], what: str) -> None:
    """Refuse to pool runs that are not repeats of one experiment (a silent wrong mean is worse).
    A repeat is a (hierarchy, seed): 3 hierarchies x 5 seeds are 15 runs of one cell."""
    keys = [repeat(r) for r in runs]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ValueError(f"{what}: seed(s) {', '.join(dupes)} appear more than once")
    if len({hierarchy(r) is None for r in runs}) > 1:
        raise ValueError(f"{what}: mixes runs with and without a 'hierarchy'; filter the summaries first")
    for key in ("backbone", "shots"):
        vals = _ordered(r.get(key) for r in runs)
        if len(vals) > 1:
            raise ValueError(f"{what}: mixes {key} values {vals}; filter the summaries first")


def _seeds(runs: list[dict]) -> str:
    """The seeds of a cell, and its hierarchies if it has any."""
    seeds = ", ".join(str(s) for s in sorted({r.get("seed") for r in runs if r.get("seed") is not None}))
    hs = _hierarchies(runs)
    return seeds + (f" (hierarchies {', '.join(map(str, hs))})" if hs else "")


def _hierarchies(runs: Iterable[dict]) -> list[int]:
    """The hierarchies among ``runs``, sorted (none for runs without one)."""
    return sorted({h for h in map(hierarchy, runs) if h is not None})


def _seed_group(runs: Sequence[dict], dataset: str, label: str) -> list[dict]:
    """The runs of one table cell (a dataset and a row label), checked to be repeats of one experiment."""
    group = [s for s in runs if s["dataset"] == dataset and row_label(s) == label]
    if group:
        _check_group(group, f"{dataset}/{label}")
    return group


def _means(group: Sequence[dict]) -> tuple[float, float]:
    """Mean Base and mean New over the runs (seeds, hierarchies) of a cell."""
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


def _average(runs: Sequence[dict], label: str, datasets: Sequence[str],
             keep: int | None = None) -> tuple[float, float] | None:
    """A row's Base and New averaged over ``datasets`` (each the mean over its cell's runs, only hierarchy
    ``keep``'s if given); None unless every dataset has runs: an average over a subset would not compare."""
    means = []
    for ds in datasets:
        group = [s for s in _seed_group(runs, ds, label) if keep is None or hierarchy(s) == keep]
        if not group:
            return None
        means.append(_means(group))
    if not means:
        return None
    return mean_std(m[0] for m in means)[0], mean_std(m[1] for m in means)[0]


def _hierarchy_spread(runs: Sequence[dict], label: str, datasets: Sequence[str]) -> str:
    """min–max over a row's hierarchies of its average H, each from that hierarchy's runs only ("–": none)."""
    hs = [harmonic_mean(*avg) for h in _hierarchies(s for s in runs if row_label(s) == label)
          if (avg := _average(runs, label, datasets, keep=h)) is not None]
    return f"{min(hs):.2f}–{max(hs):.2f} (n={len(hs)})" if hs else "–"


def paper_table(summaries: Sequence[dict], rows: Sequence[tuple[str, str]], datasets: Sequence[str]) -> str:
    """The GRAM paper's Table 1 layout: one row per method (``(label, title)`` pairs, in order),
    Base / New / H averaged over datasets first, then each dataset's mean over its runs (seeds, and
    hierarchies for GRAM rows).

    A row's average needs every dataset (else "–"): an average over a subset would not compare. When a row
    has runs on several hierarchies, a column "H over hierarchies" shows the spread (min–max) of each row's
    per-hierarchy average H: the hierarchy alone moves GRAM rows."""
    runs = [s for s in summaries if protocol(s) == BASE2NEW]
    labels = {label for label, _ in rows}
    spread = any(len(_hierarchies(s for s in runs if row_label(s) == lb and s["dataset"] in datasets)) > 1
                 for lb in labels)
    out = []
    for label, title in rows:
        cells = []
        for ds in datasets:
            group = _seed_group(runs, ds, label)
            if not group:
                cells.append("–")
                continue
            b, n = _means(group)
            cells.append(f"{b:.2f} / {n:.2f} / {harmonic_mean(b, n):.2f}")
        avg = _average(runs, label, datasets)
        avg_cells = ["–", "–", "–"] if avg is None else [f"{avg[0]:.2f}", f"{avg[1]:.2f}",
                                                          f"**{harmonic_mean(*avg):.2f}**"]
        extra = [_hierarchy_spread(runs, label, datasets)] if spread else []
        out.append([title, *avg_cells, *extra, *cells])
    header = ["Method", "Avg Base", "Avg New", "Avg H", *(["H over hierarchies"] if spread else []),
              *(f"{d} (B / N / H)" for d in datasets)]
    return _markdown(header, out)


def spread_table(summaries: Sequence[dict], rows: Sequence[tuple[str, str]], datasets: Sequence[str]) -> str:
    """The seed spread of Tables 1, 6 and 7: per row, the H of each seed's Base and New averaged over ``datasets``, as
    mean ± std over seeds; a row over several hierarchies gets one cell per hierarchy (``h0: ...; h1: ...``). A seed
    counts only where it has every dataset (an average over a subset would not compare)."""
    runs = [s for s in summaries if protocol(s) == BASE2NEW]
    out = []
    for label, title in rows:
        group = [s for ds in datasets for s in _seed_group(runs, ds, label)]
        cells = []
        for h in _hierarchies(group) or [None]:
            per_seed: dict[object, dict[str, dict]] = {}
            for s in group:
                if hierarchy(s) == h:
                    per_seed.setdefault(s.get("seed"), {})[s["dataset"]] = s
            hs = [harmonic_mean(float(np.mean([float(by[d]["base"]) for d in datasets])),
                                float(np.mean([float(by[d]["new"]) for d in datasets])))
                  for by in per_seed.values() if all(d in by for d in datasets)]
            if hs:
                mean, std = mean_std(hs)
                cells.append(("" if h is None else f"h{h}: ") + f"{mean:.2f} ± {std:.2f} (n={len(hs)})")
        if cells:
            out.append([title, "; ".join(cells)])
    return _markdown(["Method", "Avg H, mean ± std over seeds"], out)


# Where a summary keeps per-image correctness: base-to-new splits, or a transfer run's source and targets.
SPLIT_PARTS = (("base",), ("new",))


def transfer_parts(targets: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    return (("source",), *(("targets", t) for t in targets))


def _at(summary: dict, record: str, part: tuple[str, ...]):
    """``summary[record][part[0]][part[1]]...``, or None where a level is missing."""
    value = summary.get(record) or {}
    for key in part:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _bits(summary: dict, part: tuple[str, ...]) -> np.ndarray | None:
    """A run's per-image correctness at ``part`` of its ``correct`` record (e.g. ("base",) or ("targets",
    "digits")) as a bool array; None if the summary predates it."""
    bits = _at(summary, "correct", part)
    if not isinstance(bits, str) or not bits:
        return None
    codes = np.frombuffer(bits.encode("ascii", "replace"), dtype=np.uint8)
    if ((codes != ord("0")) & (codes != ord("1"))).any():
        raise ValueError(f"{summary.get('dataset')}/{row_label(summary)} seed {summary.get('seed')}: "
                         f"'correct.{'.'.join(part)}' must be a string of 0s and 1s")
    return codes == ord("1")


def _row_cells(runs: Sequence[dict], label: str, datasets: Sequence[str], seeds: dict[str, list],
               hs: list[int | None], parts: Sequence[tuple[str, ...]]) -> dict[str, tuple[np.ndarray, ...]] | str:
    """dataset -> one correctness array per part, of shape (hierarchies ``hs``, ``seeds[dataset]``, images)."""
    out = {}
    for ds in datasets:
        by_key = {(hierarchy(s), s.get("seed")): s for s in _seed_group(runs, ds, label)}
        arrays = []
        for part in parts:
            where = "/".join(part)
            bits = [[_bits(by_key[h, k], part) for k in seeds[ds]] for h in hs]
            if any(b is None for row in bits for b in row):
                return f"{label} on {ds}/{where}: runs without per-image correctness (summaries written before it was stored)"
            if len({b.size for row in bits for b in row}) != 1:
                return f"{label} on {ds}/{where}: runs evaluated on different numbers of test images"
            arrays.append(np.array(bits))
        out[ds] = tuple(arrays)
    return out


def _pair_cells(runs: Sequence[dict], a: str, b: str, datasets: Sequence[str], keep: int | None = None,
                parts: Sequence[tuple[str, ...]] = SPLIT_PARTS) -> tuple[RowCells, RowCells] | str:
    """Both rows' correctness arrays (dataset -> one per part) over the repeats they can be paired on, or why
    there are none.

    Each row keeps the hierarchies it has on every dataset; ``keep``: row ``a`` keeps that hierarchy only,
    and so does ``b`` if it has it. Each dataset keeps the seeds that both rows have on every kept hierarchy."""
    if not datasets:
        return "no dataset"
    groups = {lb: {ds: _seed_group(runs, ds, lb) for ds in datasets} for lb in (a, b)}
    hs: dict[str, list[int | None]] = {}
    for lb, by_ds in groups.items():
        missing = [ds for ds, g in by_ds.items() if not g]
        if missing:
            return f"no runs of {lb} on {', '.join(missing)}"
        common = set.intersection(*({hierarchy(s) for s in g} for g in by_ds.values()))
        if keep is not None and (keep in common or lb == a):
            common &= {keep}
        if not common:
            return f"{lb}: no hierarchy{'' if keep is None else f' {keep}'} has runs on every dataset"
        hs[lb] = sorted(common, key=lambda h: (h is None, h))
    seeds = {}
    for ds in datasets:
        sets = [{s.get("seed") for s in groups[lb][ds] if hierarchy(s) == h} for lb in (a, b) for h in hs[lb]]
        seeds[ds] = sorted(set.intersection(*sets))
        if not seeds[ds]:
            return f"no seed of {ds} has runs of both rows"
    for ds in datasets:  # runs evaluated on other test images (a changed split or loader) cannot be paired
        paired = [s for lb in (a, b) for s in groups[lb][ds] if hierarchy(s) in hs[lb] and s.get("seed") in seeds[ds]]
        for part in parts:
            digests = {_at(s, "test_sha256", part) for s in paired} - {None}
            if len(digests) > 1:
                return f"{ds}/{'/'.join(part)}: the runs were evaluated on different test images (test_sha256 differs)"
    cells = [_row_cells(runs, lb, datasets, seeds, hs[lb], parts) for lb in (a, b)]
    for c in cells:
        if isinstance(c, str):
            return c
    for ds in datasets:
        for i, part in enumerate(parts):
            if cells[0][ds][i].shape[2] != cells[1][ds][i].shape[2]:
                return f"{ds}/{'/'.join(part)}: the rows were evaluated on different numbers of test images"
    return cells[0], cells[1]


def _interval(d: HDiff) -> str:
    return _with_interval(d.d_h, (d.low, d.high))


def _with_interval(point: float, interval: tuple[float, float]) -> str:
    return f"{point:+.2f} [{interval[0]:+.2f}, {interval[1]:+.2f}]"


def _holds(diffs: Sequence[HDiff | MeanDiff | None]) -> str:
    """'yes (> 0)' / 'yes (< 0)' if every per-hierarchy interval excludes 0 on the same side."""
    if not diffs or any(d is None for d in diffs):
        return "n/a"
    sides = {d.side for d in diffs}
    if len(sides) == 1 and 0 not in sides:
        return "yes (> 0)" if sides == {1} else "yes (< 0)"
    return "no"


def compare_rows(runs: Sequence[dict], label: str, base: str, datasets: Sequence[str], *, replicates: int = 2000,
                 level: float = 0.95, seed: int = 0) -> tuple[HDiff | str, list[tuple[int, HDiff | None]]]:
    """Row ``label`` minus row ``base`` on ``datasets``: the paired bootstrap pooled over hierarchies (or why
    the rows cannot be paired), and per hierarchy of the row."""
    pooled = _pair_cells(runs, label, base, datasets)
    if isinstance(pooled, str):
        return pooled, []
    d = paired_h_bootstrap(*pooled, replicates=replicates, level=level, rng=seed)
    per: list[tuple[int, HDiff | None]] = []
    for h in _hierarchies(s for s in runs if row_label(s) == label and s["dataset"] in datasets):
        cells = _pair_cells(runs, label, base, datasets, keep=h)
        per.append((h, None if isinstance(cells, str) else
                    paired_h_bootstrap(*cells, replicates=replicates, level=level, rng=seed)))
    return d, per


def significance_table(summaries: Sequence[dict], comparisons: Sequence[tuple[str, str, str, str]],
                       datasets: Sequence[str], *, replicates: int = 2000, level: float = 0.95,
                       seed: int = 0) -> str:
    """Each comparison ``(row label, row title, base label, base title)``: the row's Base, New and average H
    minus its base row's, each with its paired bootstrap interval (``eval.significance``), pooled over
    hierarchies; H's also per hierarchy of the row, and whether it holds on every hierarchy.

    Comparisons without per-image correctness (old summaries) show the differences of the table averages
    and "–" for intervals; the reasons are listed under the table."""
    runs = [s for s in summaries if protocol(s) == BASE2NEW]
    pct = f"{100 * level:g}%"
    out, notes = [], []
    for label, title, base, base_title in comparisons:
        d, per = compare_rows(runs, label, base, datasets, replicates=replicates, level=level, seed=seed)
        if isinstance(d, str):
            notes.append(f"{title} vs {base_title}: {d}")
            a, b = _average(runs, label, datasets), _average(runs, base, datasets)
            points = ["–"] * 2 if a is None or b is None else [f"{a[0] - b[0]:+.2f} [–]", f"{a[1] - b[1]:+.2f} [–]"]
            h = "–" if a is None or b is None else f"{harmonic_mean(*a) - harmonic_mean(*b):+.2f} [–]"
            out.append([title, base_title, *points, h, "–", "n/a"])
            continue
        per_cell = "; ".join(f"h{h}: {_interval(x) if x else '–'}" for h, x in per) or "–"
        out.append([title, base_title, _with_interval(d.d_base, d.base_interval),
                    _with_interval(d.d_new, d.new_interval), _interval(d), per_cell, _holds([x for _, x in per])])
    header = ["Row", "vs", f"ΔBase [{pct} interval]", f"ΔNew [{pct} interval]", f"ΔH [{pct} interval]",
              f"per hierarchy ΔH [{pct} interval]", "holds on every hierarchy"]
    legend = (f"Paired bootstrap, {replicates} replicates (seed {seed}), {pct} percentile intervals: each replicate "
              f"resamples the test images of every dataset and split and the seeds of every dataset (the same "
              f"for both rows), and each row's CHC hierarchies (shared across datasets); H is the harmonic mean "
              f"of the dataset-averaged Base and New; per hierarchy: the row's runs on that hierarchy only.")
    return "\n\n".join([_markdown(header, out), legend, *(["Not tested: " + "; ".join(notes)] if notes else [])])


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


def transfer_spread_table(summaries: Sequence[dict], rows: Sequence[tuple[str, str]], source: str,
                          targets: Sequence[str]) -> str:
    """The seed spread of Tables 2-5: per row, the accuracy averaged over ``targets`` as mean ± std over seeds; a
    row over several hierarchies gets one cell per hierarchy (``h0: ...; h1: ...``), which Table 1's pooled
    cells hide."""
    runs = [s for s in summaries if protocol(s) == TRANSFER]
    out = []
    for label, title in rows:
        group = [s for s in _seed_group(runs, source, label) if all(t in s["targets"] for t in targets)]
        if not group or not targets:
            continue
        cells = []
        for h in _hierarchies(group) or [None]:
            mean, std = mean_std(np.mean([float(s["targets"][t]) for t in targets])
                                 for s in group if hierarchy(s) == h)
            cells.append(("" if h is None else f"h{h}: ") + f"{mean:.2f} ± {std:.2f}")
        out.append([title, "; ".join(cells), _seeds(group)])
    return _markdown(["Method", "Average over the targets, mean ± std over seeds", "seeds"], out)


def transfer_significance_table(summaries: Sequence[dict], comparisons: Sequence[tuple[str, str, str, str]],
                                source: str, targets: Sequence[str], *, replicates: int = 2000,
                                level: float = 0.95, seed: int = 0) -> str:
    """Tables 2-5's tests: each comparison ``(row label, row title, base label, base title)`` gives the row's
    source accuracy and its accuracy averaged over ``targets`` minus the base row's, each with a paired
    bootstrap interval (``eval.significance.paired_mean_bootstrap``), the target average also per hierarchy
    of the row, and whether it holds on every hierarchy. Without per-image correctness: "–", and why."""
    runs = [s for s in summaries if protocol(s) == TRANSFER]
    parts = transfer_parts(targets)
    pct = f"{100 * level:g}%"

    def diffs(cells: tuple[RowCells, RowCells]) -> tuple[MeanDiff, MeanDiff]:
        (a,), (b,) = cells[0].values(), cells[1].values()  # one dataset: the source
        pair = [({"source": a[0]}, {"source": b[0]}), (dict(zip(targets, a[1:])), dict(zip(targets, b[1:])))]
        return tuple(paired_mean_bootstrap(x, y, replicates=replicates, level=level, rng=seed) for x, y in pair)

    def interval(d: MeanDiff) -> str:
        return f"{d.d:+.2f} [{d.low:+.2f}, {d.high:+.2f}]"

    out, notes = [], []
    for label, title, base, base_title in comparisons:
        pooled = _pair_cells(runs, label, base, [source], parts=parts) if targets else "no targets"
        if isinstance(pooled, str):
            notes.append(f"{title} vs {base_title}: {pooled}")
            out.append([title, base_title, "–", "–", "–", "n/a"])
            continue
        d_source, d_targets = diffs(pooled)
        per: list[tuple[int, MeanDiff | None]] = []
        for h in _hierarchies(s for s in runs if row_label(s) == label and s["dataset"] == source):
            cells = _pair_cells(runs, label, base, [source], keep=h, parts=parts)
            per.append((h, None if isinstance(cells, str) else diffs(cells)[1]))
        per_cell = "; ".join(f"h{h}: {interval(x) if x else '–'}" for h, x in per) or "–"
        out.append([title, base_title, interval(d_source), interval(d_targets), per_cell,
                    _holds([x for _, x in per])])
    header = ["Row", "vs", f"ΔSource [{pct} interval]", f"ΔAverage over targets [{pct} interval]",
              f"per hierarchy ΔAverage [{pct} interval]", "holds on every hierarchy"]
    legend = (f"Paired bootstrap, {replicates} replicates (seed {seed}), {pct} percentile intervals: each replicate "
              f"resamples the test images of every target, the seeds (one tuned run per seed serves every "
              f"target) and each row's CHC hierarchies; the statistic is the difference of the accuracies "
              f"averaged over the targets (the Average column).")
    return "\n\n".join([_markdown(header, out), legend, *(["Not tested: " + "; ".join(notes)] if notes else [])])


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
