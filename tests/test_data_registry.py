"""Dataset spec strings."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gramprompt.data.dataset import DatasetError
from gramprompt.data.registry import dataset_names, load_dataset


def test_builtin_spec() -> None:
    assert "digits" in dataset_names()
    assert load_dataset("digits").name == "digits"
    assert load_dataset(" Digits ").num_classes == 10


def test_imagefolder_spec(tmp_path: Path) -> None:
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(4):
            (tmp_path / c / f"{i}.png").write_bytes(b"")
    ds = load_dataset(f"imagefolder:{tmp_path}")
    assert ds.classnames == ["a", "b"] and len(ds.train) + len(ds.test) == 8


def test_coop_spec_root_may_contain_colon(tmp_path: Path) -> None:
    root = tmp_path / "data:root"
    (root / "eurosat" / "2750").mkdir(parents=True)
    split = {"train": [["x/1.jpg", 0, "Annual_Crop"]], "val": [], "test": [["x/2.jpg", 0, "Annual_Crop"]]}
    (root / "eurosat" / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    ds = load_dataset(f"coop:eurosat:{root}")
    assert ds.name == "EuroSAT" and ds.classnames == ["Annual Crop"]


@pytest.mark.parametrize("spec", ["cifar10", "coop:EuroSAT", "imagefolder:", "coop::/x", ""])
def test_bad_specs_list_valid_forms(spec: str) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset(spec)
    msg = str(info.value)
    assert "imagefolder:PATH" in msg and "coop:NAME:ROOT" in msg and "digits" in msg
