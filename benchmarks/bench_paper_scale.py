"""Benchmark: the unit costs of the paper-scale GRAM pipeline on CLIP ViT-B/16, with one-GPU estimates.

Measured here on CPU, on a random-weight CLIP ViT-B/16 in HF format (``build_random_clip``; the
architecture and sizes are real, the weights are not, which does not change the cost):

* image feature extraction per image (CHC stage 1, test-image features): the image tower forward;
* one meta-iteration of the paper recipe with the trainer's defaults (``MetaConfig()``: B tasks,
  ``TaskConfig()`` ways, support and query shots; first order; the trainer's own loss,
  ``MetaTrainer._loss``, then ``autograd.grad`` w.r.t. theta and phi) for CoOp (text only, on cached
  image features, exact because the image encoder is frozen), VPT and UNIGRAM (images through the ViT,
  forward and backward). VPT and UNIGRAM run a reduced task (1 task, 1 support + 1 query shot per
  class) and are scaled to the full iteration: FLOPs = B x (reduced + extra images x FLOPs of one
  image's forward+backward, counted separately), dispatched ops x B (the per-task loop runs the
  same ops whatever the image count), saved activations per image x images held at the peak;
* one few-shot tuning step at batch size 1 (CoCoOp's schedule: SGD, momentum, weight decay) for CoOp
  and CoCoOp (cached features), VPT and UNIGRAM (pixels), against C classes (default 50);
* one test image: the image tower forward (zero-shot, CoOp, CoCoOp: cached once per image), the
  prompted image tower forward (VPT, UNIGRAM: every run), and the prompted text forward over C
  classes (once per run or eval batch; CoCoOp: once per test image);
* CPU-side data work per image: JPEG decode + CLIP eval transform, and the training augmentation.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (attention through the math
kernel so that its matmuls count); dispatched ops with a ``TorchDispatchMode`` that skips views (about
the kernels a GPU would launch); activation memory as the peak bytes of the tensors autograd saves for
backward (``torch.autograd.graph.saved_tensors_hooks``, deduplicated by storage, the frozen weights
excluded, released through weak references when the graph frees them). Time is the median wall time
of separate, uninstrumented runs; the achieved FLOP rate is compared with an fp32 matmul timed in the
same run.

The one-GPU estimate is NOT a measurement: time = max(FLOPs / (peak x UTILIZATION), ops x
OP_OVERHEAD_S) for fp32 and for bf16 (constants below, printed with the results); memory = weights +
saved activations (bf16: half the fp32 bytes, assumed). Nothing here runs on a GPU.

    python benchmarks/bench_paper_scale.py --threads 1        # ~3 min on one core
    python benchmarks/bench_paper_scale.py --quick --threads 1  # smoke run (tiny CLIP preset), seconds
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from _common import (CALTECH101_CLASSNAMES, add_common_args, describe_checkpoint, fmt_ms, load_average, machine_info,
                     markdown_table, matmul_rate, random_checkpoint, time_it)

# --------------------------------------------------------------------------- one-GPU assumptions (not measured)
GPU = "NVIDIA H100 SXM5 80 GB"
# dense BF16 tensor-core peak of the H100 SXM5 datasheet (its 1,979 TFLOP/s figure is with 2:4 sparsity)
PEAK_BF16 = 989e12
# FP32 peak of the same datasheet (CUDA cores); PyTorch's default float32 matmul precision ("highest")
# does not use TF32, so fp32 runs (the configs' default dtype) get this rate
PEAK_FP32 = 67e12
# assumed sustained fraction of the peak: these are small batches (batch-1 tuning steps, 20-500 text
# sequences of ~10 tokens, at most 240 images per meta-iteration), far from the large-GEMM regime
UTILIZATION = 0.35
# assumed cost of one dispatched op in PyTorch eager mode on a GPU (CPU-side dispatch + kernel launch,
# ~5-20 us as commonly observed): a floor for steps made of many tiny kernels (batch 1)
OP_OVERHEAD_S = 10e-6
# the evaluation and feature batches over which an image forward's ops are spread (TuneConfig.eval_batch_size,
# FeatureConfig.batch_size)
EVAL_BATCH = 64


# --------------------------------------------------------------------------- instruments
class OpCounter(TorchDispatchMode):
    """Counts dispatched aten ops that do work (views and detach excluded): about a GPU's kernel launches."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.ops += 1
        return func(*args, **(kwargs or {}))


class SavedTensors:
    """Peak bytes of the tensors autograd keeps for backward, deduplicated by storage; ``exclude``: the
    storages not to count (the frozen weights). A storage is released when the last saved tensor that
    refers to it is freed (weak-reference finalizers), so freed graphs (e.g. a support step's) drop out."""

    def __init__(self, exclude: set[int]):
        self.exclude = exclude
        self.live: dict[int, list[int]] = {}  # storage pointer -> [bytes, saved tensors alive]
        self.now = 0
        self.peak = 0

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in self.exclude or storage.nbytes() == 0:
            return t
        entry = self.live.setdefault(ptr, [storage.nbytes(), 0])
        if entry[1] == 0:
            self.now += entry[0]
            self.peak = max(self.peak, self.now)
        entry[1] += 1
        weakref.finalize(t, self._release, ptr)
        return t

    def _release(self, ptr: int) -> None:
        entry = self.live.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self.live[ptr]

    def __enter__(self) -> SavedTensors:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


@dataclass
class Measured:
    """One item as it ran here."""

    key: str
    label: str
    ran: str  # what ran (sizes)
    flops: float
    ops: int
    seconds: float
    saved_bytes: int  # peak saved-for-backward bytes (0 without autograd)


def measure(key: str, label: str, ran: str, fn: Callable[[], object], *, repeats: int, flops_only: bool = False,
            weights: set[int] | None = None) -> Measured:
    """FLOPs (math attention), then ops + saved activations (default kernels; also the warm-up), then
    ``repeats`` timed runs without instruments."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):
        fn()
    flops = counter.get_total_flops()
    if flops_only:
        return Measured(key, label, ran, flops, 0, float("nan"), 0)
    print(f"  {label}: timing ...", file=sys.stderr, flush=True)
    ops = OpCounter()
    with ops, SavedTensors(weights or set()) as saved:
        fn()
    seconds, _ = time_it(fn, repeats=repeats, warmup=0)
    return Measured(key, label, ran, flops, ops.ops, seconds, saved.peak)


def op_overhead_cpu(n: int = 2000) -> float:
    """Seconds per tiny CPU op here (a 1-element add): the dispatcher's own cost, for scale."""
    a, b = torch.ones(1), torch.ones(1)
    for _ in range(200):
        torch.add(a, b)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            torch.add(a, b)
        times.append((time.perf_counter() - t0) / n)
    return statistics.median(times)


# --------------------------------------------------------------------------- CPU-side data work
def synthetic_jpeg(width: int, height: int, quality: int, seed: int) -> bytes:
    """A smooth random image (upsampled noise plus grain), JPEG-encoded: roughly a photo's file size."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    low = Image.fromarray(rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8))
    arr = np.asarray(low.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    arr = np.clip(arr + rng.integers(-12, 13, arr.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def data_rows(transform, repeats: int, seed: int) -> list[list[str]]:
    """Decode + eval transform of JPEGs, and the training augmentation, in ms per image."""
    from gramprompt.data.images import load_image

    rows = []
    for what, (w, h, q) in {"CC3M pair as img2dataset writes it (256x256, quality 95)": (256, 256, 95),
                            "dataset image (500x375, quality 90; ImageNet-like)": (500, 375, 90)}.items():
        data = synthetic_jpeg(w, h, q, seed)
        med, _ = time_it(lambda data=data: transform.eval(load_image(data)), repeats=repeats, warmup=2)
        rows.append([f"decode + eval transform: {what}", f"{len(data) / 1e3:.0f} kB", f"{med * 1e3:.2f} ms"])
    img = load_image(synthetic_jpeg(500, 375, 90, seed))
    gen = torch.Generator().manual_seed(seed)
    med, _ = time_it(lambda: transform.train(img, gen), repeats=repeats, warmup=2)
    rows.append(["training augmentation of a decoded 500x375 image (random resized crop + flip)", "-",
                 f"{med * 1e3:.2f} ms"])
    return rows


# --------------------------------------------------------------------------- the items
def meta_tasks(method, n_tasks: int, ways: int, support: int, query: int, image_size: int, seed: int,
               pixels: bool):
    """B tasks with Caltech101 class names and random cached features (or random pixels)."""
    from gramprompt.meta.step import TaskData
    from gramprompt.prompts import Batch

    gen = torch.Generator().manual_seed(seed)
    bb = method.backbone

    def batch(n: int) -> Batch:
        if pixels:
            return Batch(pixels=torch.randn(n, 3, image_size, image_size, generator=gen))
        return Batch(features=torch.randn(n, bb.embed_dim, generator=gen))

    tasks = []
    for t in range(n_tasks):
        names = CALTECH101_CLASSNAMES[(t * ways) % 100:(t * ways) % 100 + ways]
        tasks.append(TaskData(names, batch(ways * support), torch.arange(ways).repeat(support),
                              batch(ways * query), torch.arange(ways).repeat(query)))
    return tasks


def meta_iteration(bb, method_name: str, prompt, tasks, cfg, out: Path) -> Callable[[], object]:
    """The trainer's meta-iteration on fixed tasks: its loss, then autograd.grad w.r.t. theta and phi
    (statistics off, as on 9 of every 10 iterations; the Adam update of a few KB of prompts is left out)."""
    from gramprompt.autocast import autocast
    from gramprompt.meta.trainer import MetaTrainer
    from gramprompt.prompts import build_method

    method = build_method(method_name, bb, prompt)
    trainer = MetaTrainer(method, None, None, cfg, out)
    state = trainer.initial_state()
    params = [p.requires_grad_(True) for p in [*state.theta.values(), *state.phi.values()]]
    for t in tasks:
        method.text.class_tokens(t.classnames)
        if method.name == "vpt":
            method.text.template_features(t.classnames, method.template)

    def step():
        with autocast(torch.device("cpu"), cfg.autocast):
            loss, _ = trainer._loss(state, tasks, False)
        return torch.autograd.grad(loss, params, allow_unused=True)

    return step


# the tuning steps measured (official prompt shapes of the four compared methods; depth 9 for MaPLe and PromptSRC)
STEP_LABELS = {"coop": "CoOp", "cocoop": "CoCoOp", "vpt": "VPT", "joint": "UNIGRAM", "kgcoop": "KgCoOp",
               "prograd": "ProGrad (16 tokens)", "maple": "MaPLe", "promptsrc": "PromptSRC"}


def tuning_step(bb, method_name: str, prompt, batch, classnames: list[str], seed: int) -> Callable[[], object]:
    """One step of ``train_prompts``: the method's loss and update gradients (cross-entropy and autograd.grad for
    most; KgCoOp's, ProGrad's and PromptSRC's own), SGD (CoCoOp's schedule). Frozen targets (hand-crafted or
    ensemble text features) are computed once beforehand, as the tuner caches them."""
    from gramprompt.prompts import build_method
    from gramprompt.tuning.config import TuneConfig

    method = build_method(method_name, bb, prompt)
    params = {k: v.requires_grad_(True) for k, v in method.init_params(torch.Generator().manual_seed(seed)).items()}
    tc = TuneConfig()
    opt = torch.optim.SGD(list(params.values()), lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    method.text.class_tokens(classnames)
    y = torch.zeros(len(next(v for v in vars(batch).values() if v is not None)), dtype=torch.long)
    method.loss(params, batch, classnames, y)  # warm the frozen-target caches (templates, ensembles)

    def step():
        _, _, grads = method.gradients(params, batch, classnames, y)
        for name, p in params.items():
            p.grad = grads[name]
        opt.step()

    return step


def image_fwd_bwd(bb, tokens: int, image_size: int, seed: int) -> Callable[[], object]:
    """One image through the ViT with ``tokens`` visual prompt tokens, forward and backward to them."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, image_size, image_size, generator=gen)
    ctx = (torch.randn(tokens, bb.vision_width, generator=gen) * 0.02).requires_grad_(True)
    return lambda: torch.autograd.grad(bb.encode_image(x, ctx).sum(), [ctx])


# --------------------------------------------------------------------------- reporting
@dataclass
class Unit:
    """An item at the paper's size, per unit of work: what the estimates use."""

    key: str
    label: str
    unit: str
    flops: float
    ops: float  # dispatched ops per unit (per image: spread over EVAL_BATCH)
    cpu_seconds: float
    saved_bytes: float
    how: str  # "measured" or how it was scaled


def gpu_seconds(u: Unit, peak: float) -> tuple[float, str]:
    compute, launch = u.flops / (peak * UTILIZATION), u.ops * OP_OVERHEAD_S
    return max(compute, launch), "compute" if compute >= launch else "launch"


def fmt_bytes(n: float) -> str:
    if n <= 0:
        return "-"
    return f"{n / 2 ** 30:,.2f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:,.1f} MiB"


def fmt_time(s: float) -> str:
    if s != s:  # nan
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:,.0f} us"
    return fmt_ms(s) if s < 60 else f"{s / 60:,.1f} min"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (use 1 on shared cores)")
    parser.add_argument("--classes", type=int, help="classes of the tuning steps and text forwards (default 50, "
                                                    "Caltech101's base classes; 10 with --quick)")
    parser.add_argument("--images", type=int, help="images per batch of the forward-only items (default 4; 2 with --quick)")
    parser.add_argument("--matmul-size", type=int, help="side of the reference matmul (default 2048; 512 with --quick)")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers to PATH")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = args.preset or ("tiny" if args.quick else "vit-b-16")
    repeats = args.repeats or (1 if args.quick else 2)
    n_classes = args.classes or (10 if args.quick else 50)
    n_img = args.images or (2 if args.quick else 4)
    mm_size = args.matmul_size or (512 if args.quick else 2048)
    if n_classes > len(CALTECH101_CLASSNAMES):
        raise SystemExit(f"--classes must be <= {len(CALTECH101_CLASSNAMES)}")
    classnames = CALTECH101_CLASSNAMES[:n_classes]

    from gramprompt.backbones import load_backbone
    from gramprompt.meta.trainer import MetaConfig
    from gramprompt.prompts import Batch, PromptConfig

    t_start = time.perf_counter()
    cfg = MetaConfig()
    tc = cfg.tasks
    n_tasks, ways, s_full, q_full = cfg.task_batch, tc.ways, tc.support_shots, tc.query_shots
    print("## Paper-scale unit costs: CLIP ViT-B/16 on CPU, and one-GPU estimates")
    print()
    print(machine_info())
    print("the cores were shared with other jobs while this ran: absolute CPU times are upper bounds; use --threads 1")
    rate_start = matmul_rate(mm_size, repeats=5)
    t_op_cpu = op_overhead_cpu()
    print(f"meta-iteration (MetaConfig() defaults): B = {n_tasks} tasks x {ways} ways, {s_full} support + {q_full} "
          f"query shots per class, {cfg.inner_steps} inner step, first order = {not cfg.second_order}, "
          f"regulator {cfg.regulator.shape}, statistics off; tuning: batch 1, {n_classes} classes "
          f"(Caltech101 names), CoCoOp's SGD; 4 tokens (UNIGRAM 2 + 2)")
    print(f"timing: median of {repeats} uninstrumented run(s) after a FLOP-counting run (math attention) and an "
          f"op/activation-counting run (default kernels)")

    measured: list[Measured] = []
    with random_checkpoint(args.checkpoint, preset, args.seed) as (path, how):
        bb = load_backbone(f"hf:{path}")
        vc, tcfg = bb.model.config.vision_config, bb.model.config.text_config
        size = vc.image_size
        weights = {p.untyped_storage().data_ptr() for p in bb.parameters()} | \
                  {b.untyped_storage().data_ptr() for b in bb.buffers()}
        n_params = sum(p.numel() for p in bb.parameters())
        print(f"backbone: {describe_checkpoint(path)}, {how}; image tower {vc.num_hidden_layers} layers x width "
              f"{vc.hidden_size}, {size} px, patch {vc.patch_size}; text tower {tcfg.num_hidden_layers} layers x "
              f"width {tcfg.hidden_size}; {n_params / 1e6:,.1f}M parameters")
        gen = torch.Generator().manual_seed(args.seed)
        pixels = torch.randn(n_img, 3, size, size, generator=gen)
        vis4 = torch.randn(4, bb.vision_width, generator=gen) * 0.02
        ctx = torch.randn(4, bb.text_width, generator=gen) * 0.02
        from gramprompt.prompts import build_method

        coop = build_method("coop", bb)
        coop.text.class_tokens(classnames)

        def no_grad(fn):
            def run():
                with torch.no_grad():
                    return fn()
            return run

        m = lambda *a, **k: measured.append(measure(*a, repeats=repeats, weights=weights, **k))  # noqa: E731
        m("features", "image tower forward (CHC stage 1, cached features)", f"batch {n_img}, no grad",
          no_grad(lambda: bb.encode_image(pixels)))
        m("prompted", "prompted image tower forward (VPT/UNIGRAM test image)", f"batch {n_img}, 4 tokens, no grad",
          no_grad(lambda: bb.encode_image(pixels, vis4)))
        m("text", f"prompted text forward over {n_classes} classes", "no grad",
          no_grad(lambda: coop._context_text_features(ctx, classnames)))
        with tempfile.TemporaryDirectory(prefix="gram-bench-") as tmp:
            tasks = meta_tasks(coop, n_tasks, ways, s_full, q_full, size, args.seed, pixels=False)
            m("meta-coop", "meta-iteration CoOp + GRAM", f"full: {n_tasks} x {ways}-way, {s_full}+{q_full} shots, "
              f"cached features", meta_iteration(bb, "coop", PromptConfig(), tasks, cfg, Path(tmp) / "coop"))
            red = meta_tasks(coop, 1, ways, 1, 1, size, args.seed, pixels=True)
            for key, name, prompt in (("meta-vpt", "vpt", PromptConfig()),
                                      ("meta-unigram", "joint", PromptConfig(text_tokens=2, visual_tokens=2))):
                label = "VPT + GRAM" if name == "vpt" else "UNIGRAM"
                m(key, f"meta-iteration {label}", f"reduced: 1 x {ways}-way, 1+1 shots, pixels",
                  meta_iteration(bb, name, prompt, red, cfg, Path(tmp) / key))
            for tokens in (4, 2):
                measured.append(measure(f"img-{tokens}", f"one image fwd+bwd, {tokens} visual tokens (scaling unit)",
                                        "batch 1", image_fwd_bwd(bb, tokens, size, args.seed), repeats=1,
                                        flops_only=True))
        feats1 = Batch(features=torch.randn(1, bb.embed_dim, generator=gen))
        pix1 = Batch(pixels=torch.randn(1, 3, size, size, generator=gen))
        phrase = "a photo of a"
        for name, batch, prompt in (("coop", feats1, PromptConfig()), ("cocoop", feats1, PromptConfig()),
                                    ("vpt", pix1, PromptConfig()),
                                    ("joint", pix1, PromptConfig(text_tokens=2, visual_tokens=2)),
                                    ("kgcoop", feats1, PromptConfig(text_init=phrase)),
                                    ("prograd", feats1, PromptConfig(text_tokens=16, text_init=phrase)),
                                    ("maple", pix1, PromptConfig(text_tokens=2, text_init=phrase)),
                                    ("promptsrc", pix1, PromptConfig(text_tokens=4, visual_tokens=4, text_init=phrase))):
            label = STEP_LABELS[name]
            m(f"step-{name}", f"tuning step {label}", f"batch 1, {n_classes} classes, "
              f"{'cached features' if batch is feats1 else 'pixels'}",
              tuning_step(bb, name, prompt, batch, classnames, args.seed))
        data = data_rows(bb.transform, repeats=3 if args.quick else 20, seed=args.seed)
    rate_end = matmul_rate(mm_size, repeats=5)
    rate = max(rate_start, rate_end)  # the less disturbed of the two: other jobs share the cores
    print(f"reference: fp32 {mm_size}^3 matmul {rate_start / 1e9:,.1f} GFLOP/s at the start, {rate_end / 1e9:,.1f} "
          f"at the end (medians of 5; the higher is the reference); a 1-element CPU add {t_op_cpu * 1e6:.1f} us per "
          f"op (this machine's dispatch overhead, for scale)")
    print()

    by = {r.key: r for r in measured}
    header = ["item", "ran here", "GFLOP", "ops", "CPU time", "GFLOP/s", "% of matmul rate", "saved activations"]
    table = [[r.label, r.ran, f"{r.flops / 1e9:,.2f}", f"{r.ops:,}" if r.ops else "-", fmt_time(r.seconds),
              f"{r.flops / r.seconds / 1e9:,.1f}" if r.seconds == r.seconds else "-",
              f"{100 * r.flops / r.seconds / rate:.0f}%" if r.seconds == r.seconds else "-", fmt_bytes(r.saved_bytes)]
             for r in measured]
    if args.quick:
        print("--quick: smoke run (tiny model); the numbers are not representative")
    print("### Measured here (CPU)")
    print()
    print(markdown_table(header, table))
    print()

    # ---- per unit at the paper's size
    units: list[Unit] = []
    for key, label in (("features", "image features, per image"), ("prompted", "prompted image forward, per image")):
        r = by[key]
        units.append(Unit(key, label, "image", r.flops / n_img, r.ops / EVAL_BATCH, r.seconds / n_img, 0,
                          f"batch {n_img} / {n_img}; ops spread over batch {EVAL_BATCH}"))
    r = by["text"]
    units.append(Unit("text", f"prompted text forward, {n_classes} classes", "call", r.flops, r.ops, r.seconds, 0,
                      "measured"))
    r = by["meta-coop"]
    units.append(Unit("meta-coop", "meta-iteration CoOp + GRAM", "iteration", r.flops, r.ops, r.seconds,
                      r.saved_bytes, "measured"))
    extra = ways * (s_full + q_full - 2)  # images per task beyond the reduced 1 + 1 shots
    held = ways * max((n_tasks - 1) * q_full + s_full, n_tasks * q_full)  # images whose graphs coexist at the peak
    for key, img, label in (("meta-vpt", "img-4", "meta-iteration VPT + GRAM"),
                            ("meta-unigram", "img-2", "meta-iteration UNIGRAM")):
        r = by[key]
        flops = n_tasks * (r.flops + extra * by[img].flops)
        units.append(Unit(key, label, "iteration", flops, n_tasks * r.ops, r.seconds * flops / r.flops,
                          r.saved_bytes / ways * held,
                          f"scaled: {n_tasks} x (reduced + {extra} images x one image fwd+bwd); ops x {n_tasks}; "
                          f"activations per image x {held} images held; CPU time x FLOPs"))
    for name in STEP_LABELS:
        r = by[f"step-{name}"]
        units.append(Unit(r.key, r.label, "step", r.flops, r.ops, r.seconds, r.saved_bytes, "measured"))

    w32, w16 = n_params * 4, n_params * 2
    header = ["item (paper size)", "unit", "GFLOP", "ops", "CPU time (1 thread here)", "est. 1-GPU fp32",
              "est. 1-GPU bf16", "est. GPU memory fp32 / bf16", "how"]
    table = []
    for u in units:
        g32, b32 = gpu_seconds(u, PEAK_FP32)
        g16, b16 = gpu_seconds(u, PEAK_BF16)
        table.append([u.label, u.unit, f"{u.flops / 1e9:,.2f}", f"{u.ops:,.0f}", fmt_time(u.cpu_seconds),
                      f"{fmt_time(g32)} ({b32})", f"{fmt_time(g16)} ({b16})",
                      f"{fmt_bytes(w32 + u.saved_bytes)} / {fmt_bytes(w16 + u.saved_bytes / 2)}", u.how])
    print("### Per unit at the paper's size, with one-GPU estimates (estimates, not measurements)")
    print()
    print(f"Text-side FLOPs grow linearly with the classes ({n_classes} here; a dataset's base classes in base-to-new); "
          f"the dispatched ops do not. CPU times of scaled rows are the measured time x the FLOP ratio.")
    print(f"Assumed GPU: {GPU}; sustained rate = peak x {UTILIZATION} = {PEAK_FP32 * UTILIZATION / 1e12:.1f} TFLOP/s "
          f"fp32 (peak {PEAK_FP32 / 1e12:.0f}, no TF32: PyTorch's default matmul precision) or "
          f"{PEAK_BF16 * UTILIZATION / 1e12:.0f} TFLOP/s bf16 (peak {PEAK_BF16 / 1e12:.0f}, dense); launch floor "
          f"{OP_OVERHEAD_S * 1e6:.0f} us per dispatched op. Time = max(GFLOP / rate, ops x floor), the larger named. "
          f"Memory = weights ({fmt_bytes(w32)} fp32, {fmt_bytes(w16)} bf16) + saved activations (bf16: half of the "
          f"fp32 bytes, assumed); CUDA context and allocator slack (~0.5-1 GiB) not included.")
    print()
    print(markdown_table(header, table))
    print()
    print("### CPU-side data work per image (stays on the CPU on a GPU machine; one thread)")
    print()
    print(markdown_table(["work", "file size", "time per image"], data))
    print()
    print(f"Whole run {time.perf_counter() - t_start:.0f} s.{load_average().replace(' | ', ' End of run: ')}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": machine_info(), "quick": args.quick, "preset": preset, "threads": torch.get_num_threads(),
            "matmul": {"size": mm_size, "flop_rate": rate, "start": rate_start, "end": rate_end},
            "op_overhead_cpu_s": t_op_cpu,
            "meta_config": asdict(cfg), "classes": n_classes, "images": n_img, "parameters": n_params,
            "assumptions": {"gpu": GPU, "peak_bf16": PEAK_BF16, "peak_fp32": PEAK_FP32, "utilization": UTILIZATION,
                            "op_overhead_s": OP_OVERHEAD_S, "eval_batch": EVAL_BATCH},
            "measured": [asdict(r) for r in measured],
            "units": [asdict(u) | {"gpu_fp32_s": gpu_seconds(u, PEAK_FP32)[0], "gpu_bf16_s": gpu_seconds(u, PEAK_BF16)[0]}
                      for u in units],
            "data": data}, indent=1))
        print(f"numbers written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
