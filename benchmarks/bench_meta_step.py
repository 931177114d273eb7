"""Benchmark: one CoOp + GRAM meta-step, the per-task loop vs all tasks' classes batched.

A meta-step is the forward and backward of the meta-loss (``torch.autograd.grad`` w.r.t. theta
and phi) for a batch of B = 4 tasks, 5 ways, 4 support + 8 query shots per class, on cached
image features (random, seeded), one inner step, the literal shared regulator, statistics off
(the trainer computes them every ``stats_every`` iterations only). Variants: first- vs
second-order, and ``meta.step.meta_loss`` (the reference: B text-encoder forwards per inner step
and B for the query) vs ``meta.batched.batched_meta_loss`` (one forward per inner step and one
for the query). Backbones: (a) a random-weight CLIP ViT-B/16 (text tower width 512, 12 layers,
8 heads, context 77) and (b) the shipped default backbone (MiniLM text tower).

FLOPs of a meta-step are counted with ``torch.utils.flop_counter.FlopCounterMode`` (attention
through the math kernel so its matmuls are counted too) and divided by the median time; the
achieved rate is reported against this machine's fp32 matmul rate, measured in the same run on
a large square matmul (2048 x 2048 @ 2048 x 2048 by default).

    python benchmarks/bench_meta_step.py            # a few minutes on 2 cores
    python benchmarks/bench_meta_step.py --quick    # smoke run (small CLIP preset; default backbone too)

Target: the first-order meta-step >= 40% of the measured matmul rate. Times are medians; no assertion.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from _common import (CALTECH101_CLASSNAMES, add_common_args, describe_checkpoint, fmt_ms, load_average, machine_info,
                     markdown_table, matmul_rate, random_checkpoint, time_interleaved)

TARGET = 0.40  # first-order meta-step FLOP rate / matmul rate


def make_tasks(backbone, n_tasks: int, ways: int, support: int, query: int, seed: int):
    """B tasks with different Caltech101 class names and random cached image features."""
    from gramprompt.meta.step import TaskData
    from gramprompt.prompts import Batch

    if n_tasks * ways > len(CALTECH101_CLASSNAMES):
        raise SystemExit(f"--tasks x --ways must be <= {len(CALTECH101_CLASSNAMES)}")
    gen = torch.Generator().manual_seed(seed)
    dev, d = backbone.device, backbone.embed_dim
    tasks = []
    for t in range(n_tasks):
        names = CALTECH101_CLASSNAMES[t * ways:(t + 1) * ways]
        s, q = torch.randn(ways * support, d, generator=gen), torch.randn(ways * query, d, generator=gen)
        tasks.append(TaskData(names, Batch(features=s.to(dev)), torch.arange(ways, device=dev).repeat(support),
                              Batch(features=q.to(dev)), torch.arange(ways, device=dev).repeat(query)))
    return tasks


def bench_backbone(label: str, backbone, args, repeats: int, warmup: int) -> list[dict]:
    """Time, FLOPs and gradient agreement of the four variants on one backbone."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from gramprompt.meta.batched import batched_meta_loss
    from gramprompt.meta.regulator import RegulatorConfig, init_regulator
    from gramprompt.meta.step import meta_loss
    from gramprompt.meta.trainer import MetaConfig
    from gramprompt.prompts import build_method

    method = build_method("coop", backbone)
    gen = torch.Generator().manual_seed(args.seed)
    theta = {k: v.requires_grad_() for k, v in method.init_params(gen).items()}
    regulator = RegulatorConfig(form="literal")  # the form the recorded timings were measured with
    phi = {k: v.requires_grad_() for k, v in init_regulator(theta, regulator, gen).items()}
    params = [*theta.values(), *phi.values()]
    tasks = make_tasks(backbone, args.tasks, args.ways, args.support, args.query, args.seed + 1)
    alpha = MetaConfig().inner_lr

    def step(fn, second_order: bool):
        loss, _ = fn(method, theta, phi, regulator, tasks, alpha, args.inner_steps, second_order, stats=False)
        return [g.detach() for g in torch.autograd.grad(loss, params)]

    losses = {"per-task loop": meta_loss, "batched": batched_meta_loss}
    rows = []
    for order in ("first", "second"):
        fns = {name: (lambda fn=fn, so=order == "second": step(fn, so)) for name, fn in losses.items()}
        grads = {name: fn() for name, fn in fns.items()}
        flops = {}
        for name, fn in fns.items():
            counter = FlopCounterMode(display=False)
            with counter, sdpa_kernel(SDPBackend.MATH):  # attention as matmuls, so they are counted
                fn()
            flops[name] = counter.get_total_flops()
        print(f"  {label}, {order} order: timing ...", file=sys.stderr, flush=True)
        med = time_interleaved(fns, repeats=repeats, warmup=warmup)
        ref = grads["per-task loop"]
        for name in fns:
            diff = max(float((g - r).abs().max() / r.abs().max().clamp_min(1e-30)) for g, r in zip(grads[name], ref))
            rows.append({"backbone": label, "order": order, "variant": name, "seconds": med[name],
                         "speedup": med["per-task loop"] / med[name], "flops": flops[name],
                         "flop_rate": flops[name] / med[name], "grad_rel_diff": diff})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own choice)")
    parser.add_argument("--tasks", type=int, default=4, help="tasks per meta-batch B (default 4)")
    parser.add_argument("--ways", type=int, default=5, help="classes per task (default 5)")
    parser.add_argument("--support", type=int, default=4, help="support shots per class (default 4)")
    parser.add_argument("--query", type=int, default=8, help="query shots per class (default 8)")
    parser.add_argument("--inner-steps", type=int, default=1, help="inner SGD steps N (default 1)")
    parser.add_argument("--matmul-size", type=int,
                        help="side of the square reference matmul (default 2048; 1024 with --quick)")
    parser.add_argument("--no-default", action="store_true", help="skip the shipped default backbone")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers to PATH")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (the matmul reference runs there too)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = args.preset or ("small" if args.quick else "vit-b-16")
    repeats = args.repeats or (2 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else 1
    mm_size = args.matmul_size or (1024 if args.quick else 2048)

    from gramprompt.backbones import load_backbone

    device = torch.device(args.device)
    t_start = time.perf_counter()
    print("## One CoOp + GRAM meta-step: per-task loop vs batched classes")
    print()
    print(machine_info())
    if device.type == "cuda":
        print(f"device: {device} ({torch.cuda.get_device_name(device)}); fp32, TF32 matmul "
              f"{'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}")
    print(f"meta-batch: {args.tasks} tasks x {args.ways} ways, {args.support} support + {args.query} query shots per "
          f"class, cached random image features; CoOp 4 context vectors, shared regulator, {args.inner_steps} inner "
          f"step(s), statistics off; meta-step = meta-loss forward + autograd.grad w.r.t. theta and phi")
    print(f"timing: median of {repeats} repeats after {warmup} warm-up run(s), the two variants of an order "
          f"interleaved; time.perf_counter")
    rate = matmul_rate(mm_size, repeats=max(repeats, 5), warmup=2, device=device)
    print(f"reference: fp32 {mm_size}x{mm_size} @ {mm_size}x{mm_size} matmul, {rate / 1e9:,.1f} GFLOP/s "
          f"(median of {max(repeats, 5)})")

    rows, described = [], []
    with random_checkpoint(args.checkpoint, preset, args.seed) as (path, how):
        bb = load_backbone(f"hf:{path}", device=device)
        tc = bb.model.config.text_config
        label = f"(a) random CLIP {preset}"
        described.append(f"{label}: {describe_checkpoint(path)}, {how}; text tower {tc.num_hidden_layers} layers x "
                         f"width {tc.hidden_size}, {tc.num_attention_heads} heads, context {tc.max_position_embeddings}")
        rows += bench_backbone(label, bb, args, repeats, warmup)
        del bb
    if not args.no_default:
        bb = load_backbone("default", device=device)
        cfg = bb.text.bert.config
        label = "(b) default backbone"
        described.append(f"{label}: MiniLM text tower {cfg.num_hidden_layers} layers x width {cfg.hidden_size}, "
                         f"{cfg.num_attention_heads} heads")
        rows += bench_backbone(label, bb, args, repeats, warmup)

    for line in described:
        print(line)
    print()
    if args.quick:
        print("--quick: smoke run (small model, few repeats); the numbers are not representative")
    header = ["backbone", "order", "variant", "meta-step", "speed-up vs loop", "GFLOP / step", "GFLOP/s",
              "% of matmul rate", "max rel. grad diff vs loop"]
    table = []
    for r in rows:
        pct = 100.0 * r["flop_rate"] / rate
        mark = f"**{pct:.0f}%**" if r["order"] == "first" else f"{pct:.0f}%"
        table.append([r["backbone"], r["order"], r["variant"], fmt_ms(r["seconds"]), f"{r['speedup']:.2f}x",
                      f"{r['flops'] / 1e9:,.2f}", f"{r['flop_rate'] / 1e9:,.1f}", mark, f"{r['grad_rel_diff']:.1e}"])
    print(markdown_table(header, table))
    print()
    fo = [r for r in rows if r["order"] == "first"]
    best = {r["backbone"]: max(x["flop_rate"] for x in fo if x["backbone"] == r["backbone"]) / rate for r in fo}
    verdict = "; ".join(f"{b}: best first-order {100 * v:.0f}% ({'meets' if v >= TARGET else 'below'} target)"
                        for b, v in best.items())
    print(f"Target: first-order CoOp+GRAM meta-step >= {100 * TARGET:.0f}% of the matmul rate. {verdict}. "
          f"Whole run {time.perf_counter() - t_start:.0f} s.{load_average().replace(' | ', ' End of run: ')}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": machine_info(), "quick": args.quick, "matmul": {"size": mm_size, "flop_rate": rate},
            "config": {k: getattr(args, k) for k in ("tasks", "ways", "support", "query", "inner_steps", "seed")}
            | {"repeats": repeats, "warmup": warmup, "preset": preset, "threads": torch.get_num_threads()},
            "target": TARGET, "rows": [r | {"matmul_fraction": r["flop_rate"] / rate} for r in rows],
            "backbones": described}, indent=1))
        print(f"numbers written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
