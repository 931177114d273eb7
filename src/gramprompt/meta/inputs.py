"""What a meta-training task feeds the prompt method: cached frozen image inputs per item row.

Text-only methods (CoOp, CoCoOp) read the frozen image features the CHC feature store already
holds. Methods whose prompts enter the image encoder (VPT, UNIGRAM) need the encoder's input:
the backbone's cacheable stem when it has one (the default backbone), else pixels; those are
computed on first use per row and kept, since tasks revisit the same images many times.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from gramprompt.backbones.base import Backbone
from gramprompt.data.images import ImageLoadError
from gramprompt.data.pairs import load_pair_image
from gramprompt.prompts.base import Batch


class FeatureInputs:
    """Frozen image features of store rows, all in memory on the backbone's device."""

    kind = "features"

    def __init__(self, features: Tensor):
        self.features = features

    @classmethod
    def from_store(cls, store, rows: np.ndarray, device: torch.device | str = "cpu") -> FeatureInputs:
        """Features for every store row (``rows`` = the rows that can appear in tasks)."""
        feats = torch.zeros(len(store), store.dim("img"))
        feats[torch.from_numpy(np.asarray(rows))] = torch.from_numpy(store.gather("img", rows))
        return cls(feats.to(device))

    def batch(self, rows: np.ndarray) -> Batch:
        return Batch(features=self.features[torch.from_numpy(np.asarray(rows))])


class ImageInputs:
    """Stems (or pixels) of rows, decoded from ``sources`` on first use and cached."""

    def __init__(self, backbone: Backbone, sources: Sequence[str]):
        self.backbone = backbone
        self.sources = sources
        self.kind = "stems" if backbone.cache_stems else "pixels"
        self._cache: dict[int, Tensor] = {}

    @torch.inference_mode()
    def _encode(self, rows: list[int]) -> None:
        todo = [r for r in rows if r not in self._cache]
        for start in range(0, len(todo), 64):
            part = todo[start:start + 64]
            pixels = []
            for r in part:
                try:
                    pixels.append(self.backbone.transform.eval(load_pair_image(self.sources[r])))
                except ImageLoadError as err:  # the store had it, so the file changed since: say which
                    raise ImageLoadError(f"row {r}: {err}") from err
            x = torch.stack(pixels).to(self.backbone.device, self.backbone.dtype)
            out = self.backbone.encode_image_stem(x) if self.kind == "stems" else x
            self._cache.update(zip(part, out.clone()))

    def batch(self, rows: np.ndarray) -> Batch:
        rows = [int(r) for r in rows]
        self._encode(rows)
        stacked = torch.stack([self._cache[r] for r in rows])
        return Batch(stems=stacked) if self.kind == "stems" else Batch(pixels=stacked)
