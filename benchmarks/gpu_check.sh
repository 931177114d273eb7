#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go (a few minutes on one GPU): the CPU-vs-CUDA equality tests, then the
# multi-run tuner and the meta-step benchmarks on the device, on a random-weight CLIP ViT-B/16 (no download).
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # default ./gpu-check; every step's output is also saved there
#   GPU_CHECK_PARTS="tests bench pipeline" GPU_CHECK_INPUTS=DIR bash benchmarks/gpu_check.sh OUT
# parts: tests (tests/test_cuda.py), bench (the benchmarks; the default is "tests bench"), pipeline (the smoke config
# `gram experiment run vit_b16/smoke` end to end on the GPU, then `gram drift`, from the inputs that
# benchmarks/gpu_pipeline_inputs.py wrote to DIR: real openclipart pairs and a stand-in caption model; the digits set
# comes with scikit-learn).
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

parts=" ${GPU_CHECK_PARTS:-tests bench} "
versions='import torch, transformers; print(torch.__version__, torch.version.cuda, transformers.__version__)'
step gpu sh -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv && python3 -c '$versions'"
if [[ $parts == *" tests "* ]]; then
    step test_cuda python3 -m pytest tests/test_cuda.py -p no:cacheprovider -rfEs
fi
if [[ $parts == *" bench "* ]]; then
    step multirun_coop python3 benchmarks/bench_multirun.py --device cuda --runs 12 48 --checkpoint "$ckpt"
    step multirun_coop_16shot python3 benchmarks/bench_multirun.py --device cuda --runs 12 --classes 50 --shots 16 \
        --epochs 1 --checkpoint "$ckpt"
    step multirun_vpt python3 benchmarks/bench_multirun.py --device cuda --method vpt --backbone random-clip \
        --runs 6 24 --checkpoint "$ckpt"
    step meta_step python3 benchmarks/bench_meta_step.py --device cuda --no-default --checkpoint "$ckpt" \
        --json "$out/meta_step.json"
fi
if [[ $parts == *" pipeline "* ]]; then
    inputs=$(realpath "${GPU_CHECK_INPUTS:?set GPU_CHECK_INPUTS to the folder gpu_pipeline_inputs.py wrote}")
    [ -f "$ckpt/config.json" ] || python3 -c "from gramprompt.backbones.random_clip import build_random_clip as b; \
b('$ckpt', 'vit-b-16', 0)"
    runs=$(mktemp -d)
    step pipeline env GRAM_RUNS="$runs" GRAM_DATA="$runs" python3 -m gramprompt.cli experiment run vit_b16/smoke \
        --device cuda --set "backbone=hf:$ckpt" --set "hierarchy.pairs=folder:$inputs/pairs" \
        --set "hierarchy.chc.features.text_model=$inputs/text" --set "datasets=[digits]" --set fewshot.tune.epochs=3 \
        --set fewshot.max_test_per_class=20 --set meta.iterations=20
    step drift python3 -m gramprompt.cli drift "$runs/vit_b16-smoke"
fi
echo "failed steps: $failed"
exit "$failed"
