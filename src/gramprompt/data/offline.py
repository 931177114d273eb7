"""Classification sets from locally installed packages, with prompt-friendly class names.

Sources without an official split get a fixed stratified one: ``TEST_FRACTION`` (30%) of
every class goes to test, chosen with ``SPLIT_SEED`` (0), so results are comparable across
machines and runs. Fashion-MNIST keeps its official 60k/10k split.
"""
from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from gramprompt.data.dataset import ClassificationDataset, DatasetError, Sample
from gramprompt.data.pairs import ImageTextPair, noto_emoji_pairs
from gramprompt.data.pairs.openclipart import OPENCLIPART_PNG, png_index, usable_pngs
from gramprompt.data.splits import stratified_split

TEST_FRACTION = 0.3
SPLIT_SEED = 0

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# Official order; "T-shirt/top" and "Ankle boot" reworded so they read well inside a prompt.
FASHION_MNIST_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat",
                         "sandal", "shirt", "sneaker", "bag", "ankle boot"]
# Label order of animal-mnist's data (checked by eye on sample images; matches its README).
ANIMAL_MNIST_CLASSES = ["bear", "bird", "cat", "cow", "dog",
                        "elephant", "giraffe", "horse", "sheep", "zebra"]
ANIMAL_MNIST_FILES = ("animal_data_version_3.gz", "animal_label_version_3.gz")

EMOJI_SKIP_GROUPS = frozenset({"Component"})  # skin-tone/hair swatches, not pictures
MIN_SUBGROUP_IMAGES = 8
# "special" holds gradients, fill patterns and templates; "unsorted" has no meaning as a label.
CLIPART_EXCLUDED = frozenset({"special", "unsorted"})
MIN_CATEGORY_IMAGES = 8  # drops "buttons" (3) and "logos" (7): too few for a 30% test split

FASHION_INSTALL = (
    "fashion-mnist needs the Debian package dataset-fashion-mnist: "
    "sudo apt-get install dataset-fashion-mnist"
)
ANIMAL_INSTALL = (
    "animal-mnist needs the PyPI package animal-mnist (its data only; never its TensorFlow "
    "loader): pip install --no-deps animal-mnist"
)
CLIPART_INSTALL = (
    "clipart-categories needs the Debian package openclipart-png: "
    "sudo apt-get install openclipart-png"
)


def readable(name: str) -> str:
    """``Smileys & Emotion`` -> ``smileys and emotion``; ``face-smiling``/``a_b`` -> spaces."""
    text = name.replace("&", " and ").replace("-", " ").replace("_", " ")
    return " ".join(text.lower().split())


def _split(name: str, classnames: list[str], samples: list[Sample],
           test_fraction: float, seed: int) -> ClassificationDataset:
    train, test = stratified_split(samples, test_fraction, seed)
    return ClassificationDataset(name=name, classnames=classnames, train=train, test=test)


# --------------------------------------------------------------------------- MNIST-likes


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """A gzipped IDX file (the MNIST container) as an array of its declared shape.

    Header: two zero bytes, a type code (0x08 = uint8), the number of dimensions, then one
    big-endian int32 per dimension.
    """
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DatasetError(f"{path}: header says {shape}, found {data.size} values")
    return data.reshape(shape)


def _mnist_samples(images: np.ndarray, labels: np.ndarray) -> list[Sample]:
    """Samples whose sources are views into ``images``, so no per-image copies are made."""
    return [Sample(images[i], int(label)) for i, label in enumerate(labels)]


def load_fashion_mnist(root: str | os.PathLike = FASHION_MNIST_DIR) -> ClassificationDataset:
    """Zalando's Fashion-MNIST: 70k 28x28 grey images, official 60k train / 10k test."""
    root = Path(root)
    files = {part: (root / f"{part}-images-idx3-ubyte.gz", root / f"{part}-labels-idx1-ubyte.gz")
             for part in ("train", "t10k")}
    if not all(p.is_file() for pair in files.values() for p in pair):
        raise DatasetError(FASHION_INSTALL)
    train, test = (_mnist_samples(read_idx(images), read_idx(labels))
                   for images, labels in files.values())
    return ClassificationDataset(name="fashion-mnist", classnames=list(FASHION_MNIST_CLASSES),
                                 train=train, test=test)


def animal_mnist_dir() -> Path:
    """The installed package's data folder, located without importing it (it imports TF)."""
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(ANIMAL_INSTALL)
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "Animal_MNIST"
    if not all((folder / f).is_file() for f in ANIMAL_MNIST_FILES):
        raise DatasetError(ANIMAL_INSTALL)
    return folder


def load_animal_mnist(
    test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED
) -> ClassificationDataset:
    """Animal silhouettes, 10 classes x 1000 28x28 grey images, stratified split."""
    folder = animal_mnist_dir()
    arrays = []
    for name in ANIMAL_MNIST_FILES:
        with gzip.open(folder / name, "rb") as fh:
            arrays.append(np.asarray(pickle.load(fh)))  # the package's own trusted data
    images, labels = arrays
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DatasetError(
            f"{folder}: unexpected arrays {images.shape} {images.dtype}, {labels.shape}")
    samples = _mnist_samples(images, labels)
    return _split("animal-mnist", list(ANIMAL_MNIST_CLASSES), samples, test_fraction, seed)


# --------------------------------------------------------------------------- emoji


def _labelled(name: str, items: Iterable[tuple[str, str]], min_count: int,
              test_fraction: float, seed: int) -> ClassificationDataset:
    """(source, raw label) items -> dataset with sorted readable class names."""
    items = list(items)
    sizes = Counter(readable(label) for _, label in items)
    classnames = sorted(c for c, n in sizes.items() if n >= min_count)
    index = {c: i for i, c in enumerate(classnames)}
    samples = [Sample(src, index[readable(label)]) for src, label in items
               if readable(label) in index]
    return _split(name, classnames, samples, test_fraction, seed)


def _emoji(pairs: list[ImageTextPair] | None) -> list[ImageTextPair]:
    pairs = noto_emoji_pairs() if pairs is None else pairs
    return [p for p in pairs if p.meta["group"] not in EMOJI_SKIP_GROUPS]


def load_emoji_groups(test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED,
                      pairs: list[ImageTextPair] | None = None) -> ClassificationDataset:
    """Noto emoji labelled by Unicode group (9 classes); ``pairs`` defaults to all emoji."""
    items = ((p.source, p.meta["group"]) for p in _emoji(pairs))
    return _labelled("emoji-groups", items, 2, test_fraction, seed)


def load_emoji_subgroups(test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED,
                         pairs: list[ImageTextPair] | None = None) -> ClassificationDataset:
    """Noto emoji labelled by subgroup, keeping subgroups with >= ``MIN_SUBGROUP_IMAGES``."""
    items = ((p.source, p.meta["subgroup"]) for p in _emoji(pairs))
    return _labelled("emoji-subgroups", items, MIN_SUBGROUP_IMAGES, test_fraction, seed)


# --------------------------------------------------------------------------- clipart


def clipart_images(root_png: str | os.PathLike = OPENCLIPART_PNG) -> list[tuple[str, str]]:
    """(path, top-level category) of usable, unambiguous openclipart PNGs, sorted.

    Leaves out oversized files, excluded categories, and byte-identical copies: one copy is
    kept when all copies share a category; none when they disagree (the label is ambiguous
    and copies would leak from train into test).
    """
    root = Path(root_png)
    if not root.is_dir():
        raise DatasetError(CLIPART_INSTALL)
    infos = [i for i in usable_pngs(png_index(root))
             if "/" in i.rel and i.rel.split("/", 1)[0] not in CLIPART_EXCLUDED]
    categories: dict[str, set[str]] = {}
    for info in infos:
        categories.setdefault(info.sha1, set()).add(info.rel.split("/", 1)[0])
    seen: set[str] = set()
    out = []
    for info in infos:
        if len(categories[info.sha1]) > 1 or info.sha1 in seen:
            continue
        seen.add(info.sha1)
        out.append((str(root / info.rel), info.rel.split("/", 1)[0]))
    return out


def load_clipart_categories(test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED,
                            root_png: str | os.PathLike = OPENCLIPART_PNG) -> ClassificationDataset:
    """Openclipart PNGs labelled by top-level folder, >= ``MIN_CATEGORY_IMAGES`` per class."""
    return _labelled("clipart-categories", clipart_images(root_png), MIN_CATEGORY_IMAGES,
                     test_fraction, seed)


OFFLINE_DATASETS: dict[str, Callable[[], ClassificationDataset]] = {
    "fashion-mnist": load_fashion_mnist,
    "animal-mnist": load_animal_mnist,
    "emoji-groups": load_emoji_groups,
    "emoji-subgroups": load_emoji_subgroups,
    "clipart-categories": load_clipart_categories,
}
