"""Check a prepared CoOp data root before spending GPU hours on it.

For each of the 11 CoOp datasets and the 4 ImageNet variants, load it, compare its class and
split sizes with the published ones, and count image files that are missing on disk. A wrong
split file or an incomplete download then shows up as one table row instead of a crash (or,
worse, a silently smaller test set) halfway through an experiment.
"""
from __future__ import annotations

import os
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gramprompt.data.coop import AIRCRAFT_FOLDER, COOP_DATASETS, IMAGENET_FOLDER, JSON_LAYOUTS
from gramprompt.data.dataset import ClassificationDataset, DatasetError
from gramprompt.data.imagenet_variants import IMAGENET_VARIANTS, VARIANT_LAYOUTS
from gramprompt.data.registry import coop_family_name, load_coop_family

ALL_DATASETS: tuple[str, ...] = COOP_DATASETS + IMAGENET_VARIANTS

OK, COUNT_MISMATCH, MISSING_FILES, NOT_FOUND = "ok", "count mismatch", "missing files", "not found"


@dataclass(frozen=True)
class Counts:
    """Number of classes and of train/val/test samples."""

    classes: int
    train: int
    val: int
    test: int


# Published sizes. The 11 datasets: the dataset-statistics table of the CoOp paper (Zhou et al.,
# "Learning to Prompt for Vision-Language Models", IJCV 2022, arXiv:2109.01134), i.e. the sizes of
# the split_zhou_*.json files (FGVCAircraft: its own images_variant_{train,val,test}.txt; ImageNet:
# the official train set, and the official val set as test, no val). The same numbers appear in
# third-party copies of that table (e.g. the OSTB README's "Natural Images" table); SUN397's 19,850
# test images also in the tanganke/sun397 dataset card, ImageNet's 1,281,167 / 50,000 in TFDS/PaddleClas.
# The 4 variants (test only, CoOp sets no train/val for them; its table lists the test sizes):
# ImageNetV2 matched-frequency 10,000 = 10 per class (modestyachts/ImageNetV2 README; timm
# results/README.md); ImageNet-Sketch 50,889 (CoOp's table; the 50.9k-row HF copies; the
# HaohanWang/ImageNet-Sketch README says "50000 images, 50 per class", its nominal size);
# ImageNet-A 7,500 in 200 classes (timm results/README.md); ImageNet-R 30,000 in 200 classes
# (hendrycks/imagenet-r README).
PUBLISHED: dict[str, Counts] = {
    "ImageNet": Counts(1000, 1_281_167, 0, 50_000),
    "Caltech101": Counts(100, 4_128, 1_649, 2_465),
    "OxfordPets": Counts(37, 2_944, 736, 3_669),
    "StanfordCars": Counts(196, 6_509, 1_635, 8_041),
    "OxfordFlowers": Counts(102, 4_093, 1_633, 2_463),
    "Food101": Counts(101, 50_500, 20_200, 30_300),
    "FGVCAircraft": Counts(100, 3_334, 3_333, 3_333),
    "SUN397": Counts(397, 15_880, 3_970, 19_850),
    "DTD": Counts(47, 2_820, 1_128, 1_692),
    "EuroSAT": Counts(10, 13_500, 5_400, 8_100),
    "UCF101": Counts(101, 7_639, 1_898, 3_783),
    "ImageNetV2": Counts(1000, 0, 0, 10_000),
    "ImageNetSketch": Counts(1000, 0, 0, 50_889),
    "ImageNetA": Counts(200, 0, 0, 7_500),
    "ImageNetR": Counts(200, 0, 0, 30_000),
}


@dataclass(frozen=True)
class CheckRow:
    """One dataset's result. ``found`` is ``None`` when it could not be loaded (``detail`` then
    holds the loader's error); ``missing`` counts absent files among the ``checked`` ones."""

    dataset: str
    status: str
    expected: Counts
    found: Counts | None = None
    checked: int = 0
    missing: int = 0
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == OK


def dataset_folder(name: str) -> str:
    """The folder a dataset lives in under the data root (CoOp's DATASETS.md names)."""
    if name in JSON_LAYOUTS:
        return JSON_LAYOUTS[name].folder
    if name in VARIANT_LAYOUTS:
        return VARIANT_LAYOUTS[name].folder
    return {"ImageNet": IMAGENET_FOLDER, "FGVCAircraft": AIRCRAFT_FOLDER}[name]


def select_datasets(root: str | os.PathLike, names: Iterable[str] | None = None) -> list[str]:
    """Canonical names to check: ``names`` (aliases accepted) if given, else every dataset whose
    folder exists under ``root``, in the order of ``ALL_DATASETS``."""
    if names is not None:
        return list(dict.fromkeys(coop_family_name(n) for n in names))
    return [n for n in ALL_DATASETS if (Path(root) / dataset_folder(n)).is_dir()]


def count(dataset: ClassificationDataset) -> Counts:
    """The sizes the published table states, measured on a loaded dataset."""
    return Counts(dataset.num_classes, len(dataset.train), len(dataset.val), len(dataset.test))


def count_missing(paths: Sequence[str], sample: int | None = None, seed: int = 0) -> tuple[int, int]:
    """``(checked, missing)``: how many of ``paths`` (a seeded random ``sample`` of them, if given
    and smaller) are not regular files; broken symlinks count as missing."""
    if sample is not None and sample < len(paths):
        paths = random.Random(seed).sample(list(paths), sample)
    return len(paths), sum(not os.path.isfile(p) for p in paths)


def check_dataset(name: str, root: str | os.PathLike, expected: Counts,
                  sample: int | None = None, seed: int = 0) -> CheckRow:
    """Load one dataset and compare it with ``expected``; never raises on a bad tree."""
    try:
        dataset = load_coop_family(name, root)
    except (DatasetError, OSError) as err:  # OSError: e.g. an unreadable folder
        return CheckRow(name, NOT_FOUND, expected, detail=str(err))
    found = count(dataset)
    paths = [s.source for s in (*dataset.train, *dataset.val, *dataset.test) if isinstance(s.source, str)]
    checked, missing = count_missing(paths, sample, seed)
    problems = [f"{field} {getattr(found, field)} != {getattr(expected, field)}"
                for field in ("classes", "train", "val", "test") if getattr(found, field) != getattr(expected, field)]
    if missing:
        problems.append(f"{missing} of {checked} checked image files missing")
    status = COUNT_MISMATCH if found != expected else MISSING_FILES if missing else OK
    return CheckRow(name, status, expected, found, checked, missing, "; ".join(problems))


def check_root(root: str | os.PathLike, names: Iterable[str] | None = None, sample: int | None = None,
               seed: int = 0, published: Mapping[str, Counts] | None = None) -> list[CheckRow]:
    """Check every selected dataset (see ``select_datasets``) against ``published`` (default
    ``PUBLISHED``). ``sample`` checks only that many seeded random files per dataset for speed."""
    if sample is not None and sample < 1:
        raise ValueError(f"sample must be >= 1, got {sample}")
    table = PUBLISHED if published is None else published
    return [check_dataset(n, root, table[n], sample, seed) for n in select_datasets(root, names)]


def _cell(found: int | None, expected: int) -> str:
    if found is None:
        return f"- ({expected})"
    return str(found) if found == expected else f"{found} (expected {expected})"


def _cells(row: CheckRow) -> list[str]:
    found = row.found
    counts = [_cell(None if found is None else getattr(found, f), getattr(row.expected, f))
              for f in ("classes", "train", "val", "test")]
    missing = "-" if found is None else f"{row.missing}/{row.checked}"
    return [row.dataset, row.status, *counts, missing, row.detail]


HEADER = ["dataset", "status", "classes", "train", "val", "test", "missing/checked", "detail"]


def render(rows: Sequence[CheckRow], markdown: bool = True) -> str:
    """The rows as a Markdown table, or as plain aligned columns (``markdown=False``)."""
    body = [_cells(r) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        return "\n".join(lines + ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body])
    widths = [max(len(r[i]) for r in [HEADER, *body]) for i in range(len(HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [HEADER, *body])


def all_ok(rows: Sequence[CheckRow]) -> bool:
    """True when at least one dataset was checked and every one is ok."""
    return bool(rows) and all(r.ok for r in rows)
