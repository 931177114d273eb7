"""The benchmark scripts keep running (smoke size; no timing is asserted)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["bench_text_truncation.py", "bench_feature_cache.py", "bench_multirun.py"])
def test_benchmark_prints_its_table(script, tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--checkpoint", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert "| speed-up" in out or "speed-up |" in out


def test_chc_benchmark_prints_its_tables(tmp_path):
    # --tiny: the smallest sizes (~50-70 s on 2 cores, mostly numba compiling in each child process)
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_chc.py"), "--tiny",
                          "--json", str(tmp_path / "chc.json")],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert "| stage | pairs | seconds | pairs/s |" in out and "peak RSS" in out and "speed ratio" in out
    assert (tmp_path / "chc.json").is_file()


def test_meta_step_benchmark_prints_its_table(tmp_path):
    # one thread: on 2 shared cores torch's default threading makes tiny ops crawl
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_meta_step.py"), "--quick", "--threads", "1",
                          "--repeats", "1", "--no-default", "--checkpoint", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert "| speed-up vs loop |" in out and "% of matmul rate" in out and "batched" in out


def test_tar_read_benchmark_prints_its_table():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_tar_read.py"), "--quick", "--reads", "20"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "| offset index (`load_pair_image`) |" in out and "Same pixels from both: True" in out


def test_long_horizon_benchmark_prints_its_tables(tmp_path):
    # --quick: a tiny random CLIP, digits, 2 meta-iterations per form, 2 shots x 2 epochs (~15 s on 2 cores)
    script = [sys.executable, str(ROOT / "benchmarks" / "bench_long_horizon.py"), "--quick", "--threads", "1"]
    out = subprocess.run([*script, "--meta-out", str(tmp_path / "meta")],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert "| theta* from | form | R_phi* | steps | final L2 distance to theta* |" in out
    for form in ("literal", "scale-invariant", "bounded"):
        assert f"| {form} | {form} | with | 20 |" in out and f"| {form} | {form} | without | 20 |" in out
    # existing checkpoints: each regulates with the form its metadata records
    files = [str(tmp_path / "meta" / form / "gram.safetensors") for form in ("bounded", "literal")]
    subprocess.run([*script, "--checkpoint", *files, "--json", str(tmp_path / "lh.json")],
                   capture_output=True, text=True, timeout=300, check=True)
    runs = json.loads((tmp_path / "lh.json").read_text())["runs"]
    assert [(r["form"], r["regulated"]) for r in runs] == [("bounded", True), ("bounded", False),
                                                            ("literal", True), ("literal", False)]
    assert all([e["epoch"] for e in r["epochs"]] == [0, 1, 2] and r["epochs"][0]["distance"] == 0 for r in runs)


def test_trunk_benchmark_prints_its_table():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_trunk.py"), "--quick", "--threads", "1"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert "| trunk | per batch | per image | speed-up |" in out and "fused, chunks of 4 (now)" in out


def test_chc_features_benchmark_prints_its_tables():
    # --quick: 24 openclipart pairs, one run of each path; one thread (see the meta-step test)
    script = [sys.executable, str(ROOT / "benchmarks" / "bench_chc_features.py"), "--quick", "--threads", "1"]
    out = subprocess.run(script, capture_output=True, text=True, timeout=300, check=True).stdout
    assert "| path | time | pairs/s | speed-up |" in out and "| stage | reference | fast | ratio |" in out
    assert "Same rows in both stores: True" in out
