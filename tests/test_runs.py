import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from gramprompt.runs import RunDir, is_finished, load_prompts, read_summary


def test_create_writes_config_in_given_order(tmp_path):
    cfg = {"method": "coop", "seed": 1, "optim": {"lr": 0.002, "epochs": 5}, "root": Path("/data"),
           "shape": (4, 512)}
    run = RunDir.create(tmp_path / "a" / "b", cfg)
    text = (run.path / "config.yaml").read_text()
    assert list(yaml.safe_load(text)) == ["method", "seed", "optim", "root", "shape"]  # not sorted
    assert run.config == {"method": "coop", "seed": 1, "optim": {"lr": 0.002, "epochs": 5},
                          "root": "/data", "shape": [4, 512]}


def test_log_appends_one_line_per_record(tmp_path):
    run = RunDir.create(tmp_path, {})
    run.log({"step": 1, "loss": 1.5})
    # A fresh handle (as after a restart) keeps appending rather than truncating.
    RunDir(tmp_path).log({"step": 2, "loss": torch.tensor(0.25)})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l) for l in lines] == [{"step": 1, "loss": 1.5}, {"step": 2, "loss": 0.25}]
    # A torn last line (killed mid-write) does not hide the complete ones.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')
    assert [r["step"] for r in run.read_metrics()] == [1, 2]


def test_summary_atomic_and_finished(tmp_path):
    run = RunDir.create(tmp_path, {})
    assert not is_finished(tmp_path) and not run.finished
    run.write_summary({"dataset": "digits", "base": 80.0})
    assert is_finished(tmp_path)
    assert read_summary(tmp_path) == {"dataset": "digits", "base": 80.0}
    assert read_summary(tmp_path / "summary.json") == run.read_summary()
    run.write_summary({"dataset": "digits", "base": 81.0})  # overwrite replaces whole file
    assert read_summary(tmp_path)["base"] == 81.0
    assert sorted(os.listdir(tmp_path)) == ["config.yaml", "summary.json"]  # no temp leftovers


def test_summary_replace_is_atomic(tmp_path, monkeypatch):
    """If writing fails midway, the previous summary survives and no temp file is left."""
    run = RunDir.create(tmp_path, {})
    run.write_summary({"v": 1})
    calls = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append((a, b)), real_replace(a, b)))
    run.write_summary({"v": 2})
    (src, dst), = calls
    assert Path(src).parent == tmp_path and Path(dst) == tmp_path / "summary.json"

    def boom(a, b):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        run.write_summary({"v": 3})
    assert read_summary(tmp_path) == {"v": 2}
    assert sorted(os.listdir(tmp_path)) == ["config.yaml", "summary.json"]


def test_prompts_round_trip(tmp_path):
    run = RunDir.create(tmp_path, {})
    base = torch.randn(8, 16, requires_grad=True)
    params = {"ctx": base, "ctx_t": base.detach().t(), "vpt": torch.arange(6.0).view(2, 3)}
    meta = {"method": "coop+gram", "n_ctx": 4, "classnames": ["a", "b"]}
    path = run.save_prompts(params, meta)
    assert path == tmp_path / "prompts.safetensors"
    assert json.loads((tmp_path / "prompts.json").read_text()) == meta
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["gramprompt"]) == meta

    for source in (tmp_path, path):
        tensors, got_meta = load_prompts(source)
        assert got_meta == meta
        assert set(tensors) == set(params)
        for k, v in params.items():
            assert torch.equal(tensors[k], v.detach())
            assert tensors[k].device.type == "cpu"
    assert torch.equal(run.load_prompts()[0]["ctx_t"], base.detach().t())
