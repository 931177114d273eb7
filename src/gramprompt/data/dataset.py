"""The one in-memory form every classification dataset is loaded into."""
from __future__ import annotations

import hashlib
import os
import unicodedata
from collections.abc import Sequence
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


def prompt_key(name: str) -> str:
    """What a class name is to a text encoder's tokenizer: Unicode-normalized (NFKC), case-folded, runs of
    whitespace as one space (CLIP's tokenizer lower-cases, fixes Unicode and collapses whitespace). Two
    class names with one key get identical prompts, so no classifier can tell them apart."""
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


def samples_sha256(samples: Sequence[Sample]) -> str:
    """A digest of which images, with which labels, in which order: file contents (not paths, which differ
    between machines), array or encoded bytes. Runs record it for their test images, so runs evaluated on
    other images (a changed split or loader) are not paired in significance tests."""
    h = hashlib.sha256(f"{len(samples)} samples".encode())
    for sample in samples:
        source = sample.source
        if isinstance(source, np.ndarray):
            data = f"array {source.shape} {source.dtype}".encode() + np.ascontiguousarray(source).tobytes()
        elif isinstance(source, bytes):
            data = source
        else:
            with open(os.fspath(source), "rb") as f:
                data = f.read()
        h.update(hashlib.sha256(data).digest())
        h.update(f"|{sample.label}|".encode())
    return h.hexdigest()


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
