#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go (a few minutes on one GPU): the CPU-vs-CUDA equality tests, then the
# multi-run tuner and the meta-step benchmarks on the device, on a random-weight CLIP ViT-B/16 (no download).
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # default ./gpu-check; every step's output is also saved there
# Runs from a checkout with the package importable (make setup, or PYTHONPATH=src with the dependencies present).
# A step that fails is reported and the next one still runs; the exit status counts the failed steps.
set -uo pipefail
out=${1:-gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
ckpt=${GPU_CHECK_CHECKPOINT:-/tmp/gramprompt-vitb16-random}  # built once, reused by every benchmark below
failed=0

step() {  # step NAME COMMAND...: run, keep the output in $out/NAME.txt, count a failure
    local name=$1; shift
    echo "== $name: $*"
    local t0=$SECONDS
    "$@" 2>&1 | tee "$out/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - t0)) s"
    [ "$rc" = 0 ] || failed=$((failed + 1))
}

step gpu nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
step versions python3 -c "import torch, transformers; print(torch.__version__, torch.version.cuda, transformers.__version__)"
step test_cuda python3 -m pytest tests/test_cuda.py -p no:cacheprovider -rfEs
step multirun_coop python3 benchmarks/bench_multirun.py --device cuda --runs 12 48 --checkpoint "$ckpt"
step multirun_coop_16shot python3 benchmarks/bench_multirun.py --device cuda --runs 12 --classes 50 --shots 16 \
    --epochs 1 --checkpoint "$ckpt"
step multirun_vpt python3 benchmarks/bench_multirun.py --device cuda --method vpt --backbone random-clip \
    --runs 6 24 --checkpoint "$ckpt"
step meta_step python3 benchmarks/bench_meta_step.py --device cuda --no-default --checkpoint "$ckpt" \
    --json "$out/meta_step.json"
echo "failed steps: $failed"
exit "$failed"
