"""Pure, seeded dataset splits: base/new classes, k-shot subsets, stratified train/test.

Nothing here mutates its input; every random choice comes from an explicit seed.
"""
from __future__ import annotations

import math
import zlib
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence

import numpy as np
from sklearn.model_selection import train_test_split

from gramprompt.data.dataset import ClassificationDataset, DatasetError, Sample, require_two_classes

class NotEnoughShotsError(ValueError):
    """A class has fewer samples than the requested number of shots."""

    def __init__(self, label: int, available: int, requested: int, classname: str | None = None) -> None:
        self.label, self.available, self.requested = label, available, requested
        who = f"class {label}" if classname is None else f"class {classname!r} (label {label})"
        what_to_do = ("every class needs at least one" if available == 0 else
                      "lower --shots, or take all it has with --allow-fewer-shots (allow_fewer=True)")
        super().__init__(f"{who} has {available} sample(s) but {requested} shot(s) were asked; {what_to_do}")


def group_by_label(samples: Iterable[Sample]) -> dict[int, list[Sample]]:
    """Samples per label, each list in input order."""
    groups: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.label].append(s)
    return dict(groups)


def _relabel(samples: Sequence[Sample], mapping: dict[int, int]) -> list[Sample]:
    return [Sample(s.source, mapping[s.label]) for s in samples if s.label in mapping]


def _subset(dataset: ClassificationDataset, labels: Sequence[int]) -> ClassificationDataset:
    mapping = {old: new for new, old in enumerate(labels)}
    return ClassificationDataset(
        name=dataset.name,
        classnames=[dataset.classnames[i] for i in labels],
        train=_relabel(dataset.train, mapping),
        test=_relabel(dataset.test, mapping),
        val=_relabel(dataset.val, mapping),
    )


def base_new_split(
    dataset: ClassificationDataset,
) -> tuple[ClassificationDataset, ClassificationDataset]:
    """Base-to-new protocol: first ``ceil(n/2)`` label ids are base, the rest new.

    Each half keeps only its classes' samples and is relabelled ``0..k-1`` in label order,
    so e.g. 37 OxfordPets classes give 19 base / 18 new.
    """
    require_two_classes(dataset)
    labels = sorted(range(dataset.num_classes))
    n_base = math.ceil(len(labels) / 2)
    return _subset(dataset, labels[:n_base]), _subset(dataset, labels[n_base:])


def few_shot(
    samples: Sequence[Sample],
    shots: int,
    seed: int,
    *,
    allow_fewer: bool = False,
    classnames: Sequence[str] | None = None,
) -> list[Sample]:
    """Pick ``shots`` samples per class without replacement, reproducibly from ``seed``.

    Classes are visited in sorted label order with one ``np.random.default_rng(seed)``;
    output is grouped by class, and within a class keeps the input order.

    The expected classes are those of ``classnames`` (default ``0..max label``, since labels
    index class names; errors then name a class by its label only). A class with fewer than
    ``shots`` samples raises ``NotEnoughShotsError`` unless ``allow_fewer``, in which case all its samples are taken.
    A class with no samples at all is always an error: it would silently drop out.
    """
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    groups = group_by_label(samples)
    if any(label < 0 for label in groups):
        raise ValueError(f"labels must be non-negative, got {min(groups)}")
    if classnames is None:
        if not groups:
            return []
        num_classes = max(groups) + 1
    else:
        num_classes = len(classnames)
        if groups and max(groups) >= num_classes:
            raise ValueError(f"label {max(groups)} out of range for {num_classes} classes")
    rng = np.random.default_rng(seed)
    chosen: list[Sample] = []
    for label in range(num_classes):
        members = groups.get(label, [])
        if len(members) < shots:
            if not allow_fewer or not members:
                name = None if classnames is None else classnames[label]
                raise NotEnoughShotsError(label, len(members), shots, name)
            chosen.extend(members)
            continue
        picked = np.sort(rng.choice(len(members), size=shots, replace=False))
        chosen.extend(members[i] for i in picked)
    return chosen


def stratified_split(
    samples: Sequence[Sample], test_fraction: float = 0.3, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """Seeded stratified (train, test) split for datasets that ship without one.

    ``test_fraction`` (default 0.3, i.e. 70/30) goes to test with class proportions kept.
    Both halves keep the input order. Every class needs at least 2 samples.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    counts = {label: len(g) for label, g in group_by_label(samples).items()}
    too_small = sorted(label for label, n in counts.items() if n < 2)
    if too_small:
        raise ValueError(
            f"stratified split needs >= 2 samples per class; class(es) {too_small} have 1"
        )
    labels = [s.label for s in samples]
    n_test = math.ceil(test_fraction * len(samples))
    if min(n_test, len(samples) - n_test) < len(counts):  # sklearn's own message names neither cause nor fix
        raise DatasetError(
            f"a stratified split of {len(samples)} images into {1 - test_fraction:.0%} train / {test_fraction:.0%} "
            f"test cannot put each of the {len(counts)} classes on both sides ({n_test} test images): give the "
            "classes more images, use fewer classes, or split the folder yourself (train/ and test/ sub-folders)")
    train_idx, test_idx = train_test_split(
        np.arange(len(samples)), test_size=test_fraction, stratify=labels, random_state=seed
    )
    return ([samples[i] for i in np.sort(train_idx)], [samples[i] for i in np.sort(test_idx)])


def grouped_split(samples: Sequence[Sample], groups: Sequence[Hashable], classnames: Sequence[str],
                  test_fraction: float = 0.3, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Seeded (train, test) split that keeps every group (a stamp family, a letter in several
    fonts) on one side, so near-duplicates never straddle it. Both halves keep the input order.

    Per class, groups are drawn in a seeded order (one generator per class, seeded by ``seed``
    and the class name, so adding or dropping other classes does not move it) and go to test
    while they fit within ``ceil(test_fraction * class size)`` images; the first drawn always
    goes. Every class needs at least 2 groups, so both sides get some of it.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    members: dict[int, dict[Hashable, list[int]]] = {}
    for i, (sample, group) in enumerate(zip(samples, groups, strict=True)):
        members.setdefault(sample.label, {}).setdefault(group, []).append(i)
    test: set[int] = set()
    for label, by_group in sorted(members.items()):
        if len(by_group) < 2:
            raise ValueError(f"grouped split needs >= 2 groups per class; "
                             f"class {classnames[label]!r} has 1")
        rng = np.random.default_rng([seed, zlib.crc32(classnames[label].encode())])
        budget = math.ceil(test_fraction * sum(len(g) for g in by_group.values()))
        keys, taken = sorted(by_group), 0
        for k in rng.permutation(len(keys)):
            group = by_group[keys[k]]
            if taken == 0 or taken + len(group) <= budget:
                test.update(group)
                taken += len(group)
    return ([s for i, s in enumerate(samples) if i not in test],
            [s for i, s in enumerate(samples) if i in test])


VALIDATION_FRACTION = 0.3  # of the train split, for datasets that ship no validation split
VALIDATION_SUFFIX = "@val"


def validation_name(name: str) -> str:
    return f"{name}{VALIDATION_SUFFIX}"


def validation_view(dataset: ClassificationDataset, fraction: float = VALIDATION_FRACTION,
                    seed: int = 0) -> ClassificationDataset:
    """The dataset to choose settings on: its ``val`` split as the test split, or, when it ships none, a
    seeded stratified ``fraction`` of its train split (the rest stays the train split). Its test images
    are never a reported table's test images, so a setting chosen on it is chosen without the test split.

    The name gets ``@val`` (feature caches and run folders keep the two apart; the prompt template
    is the dataset's own)."""
    if dataset.val:
        train, val = list(dataset.train), list(dataset.val)
    else:
        train, val = stratified_split(dataset.train, fraction, seed)
    return ClassificationDataset(name=validation_name(dataset.name), classnames=list(dataset.classnames),
                                 train=train, test=val)
