"""FewShotConfig.init_seed (Fig. 1a) and eval_every_epoch (Fig. 3a): per-epoch records, unchanged defaults."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml
from PIL import Image

from gramprompt.cli import main
from gramprompt.data.registry import load_dataset
from gramprompt.data.splits import base_new_split
from gramprompt.eval import protocols
from gramprompt.eval.protocols import FewShotConfig, base_to_new, initial_params, run_config, transfer
from gramprompt.prompts import build_method
from gramprompt.runs import RunDir
from gramprompt.tuning.config import TuneConfig


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _cfg(method="coop", **kw) -> FewShotConfig:
    return FewShotConfig(method=method, shots=2, seed=1, max_test_per_class=4,
                         tune=TuneConfig(epochs=3, batch_size=4, lr=0.05), **kw)


def _run(tmp_path, name, backbone, cfg) -> RunDir:
    return RunDir.create(tmp_path / name, run_config(backbone.name, ["digits"], cfg, "base2new"))


@pytest.mark.parametrize("method", ["coop", "vpt"])
def test_eval_every_epoch_logs_one_record_per_epoch_ending_at_the_summary(backbone, digits, tmp_path, method):
    cfg = _cfg(method, eval_every_epoch=True)
    run = _run(tmp_path, "on", backbone, cfg)
    s = base_to_new(backbone, digits, cfg, run=run)
    records = [r for r in run.read_metrics() if "test_base" in r]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert all(set(r) == {"epoch", "test_base", "test_new"} for r in records)
    assert records[-1]["test_base"] == s["base"] and records[-1]["test_new"] == s["new"]
    assert run.config["eval_every_epoch"] is True

    # off (the default): no such records, and the very same training and accuracies
    plain = dataclasses.replace(cfg, eval_every_epoch=False)
    off = _run(tmp_path, "off", backbone, plain)
    s_off = base_to_new(backbone, digits, plain, run=off)
    assert not [r for r in off.read_metrics() if "test_base" in r]
    assert (s_off["base"], s_off["new"]) == (s["base"], s["new"])
    a, b = run.load_prompts()[0], off.load_prompts()[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_eval_every_epoch_in_transfer_logs_source_and_targets(backbone, digits, tmp_path):
    base, new = base_new_split(digits)
    target = dataclasses.replace(new, name="digits-new")  # its own cache keys
    cfg = dataclasses.replace(_cfg(eval_every_epoch=True), tune=TuneConfig(epochs=2, batch_size=4))
    run = RunDir.create(tmp_path / "t", run_config(backbone.name, ["digits", "digits-new"], cfg, "transfer"))
    s = transfer(backbone, base, [target], cfg, run=run)
    records = [r for r in run.read_metrics() if "test_source" in r]
    assert [r["epoch"] for r in records] == [1, 2]
    assert set(records[-1]["test_targets"]) == {"digits-new"}
    assert records[-1]["test_source"] == s["source"] and records[-1]["test_targets"] == s["targets"]


def test_eval_every_epoch_needs_a_run_folder(backbone, digits):
    with pytest.raises(ValueError, match="run folder"):
        base_to_new(backbone, digits, _cfg(eval_every_epoch=True))


def test_init_seed_defaults_to_the_seed_bit_identically(backbone):
    coop = build_method("coop", backbone)
    before = coop.init_params(torch.Generator().manual_seed(3))  # what initial_params did before init_seed
    assert torch.equal(initial_params(coop, FewShotConfig("coop", seed=3))["text_ctx"], before["text_ctx"])
    assert torch.equal(initial_params(coop, FewShotConfig("coop", seed=3, init_seed=3))["text_ctx"],
                       before["text_ctx"])
    assert not torch.equal(initial_params(coop, FewShotConfig("coop", seed=3, init_seed=4))["text_ctx"],
                           before["text_ctx"])


def test_init_seeds_differ_on_the_same_few_shot_sample(backbone, digits, tmp_path, monkeypatch):
    seen = []
    real = protocols.train_prompts

    def spy(method, init, samples, classnames, cfg, **kw):
        seen.append(({k: v.clone() for k, v in init.items()}, [(s.label, s.source.tobytes()) for s in samples],
                     kw["seed"]))
        return real(method, init, samples, classnames, cfg, **kw)

    monkeypatch.setattr(protocols, "train_prompts", spy)
    out = {}
    for name, init_seed in (("default", None), ("same", 1), ("five", 5), ("six", 6)):
        cfg = _cfg(init_seed=init_seed)
        out[name] = base_to_new(backbone, digits, cfg, run=_run(tmp_path, name, backbone, cfg))
    (d, d_samples, d_seed), (same, _, _), (five, s5, seed5), (six, s6, seed6) = seen
    assert d_samples == s5 == s6 and d_seed == seed5 == seed6 == 1  # one few-shot sample and shuffling
    assert torch.equal(d["text_ctx"], same["text_ctx"])
    assert not torch.equal(five["text_ctx"], six["text_ctx"]) and not torch.equal(d["text_ctx"], five["text_ctx"])
    assert out["default"]["base"] == out["same"]["base"] and out["default"]["new"] == out["same"]["new"]
    assert "init_seed" not in out["default"] and out["five"]["init_seed"] == 5


def test_defaults_leave_config_yaml_as_it_was(backbone):
    config = run_config(backbone.name, ["digits"], FewShotConfig("coop"), "base2new")
    assert "init_seed" not in config and "eval_every_epoch" not in config
    config = run_config(backbone.name, ["digits"], FewShotConfig("coop", init_seed=2, eval_every_epoch=True), "base2new")
    assert config["init_seed"] == 2 and config["eval_every_epoch"] is True


def test_cli_flags_and_fig3a_end_to_end(tiny_clip_dir, tmp_path, capsys):
    runs = tmp_path / "runs"
    for label, init_seed in (("coop-random-5", "5"), ("coop-random-6", "6")):
        for seed in ("1", "2"):
            code = main(["fewshot", "--backbone", f"hf:{tiny_clip_dir}", "--method", "coop", "--dataset", "digits",
                         "--shots", "2", "--seed", seed, "--epochs", "2", "--batch-size", "4",
                         "--max-test-per-class", "4", "--label", label, "--init-seed", init_seed,
                         "--eval-every-epoch", "--out", str(runs / label / f"seed{seed}")])
            assert code == 0
    one = runs / "coop-random-5" / "seed1"
    config = yaml.safe_load((one / "config.yaml").read_text())
    assert config["init_seed"] == 5 and config["eval_every_epoch"] is True
    assert json.loads((one / "summary.json").read_text())["init_seed"] == 5
    epochs = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if "test_base" in r] == [1, 2]

    for figure in ("fig3a", "fig1a"):
        png = tmp_path / f"{figure}.png"
        assert main(["figure", figure, str(runs), "--out", str(png)]) == 0
        with Image.open(png) as img:
            assert img.format == "PNG" and img.width > 100 and img.height > 100
    assert "wrote" in capsys.readouterr().out


def test_a_run_records_the_digest_of_the_test_images_it_was_scored_on(backbone, digits):
    from gramprompt.data.dataset import samples_sha256
    from gramprompt.data.splits import few_shot

    base, new = base_new_split(digits)
    for cap in (4, None):
        s = base_to_new(backbone, digits, dataclasses.replace(_cfg("coop"), max_test_per_class=cap))
        for name, split in (("base", base), ("new", new)):
            tested = split.test if cap is None else few_shot(split.test, cap, 0, allow_fewer=True,
                                                             classnames=split.classnames)
            assert len(s["correct"][name]) == len(tested)
            assert s["test_sha256"][name] == samples_sha256(tested)
    assert s["test_sha256"]["base"] != s["test_sha256"]["new"]
