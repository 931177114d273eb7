"""What a meta-training task feeds the prompt method: cached frozen image inputs per item row.

Text-only methods (CoOp, CoCoOp) read the frozen image features the CHC feature store already
holds. Methods whose prompts enter the image encoder (VPT, UNIGRAM) need the encoder's input:
the backbone's cacheable stem when it has one (the default backbone), read from the store when
its features stage kept them, else pixels or stems computed on first use per row and kept (in host
memory, bounded), since tasks revisit the same images many times.
"""
from __future__ import annotations

from collections import OrderedDict
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
    """Stems (or pixels) of rows, decoded from ``sources`` on first use and kept in host memory, least recently
    used first out once ``cache_bytes`` is full: at CC3M scale the rows tasks visit do not fit on the GPU."""

    def __init__(self, backbone: Backbone, sources: Sequence[str], cache_bytes: int = 4 << 30):
        self.backbone = backbone
        self.sources = sources
        self.kind = "stems" if backbone.cache_stems else "pixels"
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[int, Tensor] = OrderedDict()

    @torch.inference_mode()
    def _encode(self, rows: list[int]) -> dict[int, Tensor]:
        todo = list(dict.fromkeys(r for r in rows if r not in self._cache))
        fresh: dict[int, Tensor] = {}
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
            fresh.update(zip(part, out.cpu()))
        return fresh

    def batch(self, rows: np.ndarray) -> Batch:
        rows = [int(r) for r in rows]
        fresh = self._encode(rows)
        values = [fresh[r] if r in fresh else self._cache[r] for r in rows]
        for r in rows:
            if r in self._cache:
                self._cache.move_to_end(r)
        self._cache.update(fresh)
        per_row = values[0].nbytes
        while len(self._cache) * per_row > self.cache_bytes and self._cache:
            self._cache.popitem(last=False)
        stacked = torch.stack(values).to(self.backbone.device)
        return Batch(stems=stacked) if self.kind == "stems" else Batch(pixels=stacked)
