"""What a meta-training task feeds the prompt method: cached frozen image inputs per item row.

Text-only methods (CoOp, CoCoOp) read the frozen image features the CHC feature store already
holds. Methods whose prompts enter the image encoder (VPT, UNIGRAM) need the encoder's input:
the backbone's cacheable stem when it has one (the default backbone), read from the store when
its features stage kept them, else pixels or stems computed on first use per row and kept, since
tasks revisit the same images many times.
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
    """Frozen image features (or stems) of store rows, all in memory on the backbone's device.

    Stems are kept in float16 (a default-backbone stem is 12928 values) and cast per batch."""

    def __init__(self, features: Tensor, kind: str = "features", dtype: torch.dtype = torch.float32):
        self.features, self.kind, self.dtype = features, kind, dtype

    @classmethod
    def from_store(cls, store, rows: np.ndarray, device: torch.device | str = "cpu",
                   kind: str = "features", dtype: torch.dtype = torch.float32) -> FeatureInputs:
        """Every store row's features (``kind="stems"``: stems; ``rows`` = the rows that can appear
        in tasks, the others stay zero)."""
        array, keep = ("img", torch.float32) if kind == "features" else ("stem", torch.float16)
        values = torch.zeros(len(store), store.dim(array), dtype=keep)
        rows = np.asarray(rows)
        for start in range(0, len(rows), 4096):  # gather returns float32: bound the temporary
            part = rows[start:start + 4096]
            values[torch.from_numpy(part)] = torch.from_numpy(store.gather(array, part)).to(keep)
        return cls(values.to(device), kind, dtype)

    def batch(self, rows: np.ndarray) -> Batch:
        values = self.features[torch.from_numpy(np.asarray(rows))].to(self.dtype)
        return Batch(**{self.kind: values})


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
