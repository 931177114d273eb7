"""Bad datasets and options give one clear error naming the culprit, before any training."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gramprompt.data.coop import load_coop
from gramprompt.data.dataset import ClassificationDataset, DatasetError, Sample
from gramprompt.data.imagefolder import load_imagefolder
from gramprompt.data.splits import NotEnoughShotsError, base_new_split
from gramprompt.errors import GramError
from gramprompt.eval import protocols
from gramprompt.eval.protocols import FewShotConfig, base_to_new, transfer, zero_shot_all_classes
from gramprompt.prompts import METHODS
from gramprompt.tuning.config import TuneConfig

TOO_LONG = " ".join(["cat"] * 71)  # 78 tokens in "a photo of a {}." and in CoOp's 4 vectors + "{}."


def _touch(root: Path, *relpaths: str) -> None:
    for rel in relpaths:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")  # existence only; images are not decoded at load time


def _images(per_class: list[int]) -> list[Sample]:
    return [Sample(np.full((8, 8, 3), 40 * label, dtype=np.uint8), label)
            for label, n in enumerate(per_class) for _ in range(n)]


def _dataset(counts: dict[str, int], name: str = "toy") -> ClassificationDataset:
    """Tiny in-memory images: ``counts[class]`` in train and 2 in test per class."""
    return ClassificationDataset(name=name, classnames=list(counts), train=_images(list(counts.values())),
                                 test=_images([2] * len(counts)))


def _no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("training started")
    monkeypatch.setattr(protocols, "train_prompts", fail)


# -- one class ------------------------------------------------------------------------------

def test_single_class_dataset_is_refused_by_base_to_new() -> None:
    with pytest.raises(DatasetError, match=r"'toy' has only one class, 'dog': base-to-new .* at least 2"):
        base_new_split(_dataset({"dog": 4}))


def test_single_class_image_folder_is_refused_at_load(tmp_path: Path) -> None:
    _touch(tmp_path / "pets", *[f"dog/{i}.jpg" for i in range(4)])
    with pytest.raises(DatasetError, match=r"only one class, 'dog': .* at least 2 classes"):
        load_imagefolder(tmp_path / "pets")


# -- too few shots --------------------------------------------------------------------------

def test_too_few_shots_names_the_class_and_the_cli_option(backbone, monkeypatch) -> None:
    _no_training(monkeypatch)
    cfg = FewShotConfig(method="coop", shots=3)
    # base = {dog, rare bird}; "rare bird" (label 1) has 2 training images for 3 shots
    with pytest.raises(NotEnoughShotsError, match=r"class 'rare bird' \(label 1\) has 2 sample\(s\) but 3 shot"
                                                  r".*--allow-fewer-shots"):
        base_to_new(backbone, _dataset({"dog": 4, "rare bird": 2, "cat": 4, "cow": 4}), cfg)


# -- max test per class ---------------------------------------------------------------------

def test_max_test_per_class_zero_names_the_option(backbone) -> None:
    with pytest.raises(GramError, match=r"max_test_per_class \(--max-test-per-class\) must be >= 1.* got 0"):
        FewShotConfig(method="coop", max_test_per_class=0)
    with pytest.raises(GramError, match=r"--max-test-per-class\) must be >= 1"):
        zero_shot_all_classes(backbone, _dataset({"dog": 2, "cat": 2}), max_per_class=0)


# -- class names too long for the text encoder ------------------------------------------------

@pytest.mark.parametrize("method", list(METHODS))
def test_too_long_new_class_is_refused_before_training(backbone, monkeypatch, method) -> None:
    _no_training(monkeypatch)
    cfg = FewShotConfig(method=method, shots=2, tune=TuneConfig(epochs=1))
    # the long name is a *new* class: only met after training unless checked first
    with pytest.raises(GramError, match=rf"'cat cat .*' \(78 tokens\) too long for {method}.* of 77 tokens"):
        base_to_new(backbone, _dataset({"dog": 2, TOO_LONG: 2}), cfg)


def test_too_long_transfer_target_is_refused_before_training(backbone, monkeypatch) -> None:
    _no_training(monkeypatch)
    cfg = FewShotConfig(method="vpt", shots=2)
    target = _dataset({"dog": 2, TOO_LONG: 2}, name="target")
    with pytest.raises(GramError, match=r"\(78 tokens\) too long for vpt"):
        transfer(backbone, _dataset({"cow": 2, "cat": 2}), [target], cfg)


def test_too_long_class_is_refused_by_zero_shot(backbone) -> None:
    with pytest.raises(GramError, match=r"\(78 tokens\) too long for zeroshot"):
        zero_shot_all_classes(backbone, _dataset({"dog": 2, TOO_LONG: 2}))


# -- two folders, one class name --------------------------------------------------------------

def test_folders_reading_as_one_class_name_are_an_error(tmp_path: Path) -> None:
    _touch(tmp_path / "cars", *[f"{c}/{i}.jpg" for c in ("red_car", "red car", "blue_car") for i in range(4)])
    with pytest.raises(DatasetError, match=r"'red car' and 'red_car' .* both read as class 'red car'"):
        load_imagefolder(tmp_path / "cars")


def test_presplit_folders_reading_as_one_class_name_are_an_error(tmp_path: Path) -> None:
    _touch(tmp_path / "cars", "train/red_car/1.jpg", "train/blue_car/1.jpg", "test/red car/1.jpg",
           "test/blue_car/1.jpg")
    with pytest.raises(DatasetError, match=r"'red car' and 'red_car' .* both read as class 'red car'"):
        load_imagefolder(tmp_path / "cars")


def test_coop_split_labels_reading_as_one_class_name_are_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "eurosat"
    (folder / "2750").mkdir(parents=True)
    split = {"train": [["a.jpg", 0, "red_car"], ["b.jpg", 1, "red car"], ["c.jpg", 2, "blue_car"]], "test": []}
    (folder / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    with pytest.raises(DatasetError, match=r"labels 0 and 1 .* both read as class 'red car'"):
        load_coop("EuroSAT", tmp_path)


def test_a_split_file_nested_too_deeply_is_a_dataset_error(tmp_path: Path) -> None:
    """Reliability probe: ``[[[...]]]`` in a split file raised RecursionError."""
    folder = tmp_path / "eurosat"
    (folder / "2750").mkdir(parents=True)
    (folder / "split_zhou_EuroSAT.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DatasetError, match="nested too deeply"):
        load_coop("EuroSAT", tmp_path)


@pytest.mark.parametrize("first,second", [("Cat", "cat"), ("caf\u00e9", "cafe\u0301"), ("red__car", "red_car")])
def test_class_names_one_tokenizer_cannot_tell_apart_are_an_error(tmp_path: Path, first: str, second: str) -> None:
    """Reliability probe: Cat/cat, NFC/NFD café and red__car/red_car passed the duplicate-name check although
    the CLIP tokenizer gives each pair identical prompts."""
    _touch(tmp_path / "set", f"{first}/1.jpg", f"{second}/1.jpg", "dog/1.jpg")
    with pytest.raises(DatasetError, match="both read as class"):
        load_imagefolder(tmp_path / "set")


def test_a_fifo_or_unreadable_image_is_skipped_and_an_unreadable_class_folder_is_an_error(
        tmp_path: Path, monkeypatch, caplog) -> None:
    """Reliability probe: a FIFO named x.png blocked the run forever; a file without read permission was fatal;
    an unreadable class folder was dropped from the label set as if it held no images. (Tests run as root,
    which permissions do not stop, so the missing permission is simulated.)"""
    import os

    root = tmp_path / "set"
    _touch(root, "cat/1.jpg", "cat/2.jpg", "cat/3.jpg", "dog/1.jpg", "dog/3.jpg", "dog/sub/2.jpg")
    os.mkfifo(root / "cat" / "x.png")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: not str(p).endswith("2.jpg") and real_access(p, mode))
    ds = load_imagefolder(root, test_fraction=0.5)
    files = sorted(os.path.relpath(s.source, root) for s in (*ds.train, *ds.test))
    assert files == ["cat/1.jpg", "cat/3.jpg", "dog/1.jpg", "dog/3.jpg"]
    assert "x.png: not a regular file" in caplog.text and "2.jpg: no permission" in caplog.text

    real_scandir = os.scandir

    def scandir(path="."):
        if str(path).endswith("sub"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "access", real_access)
    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DatasetError, match="cannot read the folder .*sub: Permission denied"):
        load_imagefolder(root)


def test_many_classes_of_few_images_get_a_split_message_that_names_the_fix(tmp_path: Path) -> None:
    """Reliability probe: 2,000 classes of 3 images gave scikit-learn's message about test_size."""
    from gramprompt.data.splits import stratified_split

    samples = [Sample(f"{c}/{i}.jpg", c) for c in range(2000) for i in range(3)]
    with pytest.raises(DatasetError, match="cannot put each of the 2000 classes on both sides .*train/ and test/"):
        stratified_split(samples, 0.3, seed=0)
