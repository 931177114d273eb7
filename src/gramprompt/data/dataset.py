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
