"""The ``gram`` command contract: run folders, summaries, --init, tables, and one-line errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

import torch

from gramprompt.backbones import load_backbone
from gramprompt.cli import main
from gramprompt.eval.protocols import FewShotConfig, initial_params
from gramprompt.prompts import build_method
from gramprompt.runs import load_prompts


def _fewshot(ckpt, out, *extra, method="coop", dataset="digits"):
    return main(["fewshot", "--backbone", f"hf:{ckpt}", "--method", method, "--dataset", dataset, "--shots", "2",
                 "--seed", "1", "--out", str(out), "--epochs", "1", "--batch-size", "4", *extra])


def _imagefolder(root, counts, corrupt=0):
    rng = np.random.default_rng(0)
    for c, n in enumerate(counts):
        d = root / f"class_{c}"
        d.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(d / f"{i}.png")
        for i in range(corrupt):
            (d / f"bad{i}.jpg").write_bytes(b"not an image")
    return root


def test_fewshot_writes_a_complete_run_folder(tiny_clip_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _fewshot(tiny_clip_dir, out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {"base", "new", "h"} <= set(summary) and summary["train_images"] == 5 * 2
    for key in ("base", "new", "h"):
        assert 0.0 <= summary[key] <= 100.0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["method"] == "coop" and config["tune"]["epochs"] == 1 and config["shots"] == 2
    assert [json.loads(l)["epoch"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    params, meta = load_prompts(out)
    assert params["text_ctx"].shape == (4, 32) and meta["classnames"] == ["zero", "one", "two", "three", "four"]
    assert "base" in capsys.readouterr().out

    # --init starts from the stored prompts (checked against the method's names and shapes)
    cfg = FewShotConfig(method="coop", seed=7, init=str(out / "prompts.safetensors"))
    start = initial_params(build_method("coop", load_backbone(f"hf:{tiny_clip_dir}")), cfg)
    assert torch.equal(start["text_ctx"], params["text_ctx"])
    again = tmp_path / "again"
    assert _fewshot(tiny_clip_dir, again, "--init", str(out / "prompts.safetensors")) == 0
    assert json.loads((again / "summary.json").read_text())["init"].endswith("prompts.safetensors")
    assert _fewshot(tiny_clip_dir, tmp_path / "bad", "--init", str(out), method="vpt") == 2
    assert "visual_ctx" in capsys.readouterr().err

    assert main(["table", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "| digits | coop |" in table and "Average" in table


@pytest.mark.parametrize("method", ["zeroshot", "cocoop", "vpt-deep", "joint"])
def test_every_method_runs_from_the_cli(tiny_clip_dir, tmp_path, method):
    assert _fewshot(tiny_clip_dir, tmp_path / method, method=method) == 0
    assert (tmp_path / method / "summary.json").is_file()


def test_transfer_and_corrupt_images(tiny_clip_dir, tmp_path, caplog):
    target = tmp_path / "target"
    _imagefolder(target / "train", [4, 4, 4])
    _imagefolder(target / "test", [3, 3, 3], corrupt=1)
    out = tmp_path / "transfer"
    code = main(["transfer", "--backbone", f"hf:{tiny_clip_dir}", "--method", "coop", "--source", "digits",
                 "--targets", f"imagefolder:{target}", "--shots", "2", "--out", str(out), "--epochs", "1"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["targets"]) == {"target"} and summary["protocol"] == "transfer"
    assert "skipped 3 unreadable image(s) of 12" in caplog.text


def test_too_few_shots_is_an_error_unless_allowed(tiny_clip_dir, tmp_path, capsys):
    data = _imagefolder(tmp_path / "small", [10, 10, 3, 10])
    spec = f"imagefolder:{data}"
    assert _fewshot(tiny_clip_dir, tmp_path / "a", "--shots", "16", dataset=spec) == 2
    assert "class" in capsys.readouterr().err
    assert _fewshot(tiny_clip_dir, tmp_path / "b", "--shots", "16", "--allow-fewer-shots", dataset=spec) == 0


@pytest.mark.parametrize("args, message", [
    (["--dataset", "nope"], "unknown dataset"),
    (["--dataset", "imagefolder:/does/not/exist"], "does/not/exist"),
    (["--backbone", "hf:/does/not/exist"], "not a directory"),
])
def test_bad_input_gives_one_clear_line(tiny_clip_dir, tmp_path, capsys, args, message):
    base = {"--backbone": f"hf:{tiny_clip_dir}", "--dataset": "digits"}
    base.update(dict(zip(args[::2], args[1::2])))
    argv = ["fewshot", "--method", "coop", "--out", str(tmp_path / "x")] + [x for kv in base.items() for x in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gram: error:") and message in err.lower() and len(err.splitlines()) == 1


def test_drift_tabulates_a_fewshot_run_and_exits_0_without_a_verdict(tiny_clip_dir, tmp_path, capsys):
    assert _fewshot(tiny_clip_dir, tmp_path / "runs" / "coop") == 0
    capsys.readouterr()
    assert main(["drift", str(tmp_path / "runs")]) == 0  # exit 1 only when an R_phi* drifted (tests/test_drift.py)
    out = capsys.readouterr().out
    assert "| coop | digits | 1 | fresh init |" in out and "no run here was tuned with an R_phi*" in out
    assert main(["drift", str(tmp_path / "nothing")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_unknown_method_lists_the_valid_ones(capsys):
    with pytest.raises(SystemExit):
        main(["fewshot", "--backbone", "hf:x", "--method", "coop++", "--dataset", "digits", "--out", "x"])
    assert "coop" in capsys.readouterr().err


def _caption_folder(root, topics=6, per_topic=14):
    """Image-caption pairs with ``topics`` caption topics, each drawn in two colours (two domains)."""
    root.mkdir(parents=True)
    words = ["sailing boat", "pine forest", "red apple", "city street", "snowy mountain", "cat portrait"]
    rng = np.random.default_rng(0)
    rows = []
    for i in range(topics * per_topic):
        t, d = i % topics, (i // topics) % 2
        colour = np.array([40 + 30 * t, 200 - 25 * t, 60 + 120 * d])
        pixels = np.clip(colour + rng.normal(0, 8, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{i}.png")
        rows.append({"path": f"{i}.png", "caption": f"{words[t]} photo number {i}"})
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_demo_pipeline_prints_table1_and_reuses_its_stages(tiny_clip_dir, tmp_path):
    from gramprompt.demo import demo_experiments, how_to_read, run_demo
    from gramprompt.experiments.config import load_experiment

    pairs = _caption_folder(tmp_path / "pairs")
    small = [f"root={tmp_path / 'demo'}", f"backbone=hf:{tiny_clip_dir}", f"hierarchy.pairs=folder:{pairs}",
             "datasets=[digits]", "shots=2", "fewshot.max_test_per_class=5",
             "fewshot.tune={epochs: 1, batch_size: 2, warmup_epochs: 0, feature_views: 1}",
             "hierarchy.chc={features: {stems: true}, topics: {umap_neighbors: 8, min_cluster_size: 8}, "
             "domains: {domains: 2, min_domain_size: 3}}",
             "meta={iterations: 2, task_batch: 2, tasks: {ways: 3, support_shots: 2, query_shots: 2}}"]
    experiments = demo_experiments(overrides=small, quick=True)
    report = run_demo(experiments)
    assert "Table 1" in report and "6 topics" in report
    assert "(CHC " in report and ", meta-training " in report and ", few-shot runs " in report  # the stage split
    assert report.rstrip().endswith(how_to_read())
    for row in load_experiment("offline/base2new").rows:
        assert f"| {row.title} |" in report
    summary = tmp_path / "demo" / "runs" / "base2new" / "digits"
    gram_row = json.loads((summary / "coop+gram" / "seed1" / "summary.json").read_text())
    assert gram_row["label"] == "coop+gram" and gram_row["init"].endswith("meta/coop/gram.safetensors")
    stamps = {p: p.stat().st_mtime_ns for p in [*summary.rglob("summary.json"), *(tmp_path / "demo").glob("*/*/gram.*")]}
    assert len(stamps) == 8 + 3  # one run per row; checkpoints of coop, vpt, unigram
    again = run_demo(experiments)  # a second run reuses every stage
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert "few-shot runs" not in again and "zero-shot table" in again
    run_demo(demo_experiments(overrides=[*small, "meta.inner_lr=0.05"], quick=True))  # GRAM rows only are redone
    changed = {p.parent.parent.name for p, t in stamps.items() if p.stat().st_mtime_ns != t and p.name == "summary.json"}
    assert changed == {"coop+gram", "vpt+gram", "unigram"}


def test_the_demo_is_table1_at_a_smaller_size():
    from gramprompt.demo import DEMO, FULL, demo_experiments

    (demo,), (full,) = demo_experiments(DEMO), demo_experiments(FULL)
    assert full.name == "base2new" and demo.root != full.root  # its reduced checkpoints never mix with Table 1's
    assert demo.rows == full.rows and demo.shots == full.shots
    assert demo.datasets == full.datasets[:4]  # Table 1's first four sets: with all six it took over 22 minutes
    assert demo.group == full.group and demo.fewshot["tune"] == full.fewshot["tune"]
    assert tuple(demo.seeds) == (1, 2) and tuple(demo.hierarchy.all_seeds()) == (0,) and len(full.hierarchy.all_seeds()) == 3
    assert demo.meta["iterations"] < full.meta.get("iterations", 300)


def test_several_hierarchies_share_features_and_each_gets_its_own_gram_rows(tiny_clip_dir, tmp_path):
    import yaml

    from gramprompt.experiments.config import load_experiment
    from gramprompt.experiments.runner import plan, run_experiment, summaries

    pairs = _caption_folder(tmp_path / "pairs")
    root = tmp_path / "exp"
    exp = load_experiment("offline/base2new", [
        f"root={root}", f"backbone=hf:{tiny_clip_dir}", f"hierarchy.pairs=folder:{pairs}", "hierarchy.seeds=[4, 7]",
        "datasets=[digits]", "seeds=[1]", "shots=2", "fewshot.max_test_per_class=5",
        "rows=[{label: coop, method: coop}, {label: coop+gram, method: coop, variant: coop, compare: [coop]}]",
        "fewshot.tune={epochs: 1, batch_size: 2, warmup_epochs: 0, feature_views: 1}",
        "hierarchy.chc={topics: {umap_neighbors: 8, min_cluster_size: 8}, domains: {domains: 2, min_domain_size: 3}}",
        "meta={iterations: 2, task_batch: 2, tasks: {ways: 3, support_shots: 2, query_shots: 2}}"])
    assert [(j.kind, j.name) for j in plan(exp)] == [
        ("chc", "chc"), ("chc", "chc-seed7"), ("meta", "coop"), ("meta", "coop-chc-seed7"),
        ("run", "digits/coop/seed1"), ("run", "digits/coop+gram/seed1"), ("run", "digits/coop+gram-chc-seed7/seed1")]
    run_experiment(exp)
    # the first hierarchy's folder holds the features; the second clusters them with its own seed
    assert (root / "chc" / "features").is_dir() and not (root / "chc-seed7" / "features").exists()
    stages = [yaml.safe_load((root / d / "stage.yaml").read_text())["chc"]["seed"] for d in ("chc", "chc-seed7")]
    assert stages == [4, 7]
    assert yaml.safe_load((root / "meta" / "coop-chc-seed7" / "stage.yaml").read_text())["source"] == str(root / "chc-seed7")
    runs = {(s["label"], s.get("hierarchy")): s for s in summaries(exp)}
    assert set(runs) == {("coop", None), ("coop+gram", 4), ("coop+gram", 7)}
    assert runs[("coop+gram", 7)]["init"] == str(root / "meta" / "coop-chc-seed7" / "gram.safetensors")
    # the folders alone (gram table) tell the hierarchies' runs apart: their summaries record the hierarchy
    from gramprompt.eval.table import base2new_table, collect

    folder = collect([root / "runs"])
    assert sorted(s.get("hierarchy") or -1 for s in folder) == [-1, 4, 7]
    assert "1 (hierarchies 4, 7)" in base2new_table(folder)


def test_fewshot_from_a_gram_checkpoint_regulates_every_update(tiny_clip_dir, tmp_path):
    from gramprompt.meta.checkpoint import load_gram, save_gram
    from gramprompt.meta.regulator import RegulatorConfig, init_regulator

    theta = build_method("coop", load_backbone(f"hf:{tiny_clip_dir}")).init_params(torch.Generator().manual_seed(3))
    identity = init_regulator(theta, RegulatorConfig(form="literal"))
    identity["text_ctx.b_gamma"].fill_(20.0)  # gamma = 1, beta = 0: R_phi is the identity
    half = init_regulator(theta, RegulatorConfig(form="literal"))
    half["text_ctx.b_gamma"].fill_(float(np.arctanh(0.5)))  # gamma = 0.5: every step halved
    info = {"method": "coop", "regulator": {"shape": "shared"}}
    save_gram(tmp_path / "id" / "gram.safetensors", theta, identity, info)
    save_gram(tmp_path / "half" / "gram.safetensors", theta, half, info)
    loaded, phi, meta = load_gram(tmp_path / "half" / "gram.safetensors")
    assert torch.equal(loaded["text_ctx"], theta["text_ctx"]) and set(phi) == set(half) and meta == info

    def prompts(init, out, *extra):
        assert _fewshot(tiny_clip_dir, tmp_path / out, "--init", str(tmp_path / init / "gram.safetensors"), *extra) == 0
        return load_prompts(tmp_path / out)[0]["text_ctx"]

    plain = prompts("half", "plain", "--no-regulator")
    torch.testing.assert_close(prompts("id", "identity"), plain)  # identity R_phi == plain SGD
    assert not torch.allclose(prompts("half", "halved"), plain, atol=1e-6)


def test_lr_scale_flag_is_recorded_only_when_set_and_checked(tiny_clip_dir, tmp_path, capsys):
    assert _fewshot(tiny_clip_dir, tmp_path / "plain", method="joint") == 0
    assert "lr_scale" not in yaml.safe_load((tmp_path / "plain" / "config.yaml").read_text())["tune"]
    assert _fewshot(tiny_clip_dir, tmp_path / "scaled", "--lr-scale", "visual=0.3", method="joint") == 0
    assert yaml.safe_load((tmp_path / "scaled" / "config.yaml").read_text())["tune"]["lr_scale"] == {"visual": 0.3}
    capsys.readouterr()
    assert _fewshot(tiny_clip_dir, tmp_path / "coop", "--lr-scale", "visual=0.3") == 2
    assert "which coop does not have" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _fewshot(tiny_clip_dir, tmp_path / "bad", "--lr-scale", "visual", method="joint")
    assert "expected GROUP=X" in capsys.readouterr().err


def test_the_demo_says_what_it_runs_and_how_to_read_it():
    from gramprompt.demo import FULL, demo_experiments, how_to_read, introduction

    text = introduction(demo_experiments())
    for part in ("openclipart:3000", "1 clustering", "seeds 1, 2", "about 13 minutes", "smoke-sized version of Table 1",
                 "docs/RESULTS.md"):
        assert part in text, part
    full = introduction(demo_experiments(FULL))
    assert "3 clustering" in full and "seeds 1, 2, 3, 4, 5" in full and "smoke-sized" not in full
    assert "gram demo --full" in how_to_read() and "contains 0" in how_to_read()
