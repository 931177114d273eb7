"""Benchmark: the default backbone's EfficientNet-Lite0 trunk, fused for inference vs the library model.

The trunk (the frozen image stem of every offline image feature, and of every augmented view a
tuning run encodes) is most of the offline pipeline's time. ``fuse_for_inference`` folds its
BatchNorms and symmetric paddings into the convolutions and runs it channels-last. Setting: a batch
of 224x224 images (seeded random pixels: the cost does not depend on them), forward under
``torch.inference_mode``, repeats interleaved so drift affects both alike. Printed: median time per
batch and per image, the ratio, and the largest difference of the feature maps (float32 rounding).

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

    from gramprompt.backbones.default.fused import fuse_for_inference
    from gramprompt.backbones.default.towers import load_efficientnet_lite0

    library = load_efficientnet_lite0()
    fused = fuse_for_inference(library)
    x = torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 4 - 2
    x_last = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        diff = float((library.extract_features(x) - fused.extract_features(x_last)).abs().max())
        times = time_interleaved({"library": lambda: library.extract_features(x),
                                  "fused": lambda: fused.extract_features(x_last)}, repeats=repeats, warmup=1)
    print(machine_info())
    print(f"EfficientNet-Lite0 trunk, batch {batch} x 224x224, median of {repeats}\n")
    rows = [[name, fmt_ms(t), fmt_ms(t / batch), f"{times['library'] / t:.2f}x"] for name, t in times.items()]
    print(markdown_table(["trunk", "per batch", "per image", "speed-up"], rows))
    print(f"\nlargest |difference| of the 1280x7x7 feature maps: {diff:.2e} (values up to 6, ReLU6)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
