"""Image-folder loading on fabricated folder trees."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gramprompt.data.dataset import DatasetError
from gramprompt.data.imagefolder import load_imagefolder


def _touch(root: Path, *relpaths: str) -> None:
    for rel in relpaths:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")  # existence only; images are not decoded at load time


def test_flat_layout_stratified(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    _touch(root, *[f"golden_retriever/{i}.jpg" for i in range(10)])
    _touch(root, *[f"Abyssinian/sub/{i}.PNG" for i in range(10)])  # recursive, upper-case ext
    _touch(root, "Abyssinian/notes.txt", "Abyssinian/.hidden.jpg", "stray.jpg")
    ds = load_imagefolder(root)
    assert ds.name == "pets"
    assert ds.classnames == ["Abyssinian", "golden retriever"]  # sorted folder names
    assert (len(ds.train), len(ds.test), len(ds.val)) == (14, 6, 0)
    assert [s.label for s in ds.test].count(0) == 3
    for s in ds.train + ds.test:
        want = "Abyssinian" if s.label == 0 else "golden_retriever"
        assert Path(s.source).relative_to(root).parts[0] == want
    again = load_imagefolder(root, name="x")
    assert again.name == "x" and again.train == ds.train
    assert load_imagefolder(root, seed=1).test != ds.test


def test_test_fraction(tmp_path: Path) -> None:
    _touch(tmp_path, *[f"{c}/{i}.jpeg" for c in "ab" for i in range(10)])
    ds = load_imagefolder(tmp_path, test_fraction=0.5)
    assert (len(ds.train), len(ds.test)) == (10, 10)


def test_presplit_layout(tmp_path: Path) -> None:
    _touch(tmp_path, "train/cat/1.jpg", "train/cat/2.jpg", "train/dog/1.webp")
    _touch(tmp_path, "test/cat/3.tif", "test/dog/2.bmp", "test/dog/3.gif")
    _touch(tmp_path, "val/dog/4.tiff")
    ds = load_imagefolder(tmp_path, name="cd")
    assert ds.classnames == ["cat", "dog"]
    assert [s.label for s in ds.train] == [0, 0, 1]
    assert [s.label for s in ds.test] == [0, 1, 1]
    assert [s.label for s in ds.val] == [1]
    assert ds.train[2].source == str(tmp_path / "train/dog/1.webp")


def test_presplit_without_val_and_class_missing_from_test(tmp_path: Path) -> None:
    _touch(tmp_path, "train/a/1.jpg", "train/b/1.jpg", "test/b/2.jpg")
    ds = load_imagefolder(tmp_path)
    assert ds.classnames == ["a", "b"] and ds.val == []
    assert [s.label for s in ds.test] == [1]


def test_presplit_needs_both(tmp_path: Path) -> None:
    _touch(tmp_path, "train/a/1.jpg")
    with pytest.raises(DatasetError, match="test"):
        load_imagefolder(tmp_path)


def test_empty_class_skipped_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _touch(tmp_path, *[f"a/{i}.jpg" for i in range(4)], *[f"c/{i}.jpg" for i in range(4)])
    (tmp_path / "b_empty").mkdir()
    with caplog.at_level(logging.WARNING, logger="gramprompt.data.imagefolder"):
        ds = load_imagefolder(tmp_path)
    assert ds.classnames == ["a", "c"]
    assert "b_empty" in caplog.text


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nowhere"):
        load_imagefolder(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="no class folders"):
        load_imagefolder(tmp_path)
    _touch(tmp_path, "a/readme.txt")
    (tmp_path / "b").mkdir()
    with pytest.raises(DatasetError, match="no image files"):
        load_imagefolder(tmp_path)


def test_single_image_class_is_a_clear_error(tmp_path: Path) -> None:
    _touch(tmp_path, "a/1.jpg", "a/2.jpg", "lonely/1.jpg")
    with pytest.raises(DatasetError, match="lonely"):
        load_imagefolder(tmp_path)
