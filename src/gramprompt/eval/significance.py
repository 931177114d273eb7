"""Paired, hierarchical bootstrap of the difference in average H between two table rows.

A base-to-new row's average H has three sources of chance: the test images (a finite sample of each
dataset's test distribution), the few-shot seeds (which training images, which initialization), and, for
GRAM rows, the CHC hierarchy its theta*/phi* were meta-trained on (one hierarchy's theta* serves every
dataset). A replicate resamples all three with replacement, paired wherever the two rows share the source:

- test images per dataset and split: the same indices for both rows, every seed and hierarchy (runs of a
  dataset are evaluated on the same seeded test subset, so image i is the same image in every run);
- seeds per dataset: the same seed indices for both rows (seed k of both rows saw the same few shots);
- hierarchies per row: shared across datasets, drawn separately for each row (a base row has one).

Each row's Base (New) on a dataset is the mean correctness over the resampled hierarchies x seeds x images;
Base and New are averaged over datasets and H is their harmonic mean, as the tables define it. The statistic
is H_a - H_b; the interval is the bootstrap percentile interval. Pure numpy, memory bounded by drawing the
replicates in chunks, deterministic given the generator.

Transfer rows (Tables 2-5) are compared on their mean accuracy over the targets
(:func:`paired_mean_bootstrap`): the same resampling, except that one tuned run per seed is evaluated on
every target, so the seed draw is shared by the targets, and the statistic is the difference of the
target-averaged accuracies.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

# dataset -> (base, new) correctness, each a bool array of shape (hierarchies, seeds, images).
RowCells = Mapping[str, tuple[np.ndarray, np.ndarray]]
SPLITS = ("base", "new")

# Replicates per chunk are chosen so that one chunk's image counts hold about this many numbers.
_CHUNK_NUMBERS = 2_000_000


class _Interval:
    """What a difference with a bootstrap interval (``low``, ``high``) says about its sign."""

    @property
    def side(self) -> int:
        """+1 if the interval lies above 0, -1 if below, 0 if it contains 0."""
        return 1 if self.low > 0 else -1 if self.high < 0 else 0


@dataclass(frozen=True)
class HDiff(_Interval):
    """Row a minus row b: point estimates on the data (percent) and the bootstrap intervals of dH (``low``,
    ``high``, what ``side`` reads) and of dBase and dNew (from the same replicates: a trade of Base for New
    is a claim too)."""

    d_base: float
    d_new: float
    d_h: float
    low: float
    high: float
    level: float
    replicates: int
    hierarchies: tuple[int, int]  # per row
    seeds: int  # summed over datasets (the seeds both rows have)
    base_interval: tuple[float, float]
    new_interval: tuple[float, float]


@dataclass(frozen=True)
class Indices:
    """Resampling indices of a block of replicates, drawn once so that implementations can share them."""

    hierarchies: tuple[np.ndarray, np.ndarray]  # per row: (B, hierarchies of the row)
    seeds: dict[str, np.ndarray]  # dataset -> (B, seeds)
    images: dict[tuple[str, str], np.ndarray]  # (dataset, split) -> (B, images)


def _h(base: np.ndarray | float, new: np.ndarray | float) -> np.ndarray:
    """Harmonic mean, elementwise, 0 where Base + New = 0 (as ``metrics.harmonic_mean``)."""
    base, new = np.asarray(base, dtype=float), np.asarray(new, dtype=float)
    total = base + new
    return np.divide(2.0 * base * new, total, out=np.zeros_like(total), where=total != 0)


def check_cells(a: RowCells, b: RowCells) -> None:
    """Refuse data a paired bootstrap cannot pair: the same datasets, seeds and images for both rows, and
    each row's hierarchy count the same on every dataset (a hierarchy's resample is shared across them)."""
    if not a or set(a) != set(b):
        raise ValueError(f"both rows need the same, non-empty datasets; got {sorted(a)} and {sorted(b)}")
    for row, cells in (("a", a), ("b", b)):
        counts = {ds: [np.shape(c) for c in pair] for ds, pair in cells.items()}
        if any(len(s) != 3 or 0 in s for shapes in counts.values() for s in shapes):
            raise ValueError(f"row {row}: every cell must be a non-empty (hierarchies, seeds, images) array: {counts}")
        if len({s[0] for shapes in counts.values() for s in shapes}) != 1:
            raise ValueError(f"row {row}: hierarchy counts differ across datasets or splits: {counts}")
        if any(shapes[0][1] != shapes[1][1] for shapes in counts.values()):
            raise ValueError(f"row {row}: base and new have different seed counts: {counts}")
    for ds in a:
        for i, split in enumerate(SPLITS):
            if np.shape(a[ds][i])[1:] != np.shape(b[ds][i])[1:]:
                raise ValueError(f"{ds}/{split}: rows differ in (seeds, images): {np.shape(a[ds][i])[1:]} vs "
                                 f"{np.shape(b[ds][i])[1:]}; paired runs need the same seeds and test images")


def _hierarchies(a: RowCells, b: RowCells) -> tuple[int, int]:
    """Each row's hierarchy count (the same on every dataset: see :func:`check_cells`)."""
    return next(iter(a.values()))[0].shape[0], next(iter(b.values()))[0].shape[0]


def averages(cells: RowCells) -> tuple[float, float]:
    """A row's Base and New in percent: per dataset the mean over hierarchies x seeds x images, then the mean
    over datasets."""
    per = [[float(np.mean(c)) for c in pair] for pair in cells.values()]
    return 100.0 * float(np.mean([p[0] for p in per])), 100.0 * float(np.mean([p[1] for p in per]))


def draw_indices(a: RowCells, b: RowCells, n: int, rng: np.random.Generator) -> Indices:
    """Indices of ``n`` replicates: per row its hierarchies, per dataset the seeds, per dataset and split
    the test images (in this order, datasets sorted, so a seed fixes every draw)."""
    hier = tuple(rng.integers(0, k, (n, k)) for k in _hierarchies(a, b))
    seeds, images = {}, {}
    for ds in sorted(a):
        s = a[ds][0].shape[1]
        seeds[ds] = rng.integers(0, s, (n, s))
        for i, split in enumerate(SPLITS):
            m = a[ds][i].shape[2]
            images[ds, split] = rng.integers(0, m, (n, m))
    return Indices(hier, seeds, images)


def _counts(idx: np.ndarray, size: int) -> np.ndarray:
    """How often each of ``size`` items is drawn in each replicate: (B, size) from (B, draws) indices."""
    n = idx.shape[0]
    flat = (idx + size * np.arange(n)[:, None]).ravel()
    return np.bincount(flat, minlength=n * size).reshape(n, size).astype(float)


def replicate_stats(a: RowCells, b: RowCells, idx: Indices) -> np.ndarray:
    """(B, 3): dBase, dNew and dH (percent) of each replicate. Resampled means are weighted sums with draw
    counts as weights: one matrix product per dataset and split instead of a gather per replicate. Sums
    of 0/1 values with integer weights are exact in float64, so identical rows give exactly 0."""
    n = idx.hierarchies[0].shape[0]
    sums = np.zeros((2, 2, n))  # row, split, replicate: sum over datasets of the resampled means
    w_h = [_counts(h, h.shape[1]) for h in idx.hierarchies]
    for ds in sorted(a):
        w_s = _counts(idx.seeds[ds], idx.seeds[ds].shape[1])
        for i, split in enumerate(SPLITS):
            w_i = _counts(idx.images[ds, split], idx.images[ds, split].shape[1])
            ca, cb = a[ds][i], b[ds][i]
            flat = np.concatenate([ca.reshape(-1, ca.shape[2]), cb.reshape(-1, cb.shape[2])]).astype(float)
            per = flat @ w_i.T  # (hierarchies x seeds of both rows, B): image-weighted sums
            split_at = ca.shape[0] * ca.shape[1]
            for r, (c, part) in enumerate(((ca, per[:split_at]), (cb, per[split_at:]))):
                total = np.einsum("hsb,bh,bs->b", part.reshape(c.shape[0], c.shape[1], n), w_h[r], w_s)
                sums[r, i] += total / c.size
    means = 100.0 * sums / len(a)
    d_base, d_new = means[0, 0] - means[1, 0], means[0, 1] - means[1, 1]
    d_h = _h(means[0, 0], means[0, 1]) - _h(means[1, 0], means[1, 1])
    return np.stack([d_base, d_new, d_h], axis=1)


def _check_arguments(replicates: int, level: float) -> None:
    if replicates < 1:
        raise ValueError(f"replicates must be >= 1, got {replicates}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _percentile_interval(stats: list[np.ndarray] | np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(np.concatenate(stats) if isinstance(stats, list) else stats, [tail, 1.0 - tail])
    return float(low), float(high)


def paired_h_bootstrap(a: RowCells, b: RowCells, *, replicates: int = 2000, level: float = 0.95,
                       rng: np.random.Generator | int = 0) -> HDiff:
    """H(a) - H(b) over the datasets of ``a`` and ``b`` with its paired bootstrap percentile interval.

    ``rng``: a Generator (used as is) or a seed (default 0: the same interval on every call)."""
    _check_arguments(replicates, level)
    check_cells(a, b)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    (ba, na), (bb, nb) = averages(a), averages(b)
    widest = max(c.shape[2] for pair in a.values() for c in pair)
    chunk = max(1, min(replicates, _CHUNK_NUMBERS // widest))
    stats = []
    for start in range(0, replicates, chunk):
        idx = draw_indices(a, b, min(chunk, replicates - start), rng)
        stats.append(replicate_stats(a, b, idx))
    d_base, d_new, d_h = (_percentile_interval(column, level) for column in np.concatenate(stats).T)
    return HDiff(d_base=ba - bb, d_new=na - nb, d_h=float(_h(ba, na) - _h(bb, nb)), low=d_h[0],
                 high=d_h[1], level=level, replicates=replicates, hierarchies=_hierarchies(a, b),
                 seeds=sum(pair[0].shape[1] for pair in a.values()), base_interval=d_base, new_interval=d_new)


# --------------------------------------------------------------------------- transfer: mean over targets

# target -> correctness of shape (hierarchies, seeds, images); seed k is the same run on every target.
TargetCells = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class MeanDiff(_Interval):
    """Row a minus row b in accuracy averaged over the targets (percent), with its bootstrap interval."""

    d: float
    low: float
    high: float
    level: float
    replicates: int
    hierarchies: tuple[int, int]  # per row
    seeds: int


@dataclass(frozen=True)
class TargetIndices:
    """Resampling indices of a block of transfer replicates."""

    hierarchies: tuple[np.ndarray, np.ndarray]  # per row: (B, hierarchies of the row)
    seeds: np.ndarray  # (B, seeds), shared by every target
    images: dict[str, np.ndarray]  # target -> (B, images)


def check_target_cells(a: TargetCells, b: TargetCells) -> None:
    """Refuse what cannot be paired: the same targets, and per target the same (seeds, images) for both
    rows; each row's hierarchy count, and the seed count, the same on every target."""
    if not a or set(a) != set(b):
        raise ValueError(f"both rows need the same, non-empty targets; got {sorted(a)} and {sorted(b)}")
    for row, cells in (("a", a), ("b", b)):
        shapes = {t: np.shape(c) for t, c in cells.items()}
        if any(len(s) != 3 or 0 in s for s in shapes.values()):
            raise ValueError(f"row {row}: every cell must be a non-empty (hierarchies, seeds, images) array: {shapes}")
        if len({s[:2] for s in shapes.values()}) != 1:
            raise ValueError(f"row {row}: hierarchy or seed counts differ across targets: {shapes}")
    for t in a:
        if np.shape(a[t])[1:] != np.shape(b[t])[1:]:
            raise ValueError(f"{t}: rows differ in (seeds, images): {np.shape(a[t])[1:]} vs {np.shape(b[t])[1:]}; "
                             "paired runs need the same seeds and test images")


def target_average(cells: TargetCells) -> float:
    """A row's accuracy in percent: per target the mean over hierarchies x seeds x images, then the mean over
    targets."""
    return 100.0 * float(np.mean([np.mean(c) for c in cells.values()]))


def draw_target_indices(a: TargetCells, b: TargetCells, n: int, rng: np.random.Generator) -> TargetIndices:
    """Indices of ``n`` replicates: per row its hierarchies, the seeds, per target the images (targets sorted)."""
    first_a, first_b = next(iter(a.values())), next(iter(b.values()))
    hier = tuple(rng.integers(0, k, (n, k)) for k in (first_a.shape[0], first_b.shape[0]))
    seeds = rng.integers(0, first_a.shape[1], (n, first_a.shape[1]))
    images = {t: rng.integers(0, a[t].shape[2], (n, a[t].shape[2])) for t in sorted(a)}
    return TargetIndices(hier, seeds, images)


def target_replicate_stats(a: TargetCells, b: TargetCells, idx: TargetIndices) -> np.ndarray:
    """(B,): the difference of the target-averaged accuracies (percent) of each replicate, by draw-count
    weights as :func:`replicate_stats`."""
    n = idx.seeds.shape[0]
    sums = np.zeros((2, n))
    w_h = [_counts(h, h.shape[1]) for h in idx.hierarchies]
    w_s = _counts(idx.seeds, idx.seeds.shape[1])
    for t in sorted(a):
        w_i = _counts(idx.images[t], idx.images[t].shape[1])
        for r, c in enumerate((a[t], b[t])):
            per = c.reshape(-1, c.shape[2]).astype(float) @ w_i.T  # (hierarchies x seeds, B)
            sums[r] += np.einsum("hsb,bh,bs->b", per.reshape(c.shape[0], c.shape[1], n), w_h[r], w_s) / c.size
    return 100.0 * (sums[0] - sums[1]) / len(a)


def paired_mean_bootstrap(a: TargetCells, b: TargetCells, *, replicates: int = 2000, level: float = 0.95,
                          rng: np.random.Generator | int = 0) -> MeanDiff:
    """Target-averaged accuracy of ``a`` minus that of ``b``, with its paired bootstrap percentile interval."""
    _check_arguments(replicates, level)
    check_target_cells(a, b)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    chunk = max(1, min(replicates, _CHUNK_NUMBERS // max(c.shape[2] for c in a.values())))
    stats = [target_replicate_stats(a, b, draw_target_indices(a, b, min(chunk, replicates - start), rng))
             for start in range(0, replicates, chunk)]
    low, high = _percentile_interval(stats, level)
    first_a, first_b = next(iter(a.values())), next(iter(b.values()))
    return MeanDiff(d=target_average(a) - target_average(b), low=low, high=high, level=level,
                    replicates=replicates, hierarchies=(first_a.shape[0], first_b.shape[0]), seeds=first_a.shape[1])
