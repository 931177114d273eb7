"""Frozen image features, computed once and reused.

Text-only methods (zero-shot, CoOp, CoCoOp) never change the image encoder's output, so each
image (or augmented view of it) is encoded once per backbone, not once per step and method.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from ..backbones.base import Backbone
from ..data.dataset import Sample
from ..data.images import load_batch


@torch.no_grad()
def encode_images(backbone: Backbone, samples: Sequence[Sample], fn: Callable[[Image.Image], Tensor],
                  batch_size: int = 64, desc: str | None = None) -> tuple[Tensor, Tensor]:
    """Features (N_kept, D) and labels (N_kept,) of the readable images; unreadable ones are skipped."""
    feats, labels = [], []
    for start in tqdm(range(0, len(samples), batch_size), desc=desc, disable=desc is None, leave=False):
        chunk = samples[start:start + batch_size]
        pixels, kept = load_batch([s.source for s in chunk], fn)
        if pixels is None:
            continue
        feats.append(backbone.encode_image(pixels.to(backbone.device)).float())
        labels.extend(chunk[i].label for i in kept)
    if not feats:
        raise ValueError("no readable image among the samples")
    return torch.cat(feats), torch.tensor(labels, device=backbone.device)


class FeatureCache:
    """In-memory cache of (features, labels) keyed by what produced them.

    Keys are chosen by the caller (e.g. ``("digits", "test")`` or ``("digits/base", "train", seed, view)``);
    the cache is tied to one backbone.
    """

    def __init__(self, backbone: Backbone):
        self.backbone = backbone
        self._store: dict[tuple, tuple[Tensor, Tensor]] = {}

    def get(self, key: tuple, samples: Sequence[Sample], fn: Callable[[Image.Image], Tensor],
            batch_size: int = 64, desc: str | None = None) -> tuple[Tensor, Tensor]:
        if key not in self._store:
            self._store[key] = encode_images(self.backbone, samples, fn, batch_size, desc)
        return self._store[key]
