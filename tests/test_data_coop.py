"""The 11 CoOp/Dassl layouts on fabricated trees (files are never opened at load time)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gramprompt.data.coop import COOP_DATASETS, canonical_name, load_coop
from gramprompt.data.dataset import DatasetError

# (canonical name, dataset folder, image dir relative to it, split file)
JSON_CASES = [
    ("Caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    ("OxfordPets", "oxford_pets", "images", "split_zhou_OxfordPets.json"),
    ("StanfordCars", "stanford_cars", "", "split_zhou_StanfordCars.json"),
    ("OxfordFlowers", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    ("Food101", "food-101", "images", "split_zhou_Food101.json"),
    ("SUN397", "sun397", "SUN397", "split_zhou_SUN397.json"),
    ("DTD", "dtd", "images", "split_zhou_DescribableTextures.json"),
    ("EuroSAT", "eurosat", "2750", "split_zhou_EuroSAT.json"),
    ("UCF101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
]

# Entries deliberately not in label order, to check classnames are ordered by label.
SPLIT = {
    "train": [
        ["sea_lion/b1.jpg", 2, "sea_lion"],
        ["ant/a1.jpg", 0, "ant"],
        ["ant/a2.jpg", 0, "ant"],
        ["Bee/x1.jpg", 1, "Bee"],
        ["sea_lion/b2.jpg", 2, "sea_lion"],
    ],
    "val": [["ant/a3.jpg", 0, "ant"], ["Bee/x2.jpg", 1, "Bee"]],
    "test": [["Bee/x3.jpg", 1, "Bee"], ["sea_lion/b3.jpg", 2, "sea_lion"], ["ant/a4.jpg", 0, "ant"]],
}


def _make_json_tree(root: Path, folder: str, image_dir: str, split_file: str) -> Path:
    images = root / folder / image_dir
    images.mkdir(parents=True)
    (root / folder / split_file).write_text(json.dumps(SPLIT))
    return images


@pytest.mark.parametrize("name,folder,image_dir,split_file", JSON_CASES)
def test_json_layouts(tmp_path: Path, name: str, folder: str, image_dir: str, split_file: str) -> None:
    images = _make_json_tree(tmp_path, folder, image_dir, split_file)
    ds = load_coop(name.lower(), tmp_path)
    assert ds.name == name
    assert ds.classnames == ["ant", "Bee", "sea lion"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (5, 2, 3)
    assert [s.label for s in ds.train] == [2, 0, 0, 1, 2]
    assert [s.label for s in ds.test] == [1, 2, 0]
    assert ds.train[0].source == os.path.join(images, "sea_lion/b1.jpg")


@pytest.mark.parametrize("name,folder,image_dir,split_file", JSON_CASES)
def test_json_missing_split_file(
    tmp_path: Path, name: str, folder: str, image_dir: str, split_file: str
) -> None:
    _make_json_tree(tmp_path, folder, image_dir, split_file)
    (tmp_path / folder / split_file).unlink()
    with pytest.raises(DatasetError, match=split_file):
        load_coop(name, tmp_path)


def test_missing_dataset_folder_names_expected_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="oxford_pets"):
        load_coop("OxfordPets", tmp_path)
    with pytest.raises(DatasetError, match="missing folder"):
        load_coop("OxfordPets", tmp_path / "no_root")


def test_missing_image_dir(tmp_path: Path) -> None:
    (tmp_path / "dtd").mkdir()
    (tmp_path / "dtd" / "split_zhou_DescribableTextures.json").write_text(json.dumps(SPLIT))
    with pytest.raises(DatasetError, match="images"):
        load_coop("dtd", tmp_path)


def test_json_inconsistent_or_gappy_labels(tmp_path: Path) -> None:
    images = _make_json_tree(tmp_path, "eurosat", "2750", "split_zhou_EuroSAT.json")
    split_path = images.parent / "split_zhou_EuroSAT.json"
    split_path.write_text(json.dumps({"train": [["a.jpg", 0, "a"], ["b.jpg", 0, "b"]], "test": []}))
    with pytest.raises(DatasetError, match="label 0"):
        load_coop("EuroSAT", tmp_path)
    split_path.write_text(json.dumps({"train": [["a.jpg", 0, "a"], ["c.jpg", 2, "c"]], "test": []}))
    with pytest.raises(DatasetError, match=r"missing \[1\]"):
        load_coop("EuroSAT", tmp_path)
    split_path.write_text("{not json")
    with pytest.raises(DatasetError, match="JSON"):
        load_coop("EuroSAT", tmp_path)


def test_json_without_val_key(tmp_path: Path) -> None:
    images = _make_json_tree(tmp_path, "eurosat", "2750", "split_zhou_EuroSAT.json")
    split = {"train": SPLIT["train"], "test": SPLIT["test"]}
    (images.parent / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    assert load_coop("EuroSAT", tmp_path).val == []


def _make_aircraft(root: Path) -> Path:
    base = root / "fgvc_aircraft"
    (base / "images").mkdir(parents=True)
    (base / "variants.txt").write_text("707-320\nFalcon 2000\nF-16A/B\n")
    (base / "images_variant_train.txt").write_text(
        "1025794 Falcon 2000\n1340192 707-320\n0056978 F-16A/B\n1340193 707-320\n"
    )
    (base / "images_variant_val.txt").write_text("2000001 F-16A/B\n")
    (base / "images_variant_test.txt").write_text("3000001 Falcon 2000\n\n3000002 707-320\n")
    return base


def test_aircraft_layout(tmp_path: Path) -> None:
    base = _make_aircraft(tmp_path)
    ds = load_coop("fgvc_aircraft", tmp_path)
    assert ds.name == "FGVCAircraft"
    assert ds.classnames == ["707-320", "Falcon 2000", "F-16A/B"]  # variants.txt line order
    assert [s.label for s in ds.train] == [1, 0, 2, 0]
    assert [s.label for s in ds.val] == [2]
    assert [s.label for s in ds.test] == [1, 0]
    assert ds.train[2].source == os.path.join(base / "images", "0056978.jpg")


def test_aircraft_errors(tmp_path: Path) -> None:
    base = _make_aircraft(tmp_path)
    (base / "images_variant_val.txt").write_text("2000001 Concorde\n")
    with pytest.raises(DatasetError, match="Concorde"):
        load_coop("FGVCAircraft", tmp_path)
    (base / "images_variant_val.txt").write_text("2000001 F-16A/B\n")
    (base / "images_variant_test.txt").unlink()
    with pytest.raises(DatasetError, match="images_variant_test.txt"):
        load_coop("FGVCAircraft", tmp_path)


def _make_imagenet(root: Path) -> Path:
    base = root / "imagenet"
    # Deliberately not in wnid order: labels follow the file's line order.
    (base).mkdir()
    (base / "classnames.txt").write_text(
        "n02000000 great white shark\nn01000000 tench\nn03000000 ice_cream\n"
    )
    files = {
        "train": {"n01000000": ["b.JPEG", "a.JPEG", "notes.txt"], "n02000000": ["c.JPEG"],
                  "n03000000": ["d.JPEG", "e.jpeg"], "n09999999": ["extra.JPEG"]},
        "val": {"n01000000": ["v1.JPEG"], "n02000000": ["v2.JPEG"], "n03000000": ["v3.JPEG"]},
    }
    for split, classes in files.items():
        for wnid, names in classes.items():
            d = base / "images" / split / wnid
            d.mkdir(parents=True)
            for n in names:
                (d / n).write_bytes(b"")
    return base


def test_imagenet_layout(tmp_path: Path) -> None:
    base = _make_imagenet(tmp_path)
    ds = load_coop("IMAGENET", tmp_path)
    assert ds.name == "ImageNet"
    assert ds.classnames == ["great white shark", "tench", "ice cream"]
    assert [s.label for s in ds.train] == [0, 1, 1, 2, 2]  # extra wnid ignored, txt skipped
    assert ds.train[1].source == os.path.join(base / "images/train/n01000000", "a.JPEG")
    assert [s.label for s in ds.test] == [0, 1, 2]
    assert ds.test[1].source == os.path.join(base / "images/val/n01000000", "v1.JPEG")
    assert ds.val == []


def test_imagenet_missing_class_folder(tmp_path: Path) -> None:
    base = _make_imagenet(tmp_path)
    (base / "images/val/n03000000/v3.JPEG").unlink()
    (base / "images/val/n03000000").rmdir()
    with pytest.raises(DatasetError, match="n03000000"):
        load_coop("ImageNet", tmp_path)
    (base / "classnames.txt").unlink()
    with pytest.raises(DatasetError, match="classnames.txt"):
        load_coop("ImageNet", tmp_path)


def test_canonical_names_and_aliases() -> None:
    assert len(COOP_DATASETS) == 11
    for name in COOP_DATASETS:
        assert canonical_name(name) == name
        assert canonical_name(name.upper()) == name
    assert canonical_name("Flowers102") == "OxfordFlowers"
    assert canonical_name("flowers102") == "OxfordFlowers"
    assert canonical_name("DescribableTextures") == "DTD"
    assert canonical_name("oxford_pets") == "OxfordPets"
    assert canonical_name("caltech-101") == "Caltech101"
    with pytest.raises(DatasetError, match="Caltech101"):
        canonical_name("cifar10")


def test_alias_loads(tmp_path: Path) -> None:
    _make_json_tree(tmp_path, "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json")
    _make_json_tree(tmp_path, "dtd", "images", "split_zhou_DescribableTextures.json")
    assert load_coop("Flowers102", tmp_path).name == "OxfordFlowers"
    assert load_coop("describabletextures", tmp_path).name == "DTD"
