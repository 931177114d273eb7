"""Benchmark: CoOp text encoding truncated at the longest EOT vs the full 77-token sequence.

What CoOp's forward does for every step: splice the learned context vectors after SOS of the
cached class-name tokens (``splice_context(method.text.class_tokens(names), ctx)``) and run the
text tower. gramprompt keeps only the positions up to the longest EOT (``backbone.truncate =
True``); the reference is the original CoOp layout, every prompt padded to the 77-token context
and the causal transformer run over all 77 positions (``backbone.truncate = False``). The causal
mask and EOT pooling make the two exact up to float rounding, which the table checks.

    python benchmarks/bench_text_truncation.py            # ViT-B/16 text tower, a few minutes
    python benchmarks/bench_text_truncation.py --quick    # smoke run, seconds

Target: truncation >= 3x faster (forward and forward+backward). Times are medians; no assertion.
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from _common import (CALTECH101_CLASSNAMES, add_common_args, describe_checkpoint, fmt_ms, load_average, machine_info,
                     markdown_table, random_checkpoint, time_interleaved)

TARGET = 3.0
BATCH = 32  # image features per step in the loss (a CoOp batch); they do not touch the text tower


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--classes", type=int, nargs="+",
                        help="numbers of class names (Caltech101 order, at most 100); default 10 25 50 100")
    args = parser.parse_args(argv)
    preset = args.preset or ("small" if args.quick else "vit-b-16")
    counts = args.classes or ([10, 25] if args.quick else [10, 25, 50, 100])
    repeats = args.repeats or (2 if args.quick else 3)
    warmup = args.warmup if args.warmup is not None else 1
    if max(counts) > len(CALTECH101_CLASSNAMES) or min(counts) < 1:
        parser.error(f"--classes must be between 1 and {len(CALTECH101_CLASSNAMES)}")

    from gramprompt.backbones import load_backbone
    from gramprompt.prompts import build_method
    from gramprompt.prompts.text import ClassNameTokens, splice_context

    print("## CoOp text encoding: truncated at the longest EOT vs full 77-token sequence")
    print()
    print(machine_info())
    with random_checkpoint(args.checkpoint, preset, args.seed) as (path, how):
        bb = load_backbone(f"hf:{path}")
        method = build_method("coop", bb)
        params = method.init_params(torch.Generator().manual_seed(args.seed))
        ctx0 = params["text_ctx"].detach()
        m, full_len = ctx0.shape[0], bb.context_length
        gen = torch.Generator().manual_seed(args.seed + 1)
        img = F.normalize(torch.randn(BATCH, bb.embed_dim, generator=gen), dim=-1).to(bb.device)
        scale = bb.logit_scale().detach().float()
        print(f"checkpoint: {describe_checkpoint(path)}, {how}; text tower: {bb.model.config.text_config.num_hidden_layers} "
              f"layers x width {bb.text_width}; CoOp context: {m} vectors (random init, seed {args.seed})")
        print(f"timing: median of {repeats} repeats after {warmup} warm-up run(s), variants interleaved; "
              f"forward under torch.no_grad; forward+backward = CoOp loss (cross-entropy of {BATCH} image "
              f"features vs the class prompts) and torch.autograd.grad w.r.t. the context")
        print(f"class names: the first N of Caltech101's 100 (CoOp order), prompt '[SOS] ctx x{m} <name>. [EOT]'")
        print()

        def encode(tokens: ClassNameTokens, truncate: bool, ctx: torch.Tensor) -> torch.Tensor:
            bb.truncate = truncate
            embeds, lengths = splice_context(tokens, ctx)
            return bb.encode_text_embeddings(embeds, lengths)

        def forward(tokens: ClassNameTokens, truncate: bool) -> torch.Tensor:
            with torch.no_grad():
                return encode(tokens, truncate, ctx0)

        def forward_backward(tokens: ClassNameTokens, truncate: bool, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            ctx = ctx0.clone().requires_grad_(True)
            feats = encode(tokens, truncate, ctx)
            logits = scale * img @ F.normalize(feats.float(), dim=-1).t()
            loss = F.cross_entropy(logits, labels)
            return loss.detach(), torch.autograd.grad(loss, ctx)[0]

        header = ["classes", "tokens used (truncated / full)", "forward truncated", "forward full 77",
                  "forward speed-up", "fwd+bwd truncated", "fwd+bwd full 77", "fwd+bwd speed-up",
                  "max abs diff features", "max abs diff grad"]
        rows, speedups, feat_scale = [], [], 0.0
        for c in counts:
            names = CALTECH101_CLASSNAMES[:c]
            trunc_tokens = method.text.class_tokens(names)  # what CoOp's forward uses (cached)
            # Reference: the original CoOp layout, "<name>." tokenized and padded to 77 tokens; the
            # context then takes M slots after SOS, so the name tokens run to position 76.
            tok = bb.tokenize([f"{name}." for name in names])
            if int(tok.lengths.max()) + m > full_len:
                raise SystemExit(f"a prompt of {c} classes does not fit in {full_len} tokens")
            with torch.no_grad():
                full_tokens = ClassNameTokens(bb.token_embeddings(tok.ids[:, :full_len - m]), tok.lengths)
            labels = torch.arange(BATCH, device=bb.device) % c
            n_used = int(trunc_tokens.lengths.max()) + m

            f_t, f_f = forward(trunc_tokens, True), forward(full_tokens, False)
            (_, g_t), (_, g_f) = forward_backward(trunc_tokens, True, labels), forward_backward(full_tokens, False, labels)
            feat_diff = float((f_t - f_f).abs().max())
            grad_diff = float((g_t - g_f).abs().max())
            feat_scale = max(feat_scale, float(f_f.abs().max()))

            med = time_interleaved({
                "fwd_t": lambda: forward(trunc_tokens, True),
                "fwd_f": lambda: forward(full_tokens, False),
                "fb_t": lambda: forward_backward(trunc_tokens, True, labels),
                "fb_f": lambda: forward_backward(full_tokens, False, labels),
            }, repeats=repeats, warmup=warmup)
            s_fwd, s_fb = med["fwd_f"] / med["fwd_t"], med["fb_f"] / med["fb_t"]
            speedups += [s_fwd, s_fb]
            rows.append([str(c), f"{n_used} / {full_len}", fmt_ms(med["fwd_t"]), fmt_ms(med["fwd_f"]), f"{s_fwd:.1f}x",
                         fmt_ms(med["fb_t"]), fmt_ms(med["fb_f"]), f"{s_fb:.1f}x", f"{feat_diff:.1e}", f"{grad_diff:.1e}"])
            print(f"  done: {c} classes", file=sys.stderr, flush=True)
        bb.truncate = True

    if args.quick:
        print("--quick: smoke run on a small model; the ratios are not representative")
    print(markdown_table(header, rows))
    print()
    print(f"Features are unnormalized text features (largest |value| {feat_scale:.2f}); gradients are "
          f"d(loss)/d(context). Target: >= {TARGET:g}x faster; smallest speed-up measured: "
          f"{min(speedups):.1f}x ({'meets' if min(speedups) >= TARGET else 'below'} target)."
          f"{load_average().replace(' | ', ' End of run: ')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
