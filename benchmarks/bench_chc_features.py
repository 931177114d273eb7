"""Benchmark: the CHC feature stage (``gram chc --stage features``), reference path vs fast path, pairs/s.

Both paths run ``FeatureExtractor.run_shard`` on the same pairs in the same process, one shard of all
the pairs, written to a temporary feature store: ``fast=False`` is the original per-batch code
(``features_reference``), ``fast=True`` the default (``features_fast``: uint8 batches normalized at
once, the default backbone's trunk as fused oneDNN calls, one MiniLM forward per distinct caption
where the caption model is the backbone's own text tower, and torch's thread budget spent on worker
threads that each run whole batches single-threaded instead of on intra-op threads). Repeats
alternate between the paths so that drift of a shared machine affects both alike; the median is
reported. The per-stage split replays each path's steps on the same pairs on one core (torch threads
1) with a timer around each (decode, resize/transform, image trunk, head, the backbone's text tower
for the image-caption cosine, the sentence-transformers caption model); their sum is printed beside
the end-to-end time. Finally the two stores are compared: largest |difference| of the image and
caption features and of ``sim``.

Pairs: ``openclipart`` (the first N of ``openclipart_pairs()``, evenly spaced over the whole
listing: full-size PNGs, most 300-1100 px, captions of title + description + keywords) or, with
``--icons``, the same images drawn as 224x224 RGBA PNG bytes (aspect kept, transparent margin)
with their 1-8 word titles as captions: the shape of the icon corpus the stage is scaled to (no
resize, short captions).

    python benchmarks/bench_chc_features.py 512 --threads 2
    python benchmarks/bench_chc_features.py 512 --threads 2 --icons
    python benchmarks/bench_chc_features.py --quick

No assertion on time.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from _common import fmt_s, machine_info, markdown_table


def icon_pairs(pairs, size: int = 224):
    """The pairs' images as ``size`` x ``size`` RGBA PNG bytes and their titles as captions."""
    from PIL import Image

    from gramprompt.data.pairs import ImageTextPair

    out = []
    for p in pairs:
        with Image.open(p.source) as img:
            img = img.convert("RGBA")
            img.thumbnail((size, size), Image.Resampling.LANCZOS)
            canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
            canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
        buf = io.BytesIO()
        canvas.save(buf, "PNG")
        words = (p.meta.get("title") or p.meta.get("name") or p.caption).split()[:8]
        out.append(ImageTextPair(p.key, f"{p.source}#icon", " ".join(words), dict(p.meta), buf.getvalue()))
    return out


class Stages:
    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        yield
        self.seconds[name] += time.perf_counter() - t0


STAGES = ["decode", "resize/transform", "image trunk", "head", "text tower (sim)", "caption model"]


@torch.inference_mode()
def split_reference(ex, pairs) -> dict[str, float]:
    """The reference path's steps (``features_reference`` / ``backbone_features``), timed one by one."""
    from gramprompt.chc.features import embed_captions, encode_texts
    from gramprompt.data.images import load_image

    bb, t, bs = ex.backbone, Stages(), ex.config.batch_size
    for start in range(0, len(pairs), bs):
        batch = pairs[start:start + bs]
        imgs = []
        for p in batch:
            with t("decode"):
                img = load_image(p.image)
            with t("resize/transform"):
                imgs.append(bb.transform.eval(img))
        with t("resize/transform"):
            pixels = torch.stack(imgs)
        with t("image trunk"):
            out = bb.trunk_outputs(pixels) if hasattr(bb, "trunk_outputs") else None
        with t("head"):
            img = bb.head.stem(*out) if out is not None else bb.encode_image_stem(pixels)
            img = torch.nn.functional.normalize(bb.encode_image_from_stem(img).float(), dim=-1)
        with t("text tower (sim)"):
            txt = torch.nn.functional.normalize(encode_texts(bb, [p.caption for p in batch]), dim=-1)
            (img * txt).sum(-1)
    with t("caption model"):
        embed_captions(ex.text_model, [p.caption for p in pairs], bs)
    return dict(t.seconds)


@torch.inference_mode()
def split_fast(ex, pairs) -> dict[str, float]:
    """The fast path's steps (``features_fast``), timed one by one."""
    from gramprompt.chc.features import TEXT_CHUNK, BatchPixels, _encode_tokens, embed_captions, shares_text_tower
    from gramprompt.data.images import load_image

    bb, t, bs = ex.backbone, Stages(), ex.config.batch_size
    to_pixels = BatchPixels(bb.transform)
    feats = []
    for start in range(0, len(pairs), bs):
        images = []
        for p in pairs[start:start + bs]:
            with t("decode"):
                img = load_image(p.image)
            with t("resize/transform"):
                images.append(to_pixels.prepare(img))
        with t("resize/transform"):
            pixels = to_pixels.stack(images)
        with t("image trunk"):
            out = bb.inference_trunk_outputs(pixels) if hasattr(bb, "inference_trunk_outputs") else None
        with t("head"):
            stem = bb.head.stem(*out) if out is not None else bb.encode_image_stem(pixels)
            feats.append(torch.nn.functional.normalize(bb.encode_image_from_stem(stem).float(), dim=-1))
    captions = [p.caption for p in pairs]
    with t("text tower (sim)"):
        distinct = list(dict.fromkeys(captions))
        where = {c: i for i, c in enumerate(distinct)}
        tok = bb.tokenize(distinct)
        text = torch.nn.functional.normalize(_encode_tokens(bb, tok, TEXT_CHUNK), dim=-1)
        (torch.cat(feats) * text[torch.tensor([where[c] for c in captions])]).sum(-1)
    shared = shares_text_tower(bb, ex.text_model)  # once per extractor: not a per-pair cost
    with t("caption model"):
        limit = min(bb.context_length - 1, int(ex.text_model.max_seq_length))
        todo = [c for c, n in zip(distinct, tok.lengths.tolist()) if not shared or n > limit]
        if todo:
            embed_captions(ex.text_model, todo, bs)
    return dict(t.seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", type=int, nargs="?", default=512, help="openclipart pairs (default 512)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--icons", action="store_true", help="224x224 RGBA PNG bytes with short captions (see above)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each path, alternating (median)")
    parser.add_argument("--backbone", default="default", help="backbone spec (default: the offline default)")
    parser.add_argument("--batch-size", type=int, help="FeatureConfig.batch_size (default: the config's)")
    parser.add_argument("--no-split", action="store_true", help="skip the per-stage split (end to end only)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 24 pairs, 1 repeat")
    args = parser.parse_args(argv)
    n, repeats = (24, 1) if args.quick else (args.pairs, args.repeats)
    if args.threads:
        torch.set_num_threads(args.threads)

    from gramprompt.backbones import load_backbone
    from gramprompt.chc.config import FeatureConfig
    from gramprompt.chc.features import FeatureExtractor, load_text_model, shares_text_tower
    from gramprompt.chc.store import FeatureStore
    from gramprompt.data.pairs import ListPairSource, openclipart_pairs

    print("## CHC feature stage: reference path vs fast path")
    print()
    print(machine_info())
    listing = openclipart_pairs()
    n = min(n, len(listing))
    pairs = [listing[i * len(listing) // n] for i in range(n)]
    kind = "openclipart"
    if args.icons:
        print("  drawing the icons ...", file=sys.stderr, flush=True)
        pairs, kind = icon_pairs(pairs), "openclipart drawn as 224x224 RGBA icons, title captions"
    words = [len(p.caption.split()) for p in pairs]
    backbone = load_backbone(args.backbone)
    text_model = load_text_model("default", backbone.device)
    config = FeatureConfig() if args.batch_size is None else FeatureConfig(batch_size=args.batch_size)
    ref = FeatureExtractor(backbone, text_model, config, fast=False)
    fast = FeatureExtractor(backbone, text_model, config, fast=True)
    shared = shares_text_tower(backbone, text_model)
    print(f"pairs: {n} ({kind}), {len(set(p.caption for p in pairs))} distinct captions, caption words median "
          f"{statistics.median(words):.0f} (max {max(words)}); backbone "
          f"{backbone.name}; batch size {config.batch_size}; caption model = backbone text tower: {shared}")

    times: dict[str, list[float]] = {"reference": [], "fast": []}
    with tempfile.TemporaryDirectory(prefix="gramprompt-bench-") as tmp:
        warm = ListPairSource("warm", pairs[:8], 8)
        for name, ex in (("reference", ref), ("fast", fast)):  # first calls: allocator, oneDNN primitives, probe
            ex.run_shard(warm, 0, Path(tmp) / f"warm-{name}")
        source = ListPairSource(kind, pairs, n)
        for r in range(repeats):
            for name, ex in (("reference", ref), ("fast", fast)):
                print(f"  {name} run {r + 1}/{repeats} ...", file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                ex.run_shard(source, 0, Path(tmp) / f"{name}-{r}")
                times[name].append(time.perf_counter() - t0)
        a, b = FeatureStore(Path(tmp) / "reference-0"), FeatureStore(Path(tmp) / "fast-0")
        diffs = {}
        for k in ("img", "text"):
            x, y = (np.concatenate([c for _, c in s.chunks(k)]).astype(np.float64) for s in (a, b))
            diffs[k] = float(np.abs(x - y).max())
        diffs["sim"] = float(np.abs(np.asarray(a.column("sim")) - np.asarray(b.column("sim"))).max())
        same_rows = a.column("key") == b.column("key")
    threads = torch.get_num_threads()
    split = None
    if not args.no_split:
        print("  per-stage split ...", file=sys.stderr, flush=True)
        torch.set_num_threads(1)  # the split is each stage's work on one core, free of thread scheduling
        try:
            split = {"reference": split_reference(ref, pairs), "fast": split_fast(fast, pairs)}
        finally:
            torch.set_num_threads(threads)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"timing: `FeatureExtractor.run_shard` on one shard of all {n} pairs (read, decode, features, write), "
          f"median of {repeats} alternating runs after a warm-up shard; time.perf_counter. torch threads {threads}: "
          f"the reference runs each operation on {threads} intra-op thread(s), the fast path {fast.workers()} "
          f"worker thread(s) of whole batches, each single-threaded")
    print()
    print(markdown_table(["path", "time", "pairs/s", "speed-up"], [
        ["reference (`fast=False`)", fmt_s(med["reference"]), f"{n / med['reference']:.1f}", "1.0x"],
        ["fast (`fast=True`, the default)", fmt_s(med["fast"]), f"{n / med['fast']:.1f}",
         f"**{med['reference'] / med['fast']:.2f}x**"]]))
    print()
    if split is not None:
        rows = []
        for stage in STAGES:
            r, f = split["reference"].get(stage, 0.0), split["fast"].get(stage, 0.0)
            ratio = f"{r / f:.1f}x" if f > 1e-3 * r else "not run"  # the fast path's caption model: long captions only
            rows.append([stage, f"{1e3 * r / n:.2f}", f"{1e3 * f / n:.2f}", ratio])
        tr, tf = sum(split["reference"].values()), sum(split["fast"].values())
        rows.append(["sum of stages (1 core)", f"{1e3 * tr / n:.2f}", f"{1e3 * tf / n:.2f}", f"{tr / tf:.1f}x"])
        rows.append([f"end to end (run_shard above, {threads} thread(s))", f"{1e3 * med['reference'] / n:.2f}",
                     f"{1e3 * med['fast'] / n:.2f}", f"{med['reference'] / med['fast']:.1f}x"])
        print("Per-stage split, ms of one core per pair (one timed replay of each path's steps on the same pairs, "
              "torch threads 1, one worker; the end-to-end row is the run above):")
        print()
        print(markdown_table(["stage", "reference", "fast", "ratio"], rows))
        print()
    print(f"Same rows in both stores: {same_rows}. Largest |fast - reference|: image features {diffs['img']:.2e}, "
          f"caption features {diffs['text']:.2e}, sim {diffs['sim']:.2e} (float32 rounding; the tests' bound for "
          f"unit vectors through MiniLM is EPS32 * sqrt(1536) * 70 = 3.3e-4).")
    if args.quick:
        print("--quick: smoke run on a few pairs; the ratios are not representative")
    return 0


if __name__ == "__main__":
    sys.exit(main())
