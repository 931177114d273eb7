"""Benchmark: the default backbone's EfficientNet-Lite0 trunk as it runs now vs the library model as it ran before.

The trunk (the frozen image stem of every offline image feature, and of every augmented view a
tuning run encodes) is most of the offline pipeline's time. Two changes, measured apart:
``fuse_for_inference`` folds its BatchNorms and symmetric paddings into the convolutions and runs it
channels-last; ``DefaultBackbone.trunk_outputs`` feeds it ``CPU_TRUNK_CHUNK`` images at a time, so
the memory-bound elementwise passes (ReLU6, residual adds) work in cache. Reference: the library
model on the whole batch (the encoders' batch of 32 before). A fourth row: ``OneDNNTrunk``, the fused
trunk with each ReLU6 and residual add inside its convolution's oneDNN call, which feature extraction
uses where autograd is off (``DefaultBackbone.inference_trunk_outputs``). Setting: 224x224 images (seeded random
pixels: the cost does not depend on them), ``torch.inference_mode``, repeats interleaved so drift
affects every variant alike. Printed: median time per batch and per image, the speed-up, and the
largest difference of the feature maps (float32 rounding).

    python benchmarks/bench_trunk.py --threads 2
    python benchmarks/bench_trunk.py --quick
"""
from __future__ import annotations

import argparse
import sys

import torch

from _common import fmt_ms, machine_info, markdown_table, time_interleaved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 4, 1 repeat")
    parser.add_argument("--batch", type=int, default=32, help="images per forward (default 32, the feature batch)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch, repeats = (4, 1) if args.quick else (args.batch, args.repeats)

    from gramprompt.backbones.default.fused import OneDNNTrunk, fuse_for_inference
    from gramprompt.backbones.default.model import CPU_TRUNK_CHUNK, ONEDNN_TRUNK_CHUNK
    from gramprompt.backbones.default.towers import load_efficientnet_lite0

    library = load_efficientnet_lite0()
    fused = fuse_for_inference(library)
    x = torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 4 - 2
    x_last = x.contiguous(memory_format=torch.channels_last)

    def chunked():
        return torch.cat([fused.extract_features(x_last[i:i + CPU_TRUNK_CHUNK])
                          for i in range(0, batch, CPU_TRUNK_CHUNK)])

    variants = {f"library model, batch {batch} (before)": lambda: library.extract_features(x),
                f"fused, batch {batch}": lambda: fused.extract_features(x_last),
                f"fused, chunks of {CPU_TRUNK_CHUNK} (now)": chunked}
    try:  # feature extraction (DefaultBackbone.inference_trunk_outputs): ReLU6 and residual adds inside oneDNN calls
        onednn = OneDNNTrunk(fused)
        variants[f"fused + oneDNN epilogues, chunks of {ONEDNN_TRUNK_CHUNK} (inference)"] = lambda: torch.cat(
            [onednn.extract_features(x_last[i:i + ONEDNN_TRUNK_CHUNK]) for i in range(0, batch, ONEDNN_TRUNK_CHUNK)])
    except (RuntimeError, TypeError) as err:
        print(f"(no oneDNN variant: {err})", file=sys.stderr)
    with torch.inference_mode():
        ref = library.extract_features(x)
        diffs = {name: float((fn() - ref).abs().max()) for name, fn in variants.items()}
        times = time_interleaved(variants, repeats=repeats, warmup=1)
    print(machine_info())
    print(f"EfficientNet-Lite0 trunk, {batch} images of 224x224, median of {repeats}\n")
    before = next(iter(times.values()))
    rows = [[name, fmt_ms(t), fmt_ms(t / batch), f"{before / t:.2f}x", f"{diffs[name]:.1e}"] for name, t in times.items()]
    print(markdown_table(["trunk", "per batch", "per image", "speed-up", "max |difference| of the feature map"], rows))
    print("\n(feature map values lie in [0, 6]: ReLU6)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
