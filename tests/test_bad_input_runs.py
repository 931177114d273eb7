"""Bad input to `gram fewshot`, `gram transfer` and `gram meta-train` (issue 13): each case ends in one
`gram: error:` line with exit code 2, a counted skip, or a correct result; never a normal-looking
summary of NaN prompts, a stale or mixed run folder, or a traceback."""
from __future__ import annotations

import json

import pytest
import torch

from gramprompt.backbones import load_backbone
from gramprompt.cli import main
from gramprompt.errors import NonFiniteError
from gramprompt.eval.evaluate import evaluate
from gramprompt.meta.checkpoint import save_gram
from gramprompt.meta.regulator import RegulatorConfig, init_regulator
from gramprompt.prompts import build_method
from gramprompt.runs import RunDir, load_prompts
from test_meta_cli import small_hierarchy


def _fewshot(ckpt, out, *extra):
    return main(["fewshot", "--backbone", f"hf:{ckpt}", "--method", "coop", "--dataset", "digits", "--shots", "2",
                 "--seed", "1", "--out", str(out), "--epochs", "1", "--batch-size", "4",
                 "--max-test-per-class", "3", *extra])


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("gram: error: ") and "\n" not in err and "Traceback" not in err
    return err


def _nan_theta(ckpt, path, phi: bool = False):
    theta = build_method("coop", load_backbone(f"hf:{ckpt}")).init_params(torch.Generator().manual_seed(0))
    theta["text_ctx"][1, 2] = float("nan")
    save_gram(path, theta, init_regulator(theta, RegulatorConfig(form="literal")) if phi else {}, {"method": "coop", "regulator": {"shape": "shared"}})
    return path


def test_nan_init_prompts_give_no_summary(tiny_clip_dir, tmp_path, capsys):
    init = _nan_theta(tiny_clip_dir, tmp_path / "nan" / "gram.safetensors")
    assert _fewshot(tiny_clip_dir, tmp_path / "run", "--init", str(init)) == 2
    assert "text_ctx holds NaN" in _error(capsys)
    assert not (tmp_path / "run" / "summary.json").exists()


def test_nan_regulator_is_refused(tiny_clip_dir, tmp_path, capsys):
    theta = build_method("coop", load_backbone(f"hf:{tiny_clip_dir}")).init_params(torch.Generator().manual_seed(0))
    phi = init_regulator(theta, RegulatorConfig(form="literal"))
    phi["text_ctx.b_beta"][0] = float("inf")
    save_gram(tmp_path / "g" / "gram.safetensors", theta, phi, {"method": "coop", "regulator": {"shape": "shared"}})
    assert _fewshot(tiny_clip_dir, tmp_path / "run", "--init", str(tmp_path / "g" / "gram.safetensors")) == 2
    assert "R_phi*" in _error(capsys)


@pytest.mark.parametrize("lr", ["nan", "inf", "-0.1"])
def test_bad_learning_rate(tiny_clip_dir, tmp_path, capsys, lr):
    assert _fewshot(tiny_clip_dir, tmp_path / "run", "--lr", lr) == 2
    assert "--lr" in _error(capsys) and not (tmp_path / "run" / "summary.json").exists()


def test_nan_logits_give_no_accuracy(tiny_clip_dir):
    from gramprompt.data.registry import load_dataset

    method = build_method("coop", load_backbone(f"hf:{tiny_clip_dir}"))
    params = method.init_params(torch.Generator().manual_seed(0))
    params["text_ctx"][0, 0] = float("nan")
    data = load_dataset("digits")
    with pytest.raises(NonFiniteError, match="non-finite logits"):  # argmax would call every image class 0
        evaluate(method, params, data.test[:10], data.classnames)


def test_out_folder_holding_another_run(tiny_clip_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _fewshot(tiny_clip_dir, out) == 0
    first = json.loads((out / "summary.json").read_text())
    # the same settings again: redone from scratch, the log is not appended to
    assert _fewshot(tiny_clip_dir, out) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert json.loads((out / "summary.json").read_text())["base"] == first["base"]
    # other settings: refused, the old run left whole
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert _fewshot(tiny_clip_dir, out, "--seed", "2") == 2
    assert "holds another run" in _error(capsys) and "--overwrite" in capsys.readouterr().err + "--overwrite"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # settings refused before any work (a NaN learning rate) leave the folder's run whole
    assert _fewshot(tiny_clip_dir, out, "--seed", "2", "--overwrite", "--lr", "nan") == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _fewshot(tiny_clip_dir, out, "--seed", "2", "--overwrite") == 0
    assert json.loads((out / "summary.json").read_text())["seed"] == 2


def test_run_files_without_a_config_are_another_run(tmp_path):
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(ValueError, match="without a config.yaml"):
        RunDir.create(tmp_path, {"a": 1})
    (tmp_path / "notes.txt").write_text("mine")
    RunDir.create(tmp_path, {"a": 1}, overwrite=True)
    assert not (tmp_path / "summary.json").exists() and (tmp_path / "notes.txt").read_text() == "mine"


def test_out_that_is_a_file_or_under_a_file(tiny_clip_dir, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert _fewshot(tiny_clip_dir, tmp_path / "f") == 2
    assert "is a file" in _error(capsys)
    assert _fewshot(tiny_clip_dir, tmp_path / "f" / "run") == 2
    assert "cannot write the folder" in _error(capsys)


def test_init_inside_out_is_refused(tiny_clip_dir, tmp_path, capsys):
    assert _fewshot(tiny_clip_dir, tmp_path / "run") == 0
    assert _fewshot(tiny_clip_dir, tmp_path / "run", "--init", str(tmp_path / "run"), "--overwrite") == 2
    assert "lies inside --out" in _error(capsys) and (tmp_path / "run" / "prompts.safetensors").is_file()


def test_truncated_init_file(tiny_clip_dir, tmp_path, capsys):
    assert _fewshot(tiny_clip_dir, tmp_path / "run") == 0
    data = (tmp_path / "run" / "prompts.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    assert _fewshot(tiny_clip_dir, tmp_path / "again", "--init", str(tmp_path / "cut.safetensors")) == 2
    assert "cut.safetensors is not a readable prompts file" in _error(capsys)
    assert _fewshot(tiny_clip_dir, tmp_path / "again", "--init", str(tmp_path / "none.safetensors")) == 2
    assert "no prompts file" in _error(capsys)


def _meta(tiny_clip_dir, hierarchy, out, *extra):
    return main(["meta-train", "--hierarchy", str(hierarchy), "--backbone", f"hf:{tiny_clip_dir}", "--method", "coop",
                 "--out", str(out), "--iterations", "4", "--task-batch", "2", "--ways", "3", "--support-shots", "2",
                 "--query-shots", "2", "--stats-every", "0", *extra])


@pytest.mark.parametrize("option,value,says", [("--lr-theta", "nan", "lr_theta"), ("--inner-lr", "inf", "inner_lr"),
                                               ("--lr-phi", "-1", "lr_phi")])
def test_meta_train_bad_rates(tiny_clip_dir, tmp_path, capsys, option, value, says):
    small_hierarchy(tmp_path, load_backbone(f"hf:{tiny_clip_dir}").embed_dim)
    assert _meta(tiny_clip_dir, tmp_path / "h", tmp_path / "meta", option, value) == 2
    assert says in _error(capsys) and not (tmp_path / "meta" / "gram.safetensors").exists()


def test_meta_train_huge_rate_saves_nothing(tiny_clip_dir, tmp_path, capsys):
    small_hierarchy(tmp_path, load_backbone(f"hf:{tiny_clip_dir}").embed_dim)
    assert _meta(tiny_clip_dir, tmp_path / "h", tmp_path / "meta", "--lr-theta", "1e30", "--iterations", "30") == 2
    assert "non-finite" in _error(capsys) and not (tmp_path / "meta" / "gram.safetensors").exists()


def test_meta_train_hierarchy_of_another_backbone(tiny_clip_dir, tmp_path, capsys):
    width = load_backbone(f"hf:{tiny_clip_dir}").embed_dim
    h = small_hierarchy(tmp_path, width)
    h.info["backbone"] = "hf:/somewhere/else"
    h.save(tmp_path / "other")
    assert _meta(tiny_clip_dir, tmp_path / "other", tmp_path / "meta") == 2
    assert "clustered with backbone 'hf:/somewhere/else'" in _error(capsys)
    small_hierarchy(tmp_path / "wide", width + 8)  # same backbone name unknown, other feature width
    assert _meta(tiny_clip_dir, tmp_path / "wide" / "h", tmp_path / "meta2") == 2
    assert f"holds {width + 8}-d image features" in _error(capsys)


def test_meta_train_rerun_with_other_settings(tiny_clip_dir, tmp_path, capsys):
    small_hierarchy(tmp_path, load_backbone(f"hf:{tiny_clip_dir}").embed_dim)
    out = tmp_path / "meta"
    assert _meta(tiny_clip_dir, tmp_path / "h", out) == 0
    theta = load_prompts(out / "gram.safetensors")[0]["text_ctx"]
    assert _meta(tiny_clip_dir, tmp_path / "h", out, "--iterations", "6") == 0  # more iterations: resumed
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 6
    assert _meta(tiny_clip_dir, tmp_path / "h", out, "--inner-lr", "0.05") == 2
    assert "holds another run" in _error(capsys)
    assert _meta(tiny_clip_dir, tmp_path / "h", out, "--inner-lr", "0.05", "--overwrite") == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4
    assert not torch.equal(load_prompts(out / "gram.safetensors")[0]["text_ctx"], theta)


def test_an_option_added_since_at_its_unset_default_is_the_same_run(tmp_path):
    RunDir.create(tmp_path, {"meta": {"lr": 1.0}})
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    RunDir.create(tmp_path, {"meta": {"lr": 1.0, "form": None}}, resume=True)  # e.g. meta.regulator.form
    assert (tmp_path / "metrics.jsonl").exists()
    with pytest.raises(ValueError, match="form: None there, 'bounded' now"):
        RunDir.create(tmp_path, {"meta": {"lr": 1.0, "form": "bounded"}})


def test_a_negative_seed_and_a_fit_size_of_zero_are_named_before_any_file_is_written(tiny_clip_dir, tmp_path, capsys):
    """Reliability probe: --seed -1 gave NumPy's text and left config.yaml; --fit-size 0 was blamed on
    --umap-neighbors."""
    assert _fewshot(tiny_clip_dir, tmp_path / "run", "--seed", "-1") == 2
    assert "seed (--seed) must be >= 0, got -1" in _error(capsys) and not (tmp_path / "run").exists()
    code = main(["chc", "--pairs", "openclipart", "--backbone", f"hf:{tiny_clip_dir}", "--out", str(tmp_path / "c"),
                 "--fit-size", "0"])
    assert code == 2 and "fit_size (--fit-size) must be >= 2, got 0" in _error(capsys)
    assert not (tmp_path / "c").exists()
