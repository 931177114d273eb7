"""The 4 ImageNet variants in CoOp's layout, on fabricated trees (files are never opened)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from gramprompt.data.dataset import DatasetError
from gramprompt.data.imagenet_variants import IMAGENET_VARIANTS, load_variant, variant_name
from gramprompt.data.registry import load_dataset

# Deliberately not in wnid order: V2 and Sketch labels follow the file's line order.
CLASSNAMES = [("n02000000", "great white shark"), ("n01000000", "tench"), ("n03000000", "ice_cream"),
              ("n04000000", "goldfish"), ("n05000000", "kite (bird of prey)")]


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")


def _classnames(folder: Path, pairs=CLASSNAMES) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in pairs))


def _make_v2(root: Path) -> Path:
    base = root / "imagenetv2"
    _classnames(base)
    images = base / "imagenetv2-matched-frequency-format-val"
    for label in range(len(CLASSNAMES)):
        _touch(images / str(label), f"b{label}.jpeg", f"a{label}.jpeg", "notes.txt")
    return images


def _make_sketch(root: Path) -> Path:
    base = root / "imagenet-sketch"
    _classnames(base)
    images = base / "images"
    for wnid, _ in CLASSNAMES:
        _touch(images / wnid, "sketch_1.JPEG", "sketch_0.png", ".hidden.jpg")
    return images


# (name, folder, image dir): the two 200-class subsets
SUBSETS = [("ImageNetA", "imagenet-adversarial", "imagenet-a"), ("ImageNetR", "imagenet-rendition", "imagenet-r")]


def _make_subset(root: Path, folder: str, image_dir: str) -> Path:
    _classnames(root / folder)
    images = root / folder / image_dir
    # 3 of the 5 wnids present, created out of order, plus the README.txt the archives ship
    for wnid, files in (("n04000000", ["x.jpg"]), ("n01000000", ["b.jpg", "a.jpg"]), ("n02000000", ["c.jpg"])):
        _touch(images / wnid, *files)
    (images / "README.txt").write_text("readme")
    return images


def test_imagenetv2_folders_are_label_indices(tmp_path: Path) -> None:
    images = _make_v2(tmp_path)
    ds = load_variant("ImageNetV2", tmp_path)
    assert ds.name == "ImageNetV2"
    assert ds.classnames == ["great white shark", "tench", "ice cream", "goldfish", "kite (bird of prey)"]
    assert ds.train == [] and ds.val == []
    assert [s.label for s in ds.test] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # notes.txt skipped
    assert ds.test[0].source == os.path.join(images / "0", "a0.jpeg")


def test_imagenetv2_missing_label_folder(tmp_path: Path) -> None:
    images = _make_v2(tmp_path)
    for f in (images / "4").iterdir():
        f.unlink()
    (images / "4").rmdir()
    with pytest.raises(DatasetError, match=r"imagenetv2-matched-frequency-format-val/4"):
        load_variant("imagenetv2", tmp_path)


def test_imagenet_sketch_keeps_imagenet_label_order(tmp_path: Path) -> None:
    images = _make_sketch(tmp_path)
    ds = load_variant("ImageNet-Sketch", tmp_path)
    assert ds.name == "ImageNetSketch"
    assert ds.classnames[:3] == ["great white shark", "tench", "ice cream"]
    assert [s.label for s in ds.test] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # hidden file skipped
    assert ds.test[2].source == os.path.join(images / "n01000000", "sketch_0.png")
    assert ds.train == []


def test_imagenet_sketch_missing_class_folder(tmp_path: Path) -> None:
    images = _make_sketch(tmp_path)
    for f in (images / "n03000000").iterdir():
        f.unlink()
    (images / "n03000000").rmdir()
    with pytest.raises(DatasetError, match="n03000000"):
        load_variant("ImageNetSketch", tmp_path)


@pytest.mark.parametrize("name,folder,image_dir", SUBSETS)
def test_subset_label_space_is_the_sorted_wnids_present(tmp_path: Path, name: str, folder: str, image_dir: str) -> None:
    images = _make_subset(tmp_path, folder, image_dir)
    ds = load_variant(name, tmp_path)
    assert ds.name == name
    # n01000000 < n02000000 < n04000000; names from classnames.txt; README.txt ignored
    assert ds.classnames == ["tench", "great white shark", "goldfish"]
    assert [s.label for s in ds.test] == [0, 0, 1, 2]
    assert ds.test[0].source == os.path.join(images / "n01000000", "a.jpg")
    assert ds.train == [] and ds.val == []


@pytest.mark.parametrize("name,folder,image_dir", SUBSETS)
def test_subset_errors_name_the_path(tmp_path: Path, name: str, folder: str, image_dir: str) -> None:
    with pytest.raises(DatasetError, match=folder):
        load_variant(name, tmp_path)
    (tmp_path / folder).mkdir()
    with pytest.raises(DatasetError, match=f"{folder}/{image_dir}"):
        load_variant(name, tmp_path)
    images = _make_subset(tmp_path, folder, image_dir)
    _touch(images / "n09999999", "z.jpg")
    with pytest.raises(DatasetError, match=r"n09999999.*classnames\.txt"):
        load_variant(name, tmp_path)
    (tmp_path / folder / "classnames.txt").unlink()
    with pytest.raises(DatasetError, match="classnames.txt"):
        load_variant(name, tmp_path)


def test_subset_without_class_folders(tmp_path: Path) -> None:
    _classnames(tmp_path / "imagenet-rendition")
    (tmp_path / "imagenet-rendition" / "imagenet-r").mkdir()
    with pytest.raises(DatasetError, match="no class folders"):
        load_variant("ImageNetR", tmp_path)


def test_classnames_file_errors(tmp_path: Path) -> None:
    _make_sketch(tmp_path)
    path = tmp_path / "imagenet-sketch" / "classnames.txt"
    path.write_text("n01000000 tench\nn01000000 tench again\n")
    with pytest.raises(DatasetError, match="duplicate wnids"):
        load_variant("ImageNetSketch", tmp_path)
    path.write_text("n01000000\n")
    with pytest.raises(DatasetError, match="without a class name"):
        load_variant("ImageNetSketch", tmp_path)


def test_names_and_aliases() -> None:
    assert IMAGENET_VARIANTS == ("ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR")
    for alias, name in [("ImageNetV2", "ImageNetV2"), ("imagenet-v2", "ImageNetV2"),
                        ("ImageNet-Sketch", "ImageNetSketch"), ("imagenet_sketch", "ImageNetSketch"),
                        ("imagenet_a", "ImageNetA"), ("ImageNet-Adversarial", "ImageNetA"),
                        ("imagenet-r", "ImageNetR"), ("imagenet-rendition", "ImageNetR")]:
        assert variant_name(alias) == name
    assert variant_name("ImageNet") is None and variant_name("cifar10") is None
    with pytest.raises(DatasetError, match="ImageNetV2"):
        load_variant("ImageNet", "/nonexistent")


def test_coop_specs_load_the_variants(tmp_path: Path) -> None:
    _make_v2(tmp_path)
    _make_sketch(tmp_path)
    for folder, image_dir in (("imagenet-adversarial", "imagenet-a"), ("imagenet-rendition", "imagenet-r")):
        _make_subset(tmp_path, folder, image_dir)
    loaded = {spec: load_dataset(f"coop:{spec}:{tmp_path}")
              for spec in ("ImageNetV2", "ImageNet-Sketch", "imagenet_a", "ImageNet-R")}
    assert [ds.name for ds in loaded.values()] == list(IMAGENET_VARIANTS)
    assert [ds.num_classes for ds in loaded.values()] == [5, 5, 3, 3]


def test_unknown_coop_name_lists_the_variants(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="ImageNetSketch"):
        load_dataset(f"coop:cifar10:{tmp_path}")
