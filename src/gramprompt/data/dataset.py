"""The one in-memory form every classification dataset is loaded into."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class DatasetError(ValueError):
    """A dataset folder, split file or spec is missing or malformed; the message names the path."""


@dataclass(frozen=True)
class Sample:
    """One labelled image: a file path, or an in-memory uint8 array (H, W) or (H, W, 3)."""

    source: str | np.ndarray
    label: int


@dataclass
class ClassificationDataset:
    """Class names plus train/val/test samples; labels index ``classnames``.

    ``name`` is the canonical dataset name (e.g. ``"OxfordPets"``, ``"digits"``); prompt
    templates are looked up by it.
    """

    name: str
    classnames: list[str]
    train: list[Sample]
    test: list[Sample]
    val: list[Sample] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


def require_two_classes(dataset: ClassificationDataset, source: str | None = None) -> None:
    """Refuse a dataset with fewer than 2 classes (``source``: where it was read from).

    Classification is meaningless with one class, and base-to-new would otherwise fail much
    later on its empty "new" half with a message that does not say why.
    """
    if dataset.num_classes >= 2:
        return
    found = f"only one class, {dataset.classnames[0]!r}" if dataset.classnames else "no class"
    where = f" ({source})" if source else ""
    raise DatasetError(f"dataset {dataset.name!r}{where} has {found}: base-to-new and classification "
                       "need at least 2 classes (e.g. one image folder per class)")
