"""`gram data check` and its pure check function, on fabricated CoOp data roots; and the
base/new class counts of the 11 datasets' real class counts."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from gramprompt.cli import main
from gramprompt.data import check
from gramprompt.data.check import (
    ALL_DATASETS, COUNT_MISMATCH, MISSING_FILES, NOT_FOUND, OK, PUBLISHED, Counts, check_root, count_missing, render,
)
from gramprompt.data.coop import COOP_DATASETS, JSON_LAYOUTS
from gramprompt.data.registry import load_coop_family
from gramprompt.data.splits import base_new_split


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def _wnids(n: int) -> list[str]:
    return [f"n{i:08d}" for i in range(n)]


def _classnames_txt(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classnames.txt").write_text("".join(f"{w} class {i}\n" for i, w in enumerate(_wnids(n))))


def _json_dataset(root: Path, name: str, n: int) -> None:
    """n classes, one image each in train, val and test, all present on disk."""
    layout = JSON_LAYOUTS[name]
    images = root / layout.folder / layout.image_dir
    split = {part: [[f"c{c}/{part}.jpg", c, f"class_{c}"] for c in range(n)] for part in ("train", "val", "test")}
    for entries in split.values():
        for relpath, _, _ in entries:
            _touch(images / relpath)
    (root / layout.folder / layout.split_file).write_text(json.dumps(split))


def _aircraft(root: Path, n: int) -> None:
    base = root / "fgvc_aircraft"
    (base / "variants.txt").parent.mkdir(parents=True, exist_ok=True)
    (base / "variants.txt").write_text("".join(f"model {c}\n" for c in range(n)))
    for k, part in enumerate(("train", "val", "test")):
        ids = [f"{k}{c:06d}" for c in range(n)]
        (base / f"images_variant_{part}.txt").write_text("".join(f"{i} model {c}\n" for c, i in enumerate(ids)))
        for i in ids:
            _touch(base / "images" / f"{i}.jpg")


def _imagenet(root: Path, n: int) -> None:
    _classnames_txt(root / "imagenet", n)
    for part in ("train", "val"):
        for w in _wnids(n):
            _touch(root / "imagenet" / "images" / part / w / f"{part}.JPEG")


def _variants(root: Path, n: int) -> None:
    """V2 and Sketch with all n classes; A and R with the first n - 1 of n wnids present."""
    for folder in ("imagenetv2", "imagenet-sketch", "imagenet-adversarial", "imagenet-rendition"):
        _classnames_txt(root / folder, n)
    for c, w in enumerate(_wnids(n)):
        _touch(root / "imagenetv2" / "imagenetv2-matched-frequency-format-val" / str(c) / "x.jpeg")
        _touch(root / "imagenet-sketch" / "images" / w / "x.JPEG")
    for w in _wnids(n - 1):
        _touch(root / "imagenet-adversarial" / "imagenet-a" / w / "x.jpg")
        _touch(root / "imagenet-rendition" / "imagenet-r" / w / "x.png")


def make_root(root: Path, classes: dict[str, int]) -> dict[str, Counts]:
    """A CoOp data root with ``classes[name]`` classes per dataset; returns its true counts."""
    counts: dict[str, Counts] = {}
    for name in COOP_DATASETS:
        n = classes[name]
        if name == "ImageNet":
            _imagenet(root, n)
            counts[name] = Counts(n, n, 0, n)
        elif name == "FGVCAircraft":
            _aircraft(root, n)
            counts[name] = Counts(n, n, n, n)
        else:
            _json_dataset(root, name, n)
            counts[name] = Counts(n, n, n, n)
    _variants(root, classes["variants"])
    n = classes["variants"]
    counts.update(ImageNetV2=Counts(n, 0, 0, n), ImageNetSketch=Counts(n, 0, 0, n),
                  ImageNetA=Counts(n - 1, 0, 0, n - 1), ImageNetR=Counts(n - 1, 0, 0, n - 1))
    return counts


SMALL = {**{name: 3 for name in COOP_DATASETS}, "variants": 4}


@pytest.fixture
def small_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny complete root, with the published table patched to its true counts."""
    counts = make_root(tmp_path / "data", SMALL)
    monkeypatch.setattr(check, "PUBLISHED", counts)
    return tmp_path / "data"


def test_published_table_covers_every_dataset() -> None:
    assert list(PUBLISHED) == list(ALL_DATASETS)
    assert PUBLISHED["Caltech101"] == Counts(100, 4128, 1649, 2465)
    assert all(PUBLISHED[n].train == PUBLISHED[n].val == 0 for n in ("ImageNetV2", "ImageNetSketch",
                                                                      "ImageNetA", "ImageNetR"))


def test_correct_tree_is_ok(small_root: Path) -> None:
    rows = check_root(small_root)
    assert [r.dataset for r in rows] == list(ALL_DATASETS)
    assert [r.status for r in rows] == [OK] * 15, render(rows)
    assert check.all_ok(rows)
    pets = rows[ALL_DATASETS.index("OxfordPets")]
    assert (pets.checked, pets.missing, pets.found) == (9, 0, Counts(3, 3, 3, 3))
    assert rows[ALL_DATASETS.index("ImageNetA")].found == Counts(3, 0, 0, 3)  # the wnids present


def test_deleted_image_is_reported_missing(small_root: Path) -> None:
    (small_root / "dtd" / "images" / "c1" / "val.jpg").unlink()
    (row,) = check_root(small_root, ["DescribableTextures"])
    assert (row.dataset, row.status, row.missing, row.checked) == ("DTD", MISSING_FILES, 1, 9)
    assert "1 of 9" in row.detail and not check.all_ok([row])


def test_broken_symlink_counts_as_missing(tmp_path: Path) -> None:
    present, link = tmp_path / "a.jpg", tmp_path / "b.jpg"
    _touch(present)
    link.symlink_to(tmp_path / "gone.jpg")
    assert count_missing([str(present), str(link), str(tmp_path)]) == (3, 2)  # a folder is no image file


def test_wrong_count_is_reported(small_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = dict(check.PUBLISHED)
    table["EuroSAT"] = replace(table["EuroSAT"], test=4, classes=10)
    monkeypatch.setattr(check, "PUBLISHED", table)
    (row,) = check_root(small_root, ["eurosat"])
    assert row.status == COUNT_MISMATCH
    assert "classes 3 != 10" in row.detail and "test 3 != 4" in row.detail
    assert "3 (expected 4)" in render([row])


def test_count_mismatch_wins_over_missing_files(small_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (small_root / "eurosat" / "2750" / "c0" / "train.jpg").unlink()
    table = dict(check.PUBLISHED)
    table["EuroSAT"] = replace(table["EuroSAT"], val=7)
    monkeypatch.setattr(check, "PUBLISHED", table)
    (row,) = check_root(small_root, ["EuroSAT"])
    assert row.status == COUNT_MISMATCH and row.missing == 1 and "missing" in row.detail


def test_absent_or_broken_dataset_is_not_found(tmp_path: Path) -> None:
    (row,) = check_root(tmp_path, ["OxfordPets"])
    assert row.status == NOT_FOUND and "oxford_pets" in row.detail and row.found is None
    (tmp_path / "ucf101" / "UCF-101-midframes").mkdir(parents=True)  # images but no split file
    assert check_root(tmp_path) and [r.dataset for r in check_root(tmp_path)] == ["UCF101"]
    (row,) = check_root(tmp_path)
    assert row.status == NOT_FOUND and "split_zhou_UCF101.json" in row.detail
    assert "| UCF101 | not found |" in render([row])


def test_default_checks_only_the_folders_present(small_root: Path) -> None:
    for folder in ("imagenet", "sun397", "imagenet-rendition"):
        (small_root / folder).rename(small_root.parent / folder)
    names = [r.dataset for r in check_root(small_root)]
    assert "ImageNet" not in names and "SUN397" not in names and "ImageNetR" not in names and len(names) == 12


def test_sample_checks_a_seeded_subset(small_root: Path) -> None:
    (row,) = check_root(small_root, ["Food101"], sample=4)
    assert row.checked == 4 and row.status == OK
    paths = [f"/nonexistent/{i}.jpg" for i in range(50)]
    assert count_missing(paths, sample=5, seed=1) == (5, 5)
    assert count_missing(paths, sample=500) == (50, 50)
    with pytest.raises(ValueError, match="sample"):
        check_root(small_root, sample=0)


def test_plain_render_is_aligned(small_root: Path) -> None:
    rows = check_root(small_root, ["Caltech101", "ImageNet-Sketch"])
    lines = render(rows, markdown=False).splitlines()
    assert lines[0].split()[:2] == ["dataset", "status"] and len(lines) == 3
    assert lines[1].index("ok") == lines[2].index("ok")


def test_cli_exit_codes(small_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "check", str(small_root)]) == 0
    assert "| OxfordPets | ok |" in capsys.readouterr().out
    assert main(["data", "check", str(small_root), "--datasets", "Caltech101", "--sample", "2",
                 "--format", "plain"]) == 0
    (small_root / "caltech-101" / "101_ObjectCategories" / "c2" / "test.jpg").unlink()
    assert main(["data", "check", str(small_root), "--datasets", "caltech-101"]) == 1
    assert "missing files" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["data", "check", str(empty)]) == 1
    out = capsys.readouterr().out
    assert "no CoOp dataset folder" in out and "ImageNet (imagenet/)" in out
    assert main(["data", "check", str(empty), "--datasets", "ImageNet-A"]) == 1
    assert main(["data", "check", str(empty), "--datasets", "cifar10"]) == 2
    assert "unknown CoOp dataset" in capsys.readouterr().err


# The 11 datasets' real class counts (CoOp's table) and their base/new halves: base = first ceil(n/2) labels.
REAL_CLASSES = {"ImageNet": 1000, "Caltech101": 100, "OxfordPets": 37, "StanfordCars": 196, "OxfordFlowers": 102,
                "Food101": 101, "FGVCAircraft": 100, "SUN397": 397, "DTD": 47, "EuroSAT": 10, "UCF101": 101}
BASE_NEW = {"ImageNet": (500, 500), "Caltech101": (50, 50), "OxfordPets": (19, 18), "StanfordCars": (98, 98),
            "OxfordFlowers": (51, 51), "Food101": (51, 50), "FGVCAircraft": (50, 50), "SUN397": (199, 198),
            "DTD": (24, 23), "EuroSAT": (5, 5), "UCF101": (51, 50)}


@pytest.fixture(scope="module")
def real_classes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("real") / "data"
    make_root(root, {**REAL_CLASSES, "variants": 3})
    return root


@pytest.mark.parametrize("name", COOP_DATASETS)
def test_base_new_class_counts(real_classes_root: Path, name: str) -> None:
    base, new = base_new_split(load_coop_family(name, real_classes_root))
    assert (base.num_classes, new.num_classes) == BASE_NEW[name]
    assert (len(base.test), len(new.test)) == BASE_NEW[name]  # one test image per class


def test_real_class_counts_match_the_published_table(real_classes_root: Path) -> None:
    rows = check_root(real_classes_root, COOP_DATASETS)
    assert all(r.found is not None and r.found.classes == r.expected.classes for r in rows)
    assert all(r.status == COUNT_MISMATCH for r in rows)  # one image per class is not the published size
