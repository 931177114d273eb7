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
