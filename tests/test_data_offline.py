"""Offline classification sets: IDX parsing, labelling rules on fabricated inputs, and the
documented counts of the installed packages (skipped, naming the package, when missing)."""
from __future__ import annotations

import gzip
import importlib.util
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gramprompt.data import offline
from gramprompt.data.dataset import DatasetError
from gramprompt.data.images import load_image
from gramprompt.data.offline import (
    ANIMAL_MNIST_CLASSES,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    clipart_images,
    load_animal_mnist,
    load_clipart_categories,
    load_emoji_groups,
    load_emoji_subgroups,
    load_fashion_mnist,
    read_idx,
    readable,
)
from gramprompt.data.pairs import ImageTextPair, noto_emoji_pairs
from gramprompt.data.pairs.noto_emoji import EMOJI_TEST, NOTO_EMOJI_FONT
from gramprompt.data.pairs.openclipart import OPENCLIPART_PNG
from gramprompt.data.registry import dataset_names, load_dataset

OFFLINE_NAMES = ["fashion-mnist", "animal-mnist", "emoji-groups", "emoji-subgroups",
                 "clipart-categories"]


def _require(ok: bool, what: str) -> None:
    if not ok:
        pytest.skip(f"needs {what}")


def _idx(path: Path, header: bytes, payload: bytes) -> Path:
    path.write_bytes(gzip.compress(header + payload))
    return path


def test_read_idx_hand_built(tmp_path: Path) -> None:
    # magic 0x00000803: uint8, 3 dims (2, 2, 3), big-endian sizes.
    header = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") * 2 + (3).to_bytes(4, "big")
    arr = read_idx(_idx(tmp_path / "a.gz", header, bytes(range(12))))
    assert arr.shape == (2, 2, 3) and arr.dtype == np.uint8
    assert arr[1, 0].tolist() == [6, 7, 8]
    label_header = bytes([0, 0, 8, 1]) + (2).to_bytes(4, "big")
    labels = read_idx(_idx(tmp_path / "l.gz", label_header, b"\x09\x00"))
    assert labels.tolist() == [9, 0]
    with pytest.raises(DatasetError, match="header says"):
        read_idx(_idx(tmp_path / "b.gz", header, bytes(5)))
    with pytest.raises(DatasetError, match="IDX"):
        read_idx(_idx(tmp_path / "c.gz", bytes([0, 0, 0x0D, 1]), bytes(8)))


def test_readable_names() -> None:
    assert readable("Smileys & Emotion") == "smileys and emotion"
    assert readable("face-smiling") == "face smiling"
    assert readable("sky & weather") == "sky and weather"
    assert readable("signs_and_symbols") == "signs and symbols"


def test_all_offline_names_registered() -> None:
    assert set(OFFLINE_NAMES) | {"digits"} <= set(dataset_names())


def test_missing_packages_raise_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist") as err:
        load_fashion_mnist(tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(DatasetError, match="apt-get install openclipart-png"):
        load_clipart_categories(root_png=tmp_path / "png")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(DatasetError, match="pip install --no-deps animal-mnist"):
        load_animal_mnist()


def _pair(i: int, group: str, subgroup: str) -> ImageTextPair:
    return ImageTextPair(f"k{i}", f"/x/{i}.png", "c", {"group": group, "subgroup": subgroup})


def test_emoji_labelling_on_fabricated_pairs() -> None:
    pairs = ([_pair(i, "Smileys & Emotion", "face-smiling") for i in range(10)]
             + [_pair(10 + i, "Animals & Nature", "animal-mammal") for i in range(7)]
             + [_pair(20 + i, "Component", "skin-tone") for i in range(9)])
    groups = load_emoji_groups(pairs=pairs)
    assert groups.name == "emoji-groups"
    assert groups.classnames == ["animals and nature", "smileys and emotion"]  # no Component
    assert (len(groups.train), len(groups.test)) == (11, 6)  # ceil(0.3*10)=3, ceil(0.3*7)=3
    subgroups = load_emoji_subgroups(pairs=pairs)
    assert subgroups.classnames == ["face smiling"]  # 7 mammals < 8
    assert sorted(s.source for s in subgroups.train + subgroups.test) == sorted(
        f"/x/{i}.png" for i in range(10))


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((2, 2), value, dtype=np.uint8)).save(path)


def test_clipart_images_dedup_and_exclusions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRAMPROMPT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "png"
    _png(root / "animals/cat.png", 1)
    _png(root / "animals/more/cat_again.png", 1)  # same bytes, same category: one kept
    _png(root / "animals/owl.png", 2)
    _png(root / "shapes/star.png", 3)
    _png(root / "tools/star_copy.png", 3)  # same bytes, other category: both dropped
    _png(root / "food/pie.png", 4)
    _png(root / "special/pie_pattern.png", 4)  # excluded category does not make it ambiguous
    _png(root / "unsorted/thing.png", 5)
    found = [(Path(p).relative_to(root).as_posix(), c) for p, c in clipart_images(root)]
    assert found == [("animals/cat.png", "animals"), ("animals/owl.png", "animals"),
                     ("food/pie.png", "food")]


# ---------------------------------------------------------------- installed packages
# Counts as documented in docs/DATA.md.


def _check(ds, name: str, classnames: list[str], n_train: int, n_test: int) -> None:
    assert ds.name == name and ds.classnames == classnames and ds.val == []
    assert (len(ds.train), len(ds.test)) == (n_train, n_test)
    assert {s.label for s in ds.test} == set(range(len(classnames)))
    assert load_image(ds.train[0].source).mode == "RGB"


@pytest.fixture(scope="module")
def fashion():
    _require(os.path.isdir(FASHION_MNIST_DIR),
             "Debian package dataset-fashion-mnist: sudo apt-get install dataset-fashion-mnist")
    return load_fashion_mnist()


def test_fashion_mnist(fashion) -> None:
    _check(fashion, "fashion-mnist", FASHION_MNIST_CLASSES, 60000, 10000)
    assert Counter(s.label for s in fashion.train) == {i: 6000 for i in range(10)}
    img = fashion.train[0].source
    assert img.dtype == np.uint8 and img.shape == (28, 28)
    assert img.base is not None  # a view into one shared array, not a copy
    assert fashion.train[0].label == 9  # the first training image is an ankle boot


def test_animal_mnist() -> None:
    _require(importlib.util.find_spec("animal_mnist") is not None,
             "PyPI package animal-mnist: pip install --no-deps animal-mnist")
    ds = load_animal_mnist()
    _check(ds, "animal-mnist", ANIMAL_MNIST_CLASSES, 7000, 3000)
    assert Counter(s.label for s in ds.test) == {i: 300 for i in range(10)}
    assert ds.test[0].source.shape == (28, 28)
    again, other = load_animal_mnist(), load_animal_mnist(seed=1)
    assert [s.label for s in again.test] == [s.label for s in ds.test]
    assert all(np.array_equal(a.source, b.source) for a, b in zip(ds.test, again.test))
    assert not all(np.array_equal(a.source, b.source) for a, b in zip(ds.test, other.test))


@pytest.fixture(scope="module")
def emoji():
    """All emoji, rendered once into the persistent cache dir and reused across runs."""
    _require(os.path.isfile(NOTO_EMOJI_FONT) and os.path.isfile(EMOJI_TEST),
             "Debian packages fonts-noto-color-emoji and unicode-data: "
             "sudo apt-get install fonts-noto-color-emoji unicode-data")
    return noto_emoji_pairs()


def test_emoji_groups(emoji) -> None:
    ds = load_emoji_groups(pairs=emoji)
    _check(ds, "emoji-groups", ["activities", "animals and nature", "flags", "food and drink",
                                "objects", "people and body", "smileys and emotion", "symbols",
                                "travel and places"], 2558, 1097)
    assert load_image(ds.test[0].source).size == (136, 128)
    again = load_emoji_groups(pairs=emoji)
    assert [(s.source, s.label) for s in again.test] == [(s.source, s.label) for s in ds.test]


def test_emoji_subgroups(emoji) -> None:
    ds = load_emoji_subgroups(pairs=emoji)
    assert ds.name == "emoji-subgroups" and ds.num_classes == 74
    assert (len(ds.train), len(ds.test)) == (2469, 1059)
    expected = {"face smiling", "sky and weather", "country flag", "person activity"}
    assert expected <= set(ds.classnames)
    assert "subdivision flag" not in ds.classnames  # 3 images < 8
    assert min(Counter(s.label for s in ds.train + ds.test).values()) >= 8


@pytest.fixture(scope="module")
def clipart():
    _require(os.path.isdir(OPENCLIPART_PNG),
             "Debian package openclipart-png: sudo apt-get install openclipart-png")
    return load_clipart_categories()


def test_clipart_categories(clipart) -> None:
    names = ["animals", "buildings", "computer", "containers", "decorations", "education",
             "electronics", "food", "geography", "office", "people", "plants", "recreation",
             "science", "shapes", "signs and symbols", "tools", "transportation"]
    _check(clipart, "clipart-categories", names, 4301, 1844)
    assert all(s.source.startswith(OPENCLIPART_PNG) for s in clipart.test[:20])
    again = load_clipart_categories()
    assert [(s.source, s.label) for s in again.test] == [(s.source, s.label) for s in clipart.test]


def test_registry_loads_by_spec_name(fashion, clipart) -> None:
    assert load_dataset("fashion-mnist").classnames == FASHION_MNIST_CLASSES
    assert load_dataset("clipart-categories").name == "clipart-categories"
    assert offline.OFFLINE_DATASETS.keys() == set(OFFLINE_NAMES)
