"""Experiment configs and the runner: loading, expansion (dry run), skipping finished runs, resuming
after a kill, incremental transfer targets, and the tables."""
from __future__ import annotations

import re

import json
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from gramprompt.experiments.config import ConfigError, load_experiment, packaged_configs
from gramprompt.experiments.report import experiment_tables
from gramprompt.experiments.runner import DONE, PENDING, STALE, WAITING, job_status, plan, run_experiment
from gramprompt.prompts import METHODS

# the paper's seven rows, plus joint tuning: the row UNIGRAM is tested against (as in Table 6)
TABLE1_ROWS = ["zeroshot", "cocoop", "coop", "coop+gram", "vpt", "vpt+gram", "joint-2+2", "unigram"]


def _packaged() -> list[str]:
    return sorted(str(p.relative_to(packaged_configs()).with_suffix("")) for p in packaged_configs().rglob("*.yaml")
                  if not p.name.startswith("_"))


@pytest.mark.parametrize("name", _packaged())
def test_every_packaged_config_loads(name, monkeypatch):
    monkeypatch.setenv("GRAM_DATA", "/data")
    exp = load_experiment(name)
    # the first GPU run has one seed (tests/test_smoke_config.py); the offline tables 5 seeds x 3 hierarchies,
    # choosing on validation data and the demo 3 seeds x 1; the paper-scale tables 3 seeds (the paper's) x 1
    seeds = {"vit_b16/smoke": (1,), "offline/validation": (1, 2, 3), "offline/validation_joint": (1, 2, 3),
             "offline/validation_compared": (1, 2, 3),
             "offline/demo": (1, 2)}.get(
        name, (1, 2, 3) if name.startswith("offline/scale/validation/") else
        (1, 2, 3, 4, 5) if name.startswith("offline/") else (1, 2, 3))
    assert exp.rows and exp.seeds == seeds and exp.shots in (4, 16)
    jobs = plan(exp)
    runs = [j for j in jobs if j.kind == "run"]
    hierarchies = len(exp.hierarchy.all_seeds()) if exp.hierarchy else 1
    per_column = sum(len(exp.seeds) * (hierarchies if r.variant and not (exp.variants[r.variant].supervised or
                                                                         exp.variants[r.variant].checkpoint) else 1)
                     for r in exp.rows)
    assert len(runs) == per_column * (len(exp.datasets) if exp.protocol == "base2new" else 1)
    assert {j.variant for j in jobs if j.kind == "meta"} == exp.used_variants() - {
        n for n, v in exp.variants.items() if v.checkpoint}


@pytest.mark.parametrize("setting", ["offline", "vit_b16"])
def test_the_paper_tables_have_their_rows(setting, monkeypatch):
    monkeypatch.setenv("GRAM_DATA", "/data")
    for name in ("base2new", "cross_domain_16shot", "cross_domain_4shot", "cross_dataset_16shot", "cross_dataset_4shot"):
        assert [r.label for r in load_experiment(f"{setting}/{name}").rows] == TABLE1_ROWS, name
    b2n = load_experiment(f"{setting}/base2new")
    assert b2n.protocol == "base2new" and b2n.shots == 16
    assert [load_experiment(f"{setting}/cross_domain_{s}shot").shots for s in (16, 4)] == [16, 4]
    tokens = load_experiment(f"{setting}/tokens")
    assert [r.prompt.text_tokens + r.prompt.visual_tokens for r in tokens.rows] == [2, 4, 6, 8]
    if setting == "vit_b16":
        assert len(b2n.datasets) == 11 and b2n.fewshot["tune"] == {"batch_size": 1, "epochs": 10}
        assert [t.split(":")[1] for t in load_experiment("vit_b16/cross_domain_16shot").targets] == [
            "ImageNetV2", "ImageNet-Sketch", "ImageNet-A", "ImageNet-R"]
        assert len(load_experiment("vit_b16/cross_dataset_16shot").targets) == 10


@pytest.mark.parametrize("setting", ["offline", "vit_b16"])
def test_ablation_rows_change_exactly_one_thing_against_unigram(setting, monkeypatch):
    monkeypatch.setenv("GRAM_DATA", "/data")
    exp = load_experiment(f"{setting}/ablations")
    full = asdict(exp.meta_config(exp.variants["unigram"]))
    expected = {"unigram-no-shift": {"tasks"}, "unigram-no-regulator": {"use_regulator"},
                "unigram-pretrain": {"mode"}, "unigram-supervised": set()}
    rows = {r.label: r for r in exp.rows}
    assert list(rows) == ["unigram", *expected, "joint-2+2"]
    for label, changed in expected.items():
        v = exp.variants[rows[label].variant]
        meta = asdict(exp.meta_config(v))
        assert {k for k in full if meta[k] != full[k]} == changed, label
        assert v.prompt == exp.variants["unigram"].prompt and v.method == "joint"
        assert rows[label].prompt == rows["unigram"].prompt
    assert exp.variants["unigram-supervised"].supervised  # a labelled dataset, like the paper's WebVision
    assert rows["joint-2+2"].variant is None and rows["joint-2+2"].prompt == rows["unigram"].prompt


def _write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_extends_env_and_overrides(tmp_path, monkeypatch):
    _write(tmp_path / "base.yaml", {"backbone": "default", "root": "${GRAM_T_ROOT:-/nowhere}", "seeds": [1, 2],
                                    "fewshot": {"tune": {"epochs": 3, "lr": 0.1}}})
    cfg = _write(tmp_path / "sub" / "x.yaml", {
        "extends": "../base.yaml", "protocol": "base2new", "datasets": ["digits"],
        "fewshot": {"tune": {"epochs": 5}}, "rows": [{"label": "coop", "method": "coop"}]})
    exp = load_experiment(cfg)
    assert exp.name == "x" and exp.group == "x" and exp.root == "/nowhere" and exp.seeds == (1, 2)
    assert exp.fewshot == {"tune": {"epochs": 5, "lr": 0.1}}  # deep merge, the child wins
    fs = exp.fewshot_config(exp.rows[0], 2)
    assert (fs.tune.epochs, fs.tune.lr, fs.seed, fs.shots) == (5, 0.1, 2, 16)
    monkeypatch.setenv("GRAM_T_ROOT", "/data/runs")
    exp = load_experiment(cfg, ["seeds=[7]", "fewshot.tune.lr=0.5", "rows=[{label: zs, method: zeroshot}]"])
    assert exp.root == "/data/runs" and exp.seeds == (7,) and exp.fewshot["tune"] == {"epochs": 5, "lr": 0.5}
    assert [r.label for r in exp.rows] == ["zs"] and exp.rows[0].title == "zs"


def test_a_rows_fewshot_settings_merge_into_the_experiments_for_that_row_only(tmp_path):
    cfg = _write(tmp_path / "x.yaml", {
        "backbone": "default", "root": str(tmp_path), "protocol": "base2new", "datasets": ["digits"],
        "fewshot": {"tune": {"epochs": 3, "lr": 0.1}},
        "rows": [{"label": "joint", "method": "joint"},
                 {"label": "joint-v03", "method": "joint", "fewshot": {"tune": {"lr_scale": {"visual": 0.3}, "lr": 0.2}}}]})
    exp = load_experiment(cfg)
    plain, scaled = (exp.fewshot_config(row, 1) for row in exp.rows)
    assert (plain.tune.epochs, plain.tune.lr, plain.tune.lr_scale) == (3, 0.1, {})
    assert (scaled.tune.epochs, scaled.tune.lr, scaled.tune.lr_scale) == (3, 0.2, {"visual": 0.3})
    with pytest.raises(ConfigError, match="unknown key"):
        load_experiment(cfg, ["rows=[{label: a, method: joint, fewshot: {tune: {lr_scal: {visual: 1}}}}]"])


@pytest.mark.parametrize("override,message", [
    ("fewshot.tune.epoch=3", "unknown key"),
    ("rows=[{label: a, method: coop, variant: nope}]", "variant 'nope'"),
    ("protocol=cross", "protocol must be"),
    ("rows=[{label: a, method: coop}, {label: a, method: vpt}]", "duplicate row labels"),
    ("meta.inner_lr_typo=1", "unknown key"),
    ("tables=[{title: t, rows: [missing]}]", "unknown rows"),
    ("seeds", "KEY=VALUE"),
])
def test_bad_configs_fail_with_a_clear_message(override, message):
    with pytest.raises(ConfigError, match=message):
        load_experiment("offline/base2new", [override])


@pytest.mark.parametrize("override,what", [
    ("rows=[{label: ../../../x, method: coop}]", "row label '../../../x'"),
    ("rows=[{label: /tmp/x, method: coop}]", "row label '/tmp/x'"),
    ("rows=[{label: .hidden, method: coop}]", "row label '.hidden'"),
    ("name=../../x", "name '../../x'"),
    ("group=a/b", "group 'a/b'"),
    ("variants={../../x: {method: coop}}", "variant '../../x'"),
])
def test_names_that_become_folders_cannot_leave_the_root(override, what):
    """Reliability probe: labels, names, groups and variants went into paths unchecked and wrote outside root."""
    with pytest.raises(ConfigError, match=re.escape(what) + " is used as a folder name"):
        load_experiment("offline/base2new", [override])


def test_two_datasets_with_one_folder_name_are_refused(tmp_path):
    """Reliability probe: imagefolder:A/good and imagefolder:B/good shared every run folder (the first overwritten)."""
    with pytest.raises(ConfigError, match="would share the run folder 'good'"):
        load_experiment("offline/base2new", [f"datasets=[imagefolder:{tmp_path}/A/good, imagefolder:{tmp_path}/B/good]"])


def test_missing_environment_variable_is_named(monkeypatch):
    monkeypatch.delenv("GRAM_DATA", raising=False)
    with pytest.raises(ConfigError, match="GRAM_DATA is not set .*: set it to the folder holding the 11 datasets"):
        load_experiment("vit_b16/base2new")


def test_every_variable_a_packaged_config_reads_is_explained():
    import re as re_

    from gramprompt.experiments.config import ENV_VARS

    used = {m for p in packaged_configs().rglob("*.yaml") for m in re_.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", p.read_text())}
    assert used <= set(ENV_VARS), used - set(ENV_VARS)


def _tiny(tmp_path: Path, ckpt: Path, **extra) -> Path:
    """A small base-to-new experiment on digits with a tiny random CLIP (seconds per run)."""
    data = {"name": "tiny", "protocol": "base2new", "backbone": f"hf:{ckpt}", "root": str(tmp_path / "root"),
            "datasets": ["digits"], "seeds": [1, 2], "shots": 2,
            "fewshot": {"max_test_per_class": 5, "tune": {"epochs": 1, "batch_size": 4, "warmup_epochs": 0,
                                                          "feature_views": 1}},
            "rows": [{"label": "zeroshot", "method": "zeroshot"}, {"label": "coop", "method": "coop"}], **extra}
    return _write(tmp_path / "tiny.yaml", data)


def _stamps(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("summary.json")}


def test_dry_run_lists_every_run_then_finished_runs_are_skipped(tiny_clip_dir, tmp_path, capsys):
    from gramprompt.cli import main

    cfg = _tiny(tmp_path, tiny_clip_dir)
    assert main(["experiment", "run", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[2] for line in out.splitlines() if line.startswith("  pending")]
    assert listed == ["digits/zeroshot/seed1", "digits/zeroshot/seed2", "digits/coop/seed1", "digits/coop/seed2"]
    assert not (tmp_path / "root").exists()  # a dry run writes nothing

    assert main(["experiment", "run", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "| coop |" in out and "4 of 4 runs finished" in out
    stamps = _stamps(tmp_path / "root")
    assert len(stamps) == 4 and (tmp_path / "root" / "tiny.md").is_file()
    assert main(["experiment", "run", str(cfg)]) == 0  # everything done: nothing is redone
    assert _stamps(tmp_path / "root") == stamps
    # a changed setting makes exactly the affected runs stale
    exp = load_experiment(cfg, ["rows=[{label: zeroshot, method: zeroshot}, {label: coop, method: coop, "
                                "prompt: {text_tokens: 2}}]"])
    assert [job_status(exp, j) for j in plan(exp)] == [DONE, DONE, STALE, STALE]


def test_runner_resumes_after_a_kill_without_redoing_finished_runs(tiny_clip_dir, tmp_path):
    cfg = _tiny(tmp_path, tiny_clip_dir, seeds=[1, 2, 3])
    proc = subprocess.Popen([sys.executable, "-m", "gramprompt.cli", "experiment", "run", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while len(_stamps(tmp_path / "root")) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished = _stamps(tmp_path / "root")
    assert 2 <= len(finished) < 6, "the kill should land while runs remain"
    exp = load_experiment(cfg)
    run_experiment(exp)
    after = _stamps(tmp_path / "root")
    assert len(after) == 6 and all(after[p] == t for p, t in finished.items())
    assert all(job_status(exp, j) == DONE for j in plan(exp))


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields from the state on ([0] state, [1] ppid, [19] start time); None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _children(pid: int) -> dict[int, str]:
    """The child processes of ``pid`` with their start times (a pid alone could be reused)."""
    stats = {int(d.name): _stat(int(d.name)) for d in Path("/proc").iterdir() if d.name.isdigit()}
    return {p: st[19] for p, st in stats.items() if st is not None and st[1] == str(pid)}


def _alive(pid: int, start: str) -> bool:
    st = _stat(pid)
    return st is not None and st[19] == start and st[0] != "Z"  # an unreaped zombie runs nothing


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads the process table from /proc")
def test_killed_parallel_runner_leaves_no_worker_behind_and_resumes(tiny_clip_dir, tmp_path):
    cfg = _tiny(tmp_path, tiny_clip_dir, seeds=[1, 2, 3])
    proc = subprocess.Popen([sys.executable, "-m", "gramprompt.cli", "experiment", "run", str(cfg), "--jobs", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    try:  # kill once a run has finished: both workers are up and busy with the next ones
        while not _stamps(tmp_path / "root") and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        children = _children(proc.pid)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished = _stamps(tmp_path / "root")
    assert len(children) >= 2 and 1 <= len(finished) < 6, "the kill should land while workers run jobs"
    gone_by = time.monotonic() + 10
    while any(_alive(*c) for c in children.items()) and time.monotonic() < gone_by:
        time.sleep(0.05)
    assert not [p for p, start in children.items() if _alive(p, start)], "processes outlived the killed runner"
    exp = load_experiment(cfg)
    run_experiment(exp)
    after = _stamps(tmp_path / "root")
    assert len(after) == 6 and all(after[p] == t for p, t in finished.items())
    assert all(job_status(exp, j) == DONE for j in plan(exp))


def test_variant_rows_wait_for_their_checkpoint_and_are_redone_when_it_changes(tiny_clip_dir, tmp_path):
    from gramprompt.backbones import load_backbone
    from gramprompt.meta.checkpoint import save_gram
    from gramprompt.meta.regulator import RegulatorConfig, init_regulator
    from gramprompt.prompts import build_method

    ckpt = tmp_path / "given" / "gram.safetensors"
    cfg = _tiny(tmp_path, tiny_clip_dir, seeds=[1], variants={"coop": {"method": "coop", "checkpoint": str(ckpt)}},
                rows=[{"label": "coop+gram", "method": "coop", "variant": "coop"}])
    exp = load_experiment(cfg)
    assert [job_status(exp, j) for j in plan(exp)] == [WAITING]  # a given checkpoint is not meta-trained
    theta = build_method("coop", load_backbone(f"hf:{tiny_clip_dir}")).init_params(
        __import__("torch").Generator().manual_seed(0))
    save_gram(ckpt, theta, init_regulator(theta, RegulatorConfig(form="literal")), {"method": "coop", "regulator": {"shape": "shared"}})
    assert [job_status(exp, j) for j in plan(exp)] == [PENDING]
    run_experiment(exp)
    assert [job_status(exp, j) for j in plan(exp)] == [DONE]
    save_gram(ckpt, {k: v + 1 for k, v in theta.items()}, init_regulator(theta, RegulatorConfig(form="literal")), {"method": "coop"})
    assert [job_status(exp, j) for j in plan(exp)] == [STALE]


def test_a_meta_checkpoint_goes_stale_when_its_hierarchy_or_backbone_changes(tiny_clip_dir, tmp_path):
    from gramprompt.experiments.runner import STAGE, meta_settings

    hierarchy = tmp_path / "chc"
    hierarchy.mkdir()
    (hierarchy / "hierarchy.parquet").write_bytes(b"first clustering")
    cfg = _tiny(tmp_path, tiny_clip_dir, seeds=[1], hierarchy={"path": str(hierarchy)},
                variants={"coop": {"method": "coop"}}, rows=[{"label": "coop+gram", "method": "coop", "variant": "coop"}])
    exp = load_experiment(cfg)
    meta = next(j for j in plan(exp) if j.kind == "meta")
    assert job_status(exp, meta) == PENDING
    meta.out.mkdir(parents=True)
    (meta.out / STAGE).write_text(yaml.safe_dump(meta_settings(exp, "coop"), sort_keys=False))
    (meta.out / "gram.safetensors").write_bytes(b"theta and phi")
    assert job_status(exp, meta) == DONE
    (hierarchy / "hierarchy.parquet").write_bytes(b"second clustering")  # re-clustered at the same path
    assert job_status(exp, meta) == STALE
    (hierarchy / "hierarchy.parquet").write_bytes(b"first clustering")
    assert job_status(exp, meta) == DONE
    other = load_experiment(cfg, ["backbone=default:v1"])
    assert job_status(other, next(j for j in plan(other) if j.kind == "meta")) == STALE


def test_transfer_targets_are_added_without_tuning_again(tiny_clip_dir, tmp_path, capsys):
    from gramprompt.cli import main

    base = dict(protocol="transfer", source="digits", targets=["digits"], seeds=[1], datasets=[],
                rows=[{"label": "coop", "method": "coop", "title": "CoOp"}], group="shared")
    cfg = _tiny(tmp_path, tiny_clip_dir, **base)
    assert main(["experiment", "run", str(cfg)]) == 0
    run = tmp_path / "root" / "runs" / "shared" / "digits" / "coop" / "seed1"
    prompts = (run / "prompts.safetensors").stat().st_mtime_ns
    assert json.loads((run / "summary.json").read_text())["targets"].keys() == {"digits"}
    more = _tiny(tmp_path, tiny_clip_dir, **{**base, "name": "more", "targets": ["digits", "imagefolder:" + str(
        _folder(tmp_path / "pets"))]})
    exp = load_experiment(more)
    assert [job_status(exp, j) for j in plan(exp)] == ["partial"]
    assert main(["experiment", "run", str(more)]) == 0
    out = capsys.readouterr().out
    assert (run / "prompts.safetensors").stat().st_mtime_ns == prompts  # not tuned again
    summary = json.loads((run / "summary.json").read_text())
    assert summary["targets"].keys() == {"digits", "pets"}
    bits = summary["correct"]["targets"]["pets"]  # an added target keeps its per-image correctness too
    assert summary["test_sha256"]["targets"].keys() == {"digits", "pets"}  # and the digest of its test images
    assert len(bits) == 2 and summary["targets"]["pets"] == 100.0 * bits.count("1") / 2  # its test split: 2 of the 6 images
    assert "| CoOp |" in out and "| Method | digits (source) | digits | pets | Average |" in out


def _folder(root: Path) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_tables_use_seed_averaged_base_and_new(tmp_path, tiny_clip_dir):
    exp = load_experiment(_tiny(tmp_path, tiny_clip_dir))
    for job, (base, new) in zip([j for j in plan(exp) if j.row.label == "coop"], [(80.0, 20.0), (40.0, 60.0)]):
        job.out.mkdir(parents=True)
        from gramprompt.experiments.runner import expected_run_config

        (job.out / "config.yaml").write_text(yaml.safe_dump(expected_run_config(exp, job)))
        (job.out / "summary.json").write_text(json.dumps({"protocol": "base2new", "dataset": "digits", "label": "coop",
                                                          "method": "coop", "seed": job.seed, "shots": 2,
                                                          "backbone": "x", "base": base, "new": new}))
    table = experiment_tables(exp)
    assert "| coop | 60.00 | 40.00 | **48.00** |" in table  # H(60, 40) = 48, not the mean of per-seed H (40.0)
    assert "| zeroshot | – | – | – |" in table and "2 of 4 runs finished" in table


def test_a_row_with_some_runs_finished_says_how_many(tmp_path, tiny_clip_dir):
    exp = load_experiment(_tiny(tmp_path, tiny_clip_dir))
    from gramprompt.experiments.runner import expected_run_config

    job = next(j for j in plan(exp) if j.kind == "run" and j.row.label == "coop")
    job.out.mkdir(parents=True)
    (job.out / "config.yaml").write_text(yaml.safe_dump(expected_run_config(exp, job)))
    (job.out / "summary.json").write_text(json.dumps({"protocol": "base2new", "dataset": "digits", "label": "coop",
                                                      "method": "coop", "seed": job.seed, "shots": 2,
                                                      "backbone": "x", "base": 50.0, "new": 50.0}))
    table = experiment_tables(exp)
    assert "| coop (1 of 2 runs) | 50.00 | 50.00 |" in table and "| zeroshot | – |" in table


def test_runs_of_a_row_that_shares_a_forward_are_tuned_together_and_equal_one_by_one(tiny_clip_dir, tmp_path):
    from gramprompt.experiments.runner import batches, run_experiment, summaries

    rows = [{"label": "zeroshot", "method": "zeroshot"}, {"label": "coop", "method": "coop"},
            {"label": "coop-b", "method": "coop", "init_seed": 9}, {"label": "vpt", "method": "vpt"}]
    together = load_experiment(_tiny(tmp_path / "a", tiny_clip_dir, rows=rows))
    units = batches(together, [j for j in plan(together) if j.kind == "run"])
    # both CoOp rows and both seeds share a pass, VPT's seeds another; zero-shot (nothing to tune) runs alone
    assert [[j.name for j in u] for u in units if len(u) > 1] == [
        ["digits/coop/seed1", "digits/coop/seed2", "digits/coop-b/seed1", "digits/coop-b/seed2"],
        ["digits/vpt/seed1", "digits/vpt/seed2"]]
    assert sum(len(u) == 1 for u in units) == 2
    assert [len(u) for u in batches(together, [j for j in plan(together) if j.kind == "run"], max_runs=3)
            if len(u) > 1] == [3, 2]
    run_experiment(together)
    alone = load_experiment(_tiny(tmp_path / "b", tiny_clip_dir, rows=rows))
    run_experiment(alone, max_batch_runs=1)
    key = lambda s: (s["label"], s["seed"])  # noqa: E731
    a, b = sorted(summaries(together), key=key), sorted(summaries(alone), key=key)
    assert [key(s) for s in a] == [key(s) for s in b] and len(a) == 8
    for x, y in zip(a, b):
        assert x.get("runs_together", 1) == {"coop": 4, "vpt": 2}.get(x["method"], 1) and "runs_together" not in y
        assert (x["base"], x["new"], x["correct"]) == (y["base"], y["new"], y["correct"])
    assert [job_status(together, j) for j in plan(together)] == [DONE] * 8  # written as one-by-one runs are


def test_transfer_runs_tuned_together_evaluate_every_target(tiny_clip_dir, tmp_path):
    from gramprompt.experiments.runner import summaries

    cfg = _tiny(tmp_path, tiny_clip_dir, protocol="transfer", source="digits", targets=["digits"], datasets=[],
                rows=[{"label": "coop", "method": "coop"}])
    exp = load_experiment(cfg)
    run_experiment(exp)
    got = sorted(summaries(exp), key=lambda s: s["seed"])
    assert [(s["seed"], s["runs_together"]) for s in got] == [(1, 2), (2, 2)]
    for s in got:
        bits = s["correct"]["targets"]["digits"]
        assert s["targets"]["digits"] == 100.0 * bits.count("1") / len(bits)


def test_a_failed_run_of_a_batch_raises_its_error_naming_the_run(tiny_clip_dir, tmp_path, monkeypatch):
    from gramprompt.errors import NonFiniteError
    from gramprompt.experiments import runner

    exp = load_experiment(_tiny(tmp_path, tiny_clip_dir, rows=[{"label": "coop", "method": "coop"}]))
    monkeypatch.setattr(runner, "base_to_new_many",
                        lambda backbone, dataset, cfgs, runs, cache: [NonFiniteError("lower --lr"), {"seed": 2}])
    with pytest.raises(NonFiniteError, match=r"digits/coop/seed1: lower --lr"):
        run_experiment(exp)


def test_parallel_workers_get_the_costly_units_first(monkeypatch):
    from gramprompt.experiments.runner import batches, longest_first

    monkeypatch.setenv("GRAM_DATA", "/data")
    exp = load_experiment("offline/demo", ["root=/nonexistent-root"])
    jobs = plan(exp)
    metas = longest_first(exp, [j for j in jobs if j.kind == "meta"])
    assert [j.variant for j in metas] == ["vpt", "unigram", "coop"]  # visual first, then plan order
    units = longest_first(exp, batches(exp, [j for j in jobs if j.kind == "run"]))
    costly = [METHODS[u[0].row.method].uses_pixels or METHODS[u[0].row.method].text_per_image for u in units]
    assert costly == sorted(costly, reverse=True) and costly[0] and not costly[-1]
    assert "cocoop" in {u[0].row.method for u in units[:costly.count(True)]}  # B x C text passes: not left for last
    assert sum(len(u) for u in units) == len([j for j in jobs if j.kind == "run"])
    assert len(longest_first(exp, jobs)) == len(jobs)  # CHC jobs (no row) too: `gram demo --jobs 2` once crashed there


@pytest.mark.parametrize("text,message", [
    ("a: &x [1, 2]\nb: *x\n", "anchors and aliases"),
    ("".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10) if i else '1'}]\n" for i in range(8)), "anchors and aliases"),
    ("seeds: [1]\nseeds: [2]\n", "duplicate key 'seeds' \\(first at line 1\\)"),
    ("rows: " + "[" * 200 + "]" * 200 + "\n", "nested deeper than 32"),
    ("extends: 5\n", "extends must be a file name"),
    ("extends: [null]\n", "extends must be a file name"),
])
def test_hostile_or_sloppy_yaml_is_refused_with_the_file_named(tmp_path, text, message):
    """Reliability probe: a 1 KB billion-laughs YAML cost gigabytes, deep nesting raised RecursionError, a
    duplicate key silently won, ``extends: 5`` raised TypeError."""
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_experiment(path)
    assert str(path) in str(err.value)


def test_a_config_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("description: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.yaml: not UTF-8"):
        load_experiment(path)


def test_an_unknown_dtype_is_a_config_error_not_a_keyerror_at_run_time():
    with pytest.raises(ConfigError, match="dtype must be one of fp32, bf16, got 'fp64'"):
        load_experiment("offline/base2new", ["dtype=fp64"])


@pytest.mark.parametrize("override,message", [
    ("meta.iterations=-5", "iterations must be >= 1, got -5"),
    ("hierarchy.chc.domains.domains=0", "domains \\(--domains\\) must be >= 1, got 0"),
    ("seeds=[-1]", "seeds must be distinct and >= 0"),
    ("seeds=[1, 1]", "seeds must be distinct and >= 0"),
    ("datasets=[digits, digits]", "would share the run folder 'digits'"),
    ("fewshot.tune.lr=.nan", "learning rate \\(--lr\\) must be a finite number"),
    ("hierarchy.chc.topics.min_cluster_size=-1", "min_cluster_size \\(--min-cluster-size\\) must be >= 2"),
    ("hierarchy.seeds=[0, 0]", "hierarchy.seeds must be distinct"),
])
def test_plan_refuses_what_run_would_reject_later(override, message):
    """Reliability probe: `gram experiment plan` accepted these, and `run` failed only after meta-training or many
    runs (or, for iterations -5 and domains 0, silently reported an untrained theta* or no domain shift)."""
    with pytest.raises(ConfigError, match=message):
        load_experiment("offline/base2new", [override])


def test_a_missing_variant_checkpoint_is_named_before_any_job(tmp_path):
    exp = load_experiment("offline/base2new", [f"variants.coop.checkpoint={tmp_path}/gone.safetensors"])
    with pytest.raises(ConfigError, match=f"variant 'coop': checkpoint {tmp_path}/gone.safetensors does not exist"):
        exp.check_inputs()


def test_max_batch_runs_and_jobs_below_one_are_parser_errors(capsys):
    from gramprompt.cli import main

    for flag in ("--max-batch-runs", "--jobs"):
        with pytest.raises(SystemExit) as err:
            main(["experiment", "plan", "offline/demo", flag, "0"])
        assert err.value.code == 2 and "must be >= 1, got 0" in capsys.readouterr().err
