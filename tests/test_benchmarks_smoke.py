"""The benchmark scripts keep running (smoke size; no timing is asserted)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["bench_text_truncation.py", "bench_feature_cache.py"])
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
