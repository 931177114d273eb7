"""Frozen image features, computed once and reused.

Text-only methods (zero-shot, CoOp, CoCoOp) never change the image encoder's output, so each
image (or augmented view of it) is encoded once per backbone, not once per step and method.
Visual-prompt methods cannot reuse features, but on backbones with a costly frozen stem
(``Backbone.cache_stems``) they reuse the stem's output the same way.
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
from ..prompts.base import PromptMethod


def input_kind(method: PromptMethod) -> str:
    """What a method trains and evaluates on: cached "features", cached "stems", or "pixels"."""
    if not method.uses_pixels:
        return "features"
    return "stems" if method.backbone.cache_stems else "pixels"


@torch.no_grad()
def encode_images(backbone: Backbone, samples: Sequence[Sample], fn: Callable[[Image.Image], Tensor],
                  batch_size: int = 64, desc: str | None = None, kind: str = "features") -> tuple[Tensor, Tensor]:
    """Features (N_kept, D), or stems with ``kind="stems"``, and labels (N_kept,) of the readable
    images; unreadable ones are skipped."""
    encode = backbone.encode_image_stem if kind == "stems" else backbone.encode_image
    feats, labels = [], []
    for start in tqdm(range(0, len(samples), batch_size), desc=desc, disable=desc is None, leave=False):
        chunk = samples[start:start + batch_size]
        pixels, kept = load_batch([s.source for s in chunk], fn)
        if pixels is None:
            continue
        out = encode(pixels.to(backbone.device))
        feats.append(out if kind == "stems" else out.float())
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
            batch_size: int = 64, desc: str | None = None, kind: str = "features") -> tuple[Tensor, Tensor]:
        full_key = (*key, kind)
        if full_key not in self._store:
            if kind == "features" and self.backbone.cache_stems:  # finish the cached stems: no image work
                stems, labels = self.get(key, samples, fn, batch_size, desc, "stems")
                with torch.no_grad():
                    feats = torch.cat([self.backbone.encode_image_from_stem(stems[i:i + batch_size]).float()
                                       for i in range(0, len(stems), batch_size)])
                self._store[full_key] = (feats, labels)
            else:
                self._store[full_key] = encode_images(self.backbone, samples, fn, batch_size, desc, kind)
        return self._store[full_key]
