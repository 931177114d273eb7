"""Rebuild the default backbone's shipped weights: ``gram build-default-backbone``.

1. Frozen features, computed once and cached on disk (resumable per chunk): EfficientNet-Lite0's
   7x7 map and ImageNet logits of every openclipart image, MiniLM embeddings of every caption and
   of the 1000 ImageNet label names.
2. Training of the image head only, on a seeded train split of the pairs; a held-out slice picks the
   epoch. v1: contrastive (symmetric InfoNCE, learned temperature); stage 1 trains the base (linear
   head + ConSE mix), stage 2 everything, the residual branch included. v2: the shipped v1 distilled
   into the token transformer together with the contrastive loss (:mod:`.distill`).
3. The weights (safetensors), a JSON card (version, config, seed, metrics, SHA-256) and the training log.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from ...data.images import load_batch
from . import distill
from .head import HEADS, HeadConfig, ImageHead, TokenHead
from .model import LITE_TRANSFORM, WEIGHTS, MiniLMText, load_head, weights_path
from .towers import imagenet_label_names, load_efficientnet_lite0

logger = logging.getLogger(__name__)


@dataclass
class BuildConfig:
    """v1's settings by default; :func:`build_config` gives each version's."""

    seed: int = 0
    val_fraction: float = 0.05
    base_epochs: int = 40  # v1 only: the base stage
    full_epochs: int = 10  # v1: the whole head; v2: the distillation
    batch_size: int = 256
    lr: float = 1e-3
    branch_lr: float = 3e-4
    weight_decay: float = 0.01
    limit: int | None = None  # use only the first N pairs (tests, quick checks)
    head: HeadConfig = field(default_factory=HeadConfig)
    version: str = "v1"
    distill_weight: float = 1.0  # v2 only: weight of the distillation term
    teacher: str | None = None  # v2 only: the v1 weights distilled (None: the shipped v1)


V2_HEAD = HeadConfig()  # v1's shape: v2 starts from v1's map-token projection


def build_config(version: str = "v2", **overrides) -> BuildConfig:
    """The settings that built the shipped file of ``version``, with ``overrides``."""
    if version == "v1":
        return BuildConfig(**overrides)
    return BuildConfig(**{"version": "v2", "base_epochs": 0, "full_epochs": 6, "head": V2_HEAD,
                        "branch_lr": 5e-4, "distill_weight": 2.0, **overrides})


@dataclass
class Features:
    keys: list[str]
    fmap: Tensor  # (N, 1280, 7, 7) float16
    logits: Tensor  # (N, 1000)
    captions: Tensor  # (N, 384)
    labels: Tensor  # (1000, 384) ImageNet label-name embeddings


@torch.no_grad()
def embed_texts(text: MiniLMText, texts: list[str], batch_size: int = 128) -> Tensor:
    out = []
    for i in range(0, len(texts), batch_size):
        tok = text.tokenize(texts[i:i + batch_size], torch.device("cpu"))
        out.append(text(text.token_embeddings(tok.ids), tok.lengths))
    return torch.cat(out)


@torch.no_grad()
def extract_features(pairs: list, cache: Path, text: MiniLMText, chunk: int = 256) -> Features:
    """Frozen features of ``pairs`` (objects with .key, .source, .caption); resumable per chunk."""
    digest = hashlib.sha256("\n".join(p.key for p in pairs).encode()).hexdigest()[:16]
    folder = cache / f"openclipart-{len(pairs)}-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    trunk = load_efficientnet_lite0()
    for start in tqdm(range(0, len(pairs), chunk), desc="image features"):
        path = folder / f"chunk_{start // chunk:05d}.npz"
        if path.is_file():
            continue
        part = pairs[start:start + chunk]
        pixels, kept = load_batch([p.source for p in part], LITE_TRANSFORM.eval)
        fmaps, logits = [], []
        if pixels is not None:
            for i in range(0, len(pixels), 32):
                f = trunk.extract_features(pixels[i:i + 32])
                fmaps.append(f.half())
                logits.append(trunk._fc(f.mean((2, 3))))
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, kept=np.array([start + k for k in kept], dtype=np.int64),
                 fmap=torch.cat(fmaps).numpy() if fmaps else np.zeros((0, 1280, 7, 7), np.float16),
                 logits=torch.cat(logits).numpy() if logits else np.zeros((0, 1000), np.float32))
        tmp.replace(path)
    parts = [np.load(p) for p in sorted(folder.glob("chunk_*.npz"))]
    kept = np.concatenate([p["kept"] for p in parts])
    if len(kept) < len(pairs):
        logger.warning("skipped %d unreadable image(s) of %d", len(pairs) - len(kept), len(pairs))
    cap_file = folder / "captions.npy"
    if not cap_file.is_file():
        np.save(cap_file, embed_texts(text, [p.caption for p in pairs]).numpy())
    captions = torch.from_numpy(np.load(cap_file))[torch.from_numpy(kept)]
    labels = embed_texts(text, list(imagenet_label_names()))
    return Features(keys=[pairs[i].key for i in kept],
                    fmap=torch.from_numpy(np.concatenate([p["fmap"] for p in parts])),
                    logits=torch.from_numpy(np.concatenate([p["logits"] for p in parts])),
                    captions=captions, labels=labels)


def clip_loss(img: Tensor, txt: Tensor, log_scale: Tensor) -> Tensor:
    logits = log_scale.exp().clamp(max=100) * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()
    target = torch.arange(len(img))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def _embed(head: ImageHead | TokenHead, feats: Features, idx: Tensor, stage: str) -> Tensor:
    fmap = feats.fmap[idx].float()
    if stage == "base":
        return head.base(fmap.mean((2, 3)), feats.logits[idx])
    return head.from_stem(head.stem(fmap, feats.logits[idx]))


@torch.no_grad()
def evaluate_pairs(head: ImageHead | TokenHead, feats: Features, idx: Tensor, stage: str,
                   targets: Tensor | None = None, weight: float = 0.0) -> dict:
    """Held-out InfoNCE loss over the whole slice and image->text top-1 retrieval (percent); with v1's embeddings
    ``targets`` (v2's distillation), also the distillation term and the weighted sum that picks the epoch."""
    head.eval()
    img = torch.cat([_embed(head, feats, idx[i:i + 256], stage) for i in range(0, len(idx), 256)])
    txt = feats.captions[idx]
    sims = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()
    top1 = (sims.argmax(1) == torch.arange(len(idx))).float().mean().item() * 100
    out = {"val_loss": clip_loss(img, txt, head.logit_scale).item(), "val_i2t_top1": top1}
    if targets is not None:
        out["val_distill"] = distill.distill_loss(img, targets[idx]).item()
        out["val_objective"] = out["val_loss"] + weight * out["val_distill"]
    return out


def _fit(head: torch.nn.Module, groups: list[dict], train: Tensor, epochs: int, cfg: BuildConfig,
         gen: torch.Generator, batch_loss: Callable[[Tensor], Tensor], evaluate: Callable[[], dict], stage: str,
         log, key: str = "val_loss") -> dict:
    """AdamW with a one-cycle schedule over shuffled batches of ``train``; keeps the epoch with the lowest
    held-out ``key``. Shared by v1's two stages and v2's distillation."""
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    steps = epochs * math.ceil(len(train) / cfg.batch_size)
    if steps >= 20:  # one-cycle: 10% warm-up, then cosine annealing
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=steps,
                                                    pct_start=0.1, anneal_strategy="cos")
    else:  # too few steps for that schedule (tiny --limit runs): constant rate
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    best, best_state = None, None
    for epoch in range(epochs):
        head.train()
        t0, total = time.perf_counter(), 0.0
        perm = train[torch.randperm(len(train), generator=gen)]
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            if len(idx) < 2:
                continue
            loss = batch_loss(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        record = {"stage": stage, "epoch": epoch + 1, "train_loss": total / len(train), **evaluate(),
                  "conse_weight": head.conse_weight.item(), "temperature": 1 / head.logit_scale.exp().item(),
                  "seconds": time.perf_counter() - t0}
        log(record)
        if best is None or record[key] < best[key]:
            best, best_state = record, {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    return best


def _train_stage(head: ImageHead, feats: Features, train: Tensor, val: Tensor, stage: str, epochs: int,
                 cfg: BuildConfig, gen: torch.Generator, log) -> dict:
    base_params = [head.linear.weight, head.linear.bias, head.conse_weight, head.logit_scale]
    groups = [{"params": base_params, "lr": cfg.lr}]
    if stage == "full":
        branch = [p for n, p in head.named_parameters() if not any(p is q for q in base_params)]
        groups = [{"params": base_params, "lr": cfg.lr * 0.1}, {"params": branch, "lr": cfg.branch_lr}]
    return _fit(head, groups, train, epochs, cfg, gen,
                lambda idx: clip_loss(_embed(head, feats, idx, stage), feats.captions[idx], head.logit_scale),
                lambda: evaluate_pairs(head, feats, val, stage), stage, log)


def _distill(head: TokenHead, teacher: ImageHead, feats: Features, train: Tensor, val: Tensor, cfg: BuildConfig,
             gen: torch.Generator, log) -> dict:
    targets = distill.start_from_teacher(head, teacher, feats.fmap, feats.logits, train)
    w = cfg.distill_weight
    return _fit(head, distill.param_groups(head, cfg.lr * 0.1, cfg.branch_lr), train, cfg.full_epochs, cfg, gen,
                lambda idx: distill.objective(head, feats.fmap[idx], feats.logits[idx], feats.captions[idx],
                                              targets[idx], w, clip_loss),
                lambda: evaluate_pairs(head, feats, val, "distill", targets, w),
                "distill", log, key="val_objective")


def train_head(feats: Features, cfg: BuildConfig, log=lambda r: None) -> tuple[ImageHead | TokenHead, dict]:
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):  # nn.Module init draws from the global RNG: pin it, restore it
        torch.manual_seed(cfg.seed)
        head = HEADS[cfg.version](cfg.head, feats.labels)
    n = len(feats.keys)
    perm = torch.randperm(n, generator=gen)
    n_val = max(2, int(round(cfg.val_fraction * n)))
    val, train = perm[:n_val].sort().values, perm[n_val:]
    with torch.random.fork_rng(devices=[]):  # dropout also uses the global RNG
        torch.manual_seed(cfg.seed + 1)
        if cfg.version == "v1":
            metrics = {"base": _train_stage(head, feats, train, val, "base", cfg.base_epochs, cfg, gen, log)}
            if cfg.full_epochs:
                metrics["full"] = _train_stage(head, feats, train, val, "full", cfg.full_epochs, cfg, gen, log)
        else:
            teacher_path = Path(cfg.teacher) if cfg.teacher else weights_path("v1")
            teacher = load_head(teacher_path)
            metrics = {"distill": _distill(head, teacher, feats, train, val, cfg, gen, log),
                       "teacher_sha256": hashlib.sha256(teacher_path.read_bytes()).hexdigest()}
    metrics.update(pairs=n, train_pairs=len(train), val_pairs=n_val)
    return head.eval(), metrics


def save_weights(head: ImageHead, path: Path, cfg: BuildConfig, metrics: dict, command: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().float() for k, v in head.state_dict().items()}
    save_file(state, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    card = {"version": cfg.version, "head": cfg.head.to_dict(),
            "build": {k: v for k, v in asdict(cfg).items() if k not in ("head", "version")},
            "metrics": metrics, "sha256": digest, "command": command,
            "torch": torch.__version__}
    path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return digest


def build(pairs: list, cfg: BuildConfig, out: Path = WEIGHTS, cache: Path | None = None,
          command: str = "gram build-default-backbone", reference: bool = True) -> dict:
    from ...data import cache_dir

    pairs = pairs[:cfg.limit] if cfg.limit else pairs
    log_path = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(log_path, "w", encoding="utf-8")

    def log(record: dict) -> None:
        line = json.dumps(record)
        log_file.write(line + "\n")
        log_file.flush()
        print(line, flush=True)

    log({"command": command, "config": asdict(cfg), "pairs": len(pairs)})
    feats = extract_features(pairs, (cache or cache_dir()) / "default-backbone", MiniLMText())
    head, metrics = train_head(feats, cfg, log)
    digest = save_weights(head, out, cfg, metrics, command)
    log({"weights": str(out), "sha256": digest, **metrics})
    result = {"sha256": digest, **metrics}
    if reference:
        result["reference_zeroshot"] = reference_zero_shot(out)
        card = json.loads(out.with_suffix(".json").read_text())
        card["reference_zeroshot"] = result["reference_zeroshot"]
        out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
        log({"reference_zeroshot": result["reference_zeroshot"]})
    log_file.close()
    return result


# A fixed small check that the shipped file reproduces: zero-shot top-1 on a seeded subset.
REFERENCE_SETS = ("emoji-groups", "fashion-mnist", "animal-mnist", "digits")
REFERENCE_PER_CLASS = 10


def reference_zero_shot(weights: Path) -> dict:
    from ...data.registry import load_dataset
    from ...eval.protocols import zero_shot_all_classes
    from .model import DefaultBackbone

    backbone = DefaultBackbone.from_weights(weights)
    return {name: zero_shot_all_classes(backbone, load_dataset(name), max_per_class=REFERENCE_PER_CLASS)["zeroshot"]
            for name in REFERENCE_SETS}
