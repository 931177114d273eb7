"""Benchmark: R few-shot runs trained together (``tuning.multirun.train_many``) vs one after another.

A paper table is hundreds of small runs of one method on one dataset. One CoOp run's step encodes its C class
prompts, one VPT run's step its batch of images: forwards too small to keep the cores busy. ``train_many``
stacks the R runs' contexts and encodes all R x C prompts in one forward (CoOp), or sends all R runs' images,
each with its run's visual prompts, through the image tower at once (VPT). The reference, timed in the same process, is the sequential loop the
runner uses today: ``train_prompts`` once per run. Both start from the same cached image features (one
shared ``FeatureCache``, filled by an untimed warm-up), so the table compares the tuning alone.

Settings (the issue's): 12 CoOp runs on one dataset at CLIP ViT-B/16 size with random weights, or
(``--method vpt``) 6 VPT runs on the shipped default backbone (its cached EfficientNet stems, the prompts in
its token transformer); half of the runs regulated by a random bounded R_phi (GRAM's test-time update), each
with its own seed, init and few-shot sample: 10 classes x 4 shots of synthetic 224x224 images, batch 4,
1 view, 2 epochs. Reported: the time of each way, the ratio, and the largest difference of the tuned
prompts between the two ways (float rounding of the batched forward; a mistake would be O(the update)).

    python benchmarks/bench_multirun.py                  # 12 CoOp runs, ViT-B/16, a few minutes on 2 cores
    python benchmarks/bench_multirun.py --method vpt     # 6 VPT runs, default backbone
    python benchmarks/bench_multirun.py --quick          # smoke run (small preset), seconds
    python benchmarks/bench_multirun.py --device cuda --runs 12 48   # on a GPU, several run counts

``--backbone random-clip`` runs VPT on the random CLIP too (the paper's ViT-B/16, where visual prompts enter a
12-layer ViT; the default backbone's text tower needs a 90 MB package that a GPU machine may lack).

Target (issue 16): >= 4x on 2 CPU cores for 12 CoOp runs. No assertion; run with ``--threads`` as needed.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from _common import (CALTECH101_CLASSNAMES, add_common_args, describe_checkpoint, fmt_s, machine_info, markdown_table,
                     matmul_rate, random_checkpoint, synchronize)

TARGET = 4.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--method", choices=["coop", "vpt"], default="coop",
                        help="coop: ViT-B/16-size random CLIP; vpt: the shipped default backbone")
    parser.add_argument("--runs", type=int, nargs="+",
                        help="runs tuned together, one table row each (default 12 CoOp, 6 VPT; 4 with --quick)")
    parser.add_argument("--backbone", choices=["random-clip", "default"],
                        help="random-weight CLIP of --preset, or the shipped default backbone "
                             "(default: random-clip for coop, default for vpt)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (times synchronize the device)")
    parser.add_argument("--classes", type=int, help="classes (default 10; 5 with --quick)")
    parser.add_argument("--shots", type=int, default=4, help="images per class and run (default 4)")
    parser.add_argument("--batch-size", type=int, default=4, help="tuning batch size (default 4, the offline tables')")
    parser.add_argument("--epochs", type=int, help="tuning epochs (default 2; 1 with --quick)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = args.preset or ("small" if args.quick else "vit-b-16")
    run_counts = args.runs or [4 if args.quick else 12 if args.method == "coop" else 6]
    backbone_kind = args.backbone or ("random-clip" if args.method == "coop" else "default")
    key = "text_ctx" if args.method == "coop" else "visual_ctx"
    n_classes = args.classes or (5 if args.quick else 10)
    epochs = args.epochs or (1 if args.quick else 2)
    repeats = args.repeats or 1

    from gramprompt.backbones import load_backbone
    from gramprompt.data.dataset import Sample
    from gramprompt.meta.regulator import RegulatorConfig, init_regulator, regulate
    from gramprompt.prompts import build_method
    from gramprompt.tuning.config import TuneConfig
    from gramprompt.tuning.features import FeatureCache
    from gramprompt.tuning.multirun import RunSpec, train_many
    from gramprompt.tuning.train import train_prompts

    classnames = CALTECH101_CLASSNAMES[:n_classes]
    cfg = TuneConfig(epochs=epochs, batch_size=args.batch_size, warmup_epochs=0, feature_views=1)
    device = torch.device(args.device)
    source = (random_checkpoint(args.checkpoint, preset, args.seed) if backbone_kind == "random-clip"
              else nullcontext(("default", "shipped weights")))
    with source as (path, how):
        backbone = load_backbone(f"hf:{path}" if backbone_kind == "random-clip" else "default", device=device)
        method = build_method(args.method, backbone)
        gen = torch.Generator().manual_seed(args.seed)
        rng = np.random.default_rng(args.seed)
        regulator = RegulatorConfig(form="bounded", weight_init_std=0.02)
        specs = []
        for r in range(max(run_counts)):
            init = method.init_params(gen)
            samples = [Sample(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8), c)
                       for c in range(n_classes) for _ in range(args.shots)]
            transform = None
            if r % 2:  # a random regulator: CoOp + GRAM's test-time update
                phi = init_regulator(init, regulator, generator=gen)
                transform = lambda g, phi=phi: regulate(phi, g, regulator)  # noqa: E731
            specs.append(RunSpec(init, samples, seed=r + 1, grad_transform=transform, cache_key=("bench", r)))
        cache = FeatureCache(backbone)
        t0 = time.perf_counter()
        for s in specs:  # fills the cache: the encoding is shared by both ways and not timed
            train_prompts(method, s.init, s.samples, classnames, TuneConfig(epochs=1, batch_size=len(s.samples),
                          warmup_epochs=0, feature_views=1), seed=s.seed, cache=cache, cache_key=s.cache_key)
        synchronize()
        encode = time.perf_counter() - t0

        def sequential(runs):
            return [train_prompts(method, s.init, s.samples, classnames, cfg, seed=s.seed, grad_transform=s.grad_transform,
                                  cache=cache, cache_key=s.cache_key) for s in runs]

        def together(runs):
            return train_many(method, runs, classnames, cfg, cache=cache)

        rate = matmul_rate(2048, repeats=5, device=device)
        for _ in range(args.warmup or (1 if device.type == "cuda" else 0)):  # kernel selection, allocator pools
            sequential(specs[:1]), together(specs[:2])
        rows, digests = [], {}
        for n_runs in run_counts:
            times = {"sequential": [], "together": []}
            results = {}
            for _ in range(repeats):
                for name, fn in (("sequential", sequential), ("together", together)):
                    synchronize()
                    t0 = time.perf_counter()
                    results[name] = fn(specs[:n_runs])
                    synchronize()
                    times[name].append(time.perf_counter() - t0)
            seq, tog = (sorted(times[k])[len(times[k]) // 2] for k in ("sequential", "together"))
            digests[n_runs] = {k: prompt_digest(v, key) for k, v in results.items()}
            diff = max(float((a[key] - b[key]).abs().max()) for a, b in zip(results["sequential"], results["together"]))
            moved = max(float((a[key] - s.init[key]).abs().max()) for a, s in zip(results["sequential"], specs))
            counter = FlopCounterMode(display=False)
            with counter, sdpa_kernel(SDPBackend.MATH):  # attention as matmuls, so that they count
                together(specs[:n_runs])
            flops = counter.get_total_flops()
            rows.append([str(n_runs), fmt_s(seq), fmt_s(tog), f"{seq / tog:.2f}x", f">= {TARGET:g}x",
                         f"{flops / 1e9:,.0f}", f"{100 * flops / tog / rate:.0f}%", f"{seq / (flops / rate):.1f}x",
                         f"{diff:.1e}", f"{moved:.1e}"])

    steps = epochs * -(-n_classes * args.shots // args.batch_size)
    name = {"coop": "CoOp", "vpt": "VPT"}[args.method]
    print(f"# Multi-run tuning: {name} runs (half of them regulated) tuned together vs one after another\n")
    print(machine_info())
    described = describe_checkpoint(path) if backbone_kind == "random-clip" else path
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(f"device: {device}{gpu}; backbone: {described} ({how}); {n_classes} classes x {args.shots} shots, batch "
          f"{args.batch_size}, {epochs} epoch(s) = {steps} steps per run; {repeats} repeat(s), median; image "
          f"encoding before timing: {fmt_s(encode)}; fp32 2048^3 matmul rate here: {rate / 1e9:,.0f} GFLOP/s\n")
    print(markdown_table(
        ["runs", "one after another (train_prompts)", "together (train_many)", "speed-up", "target",
         "GFLOP (together)", "together, of the matmul rate", "speed-up bound (all FLOPs at the matmul rate)",
         "max |difference| of the tuned prompts", "largest update (for scale)"], rows))
    for n_runs, d in digests.items():
        print(f"prompt digest, {n_runs} runs: one after another {d['sequential']}, together {d['together']}")
    print("\nThe bound: no way of running the same FLOPs beats the matmul rate, so sequential time / (FLOPs / rate) is the "
          "largest speed-up any batching of these runs can reach here.")
    return 0


def prompt_digest(results: list[dict], key: str) -> str:
    """SHA-256 (first 16 hex digits) of the tuned prompts' bytes, in run order: two code versions whose digests
    match tuned bit-identical prompts (the arithmetic was unchanged)."""
    h = hashlib.sha256()
    for r in results:
        h.update(r[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


if __name__ == "__main__":
    sys.exit(main())
