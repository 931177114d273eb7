"""benchmarks/bench_paper_scale.py keeps running and printing its tables (tiny CLIP preset; no timing asserted)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_paper_scale_benchmark_quick(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_paper_scale.py"), "--quick", "--threads", "1",
                          "--checkpoint", str(tmp_path / "clip"), "--json", str(tmp_path / "scale.json")],
                         capture_output=True, text=True, timeout=120, check=True, env=env).stdout
    assert "### Measured here (CPU)" in out and "% of matmul rate" in out
    assert "est. 1-GPU bf16" in out and "est. GPU memory fp32 / bf16" in out and "Assumed GPU" in out
    numbers = json.loads((tmp_path / "scale.json").read_text())
    units = {u["key"]: u for u in numbers["units"]}
    assert {"features", "meta-coop", "meta-vpt", "meta-unigram", "step-coop", "step-cocoop", "step-vpt",
            "step-joint"} <= set(units)
    measured = {m["key"]: m for m in numbers["measured"]}
    # the scaled VPT meta-iteration: B tasks x (reduced task + the extra images' forward+backward)
    cfg = numbers["meta_config"]
    extra = cfg["tasks"]["ways"] * (cfg["tasks"]["support_shots"] + cfg["tasks"]["query_shots"] - 2)
    expected = cfg["task_batch"] * (measured["meta-vpt"]["flops"] + extra * measured["img-4"]["flops"])
    assert abs(units["meta-vpt"]["flops"] - expected) <= 1e-6 * expected
    assert all(u["flops"] > 0 and u["gpu_bf16_s"] > 0 for u in numbers["units"])
    assert measured["step-vpt"]["saved_bytes"] > 0 and measured["features"]["saved_bytes"] == 0
