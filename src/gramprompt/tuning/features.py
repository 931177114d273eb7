"""Frozen image features, computed once and reused.

Text-only methods (zero-shot, CoOp, CoCoOp) never change the image encoder's output, so each
image (or augmented view of it) is encoded once per backbone, not once per step and method.
Visual-prompt methods cannot reuse features, but on backbones with a costly frozen stem
(``Backbone.cache_stems``) they reuse the stem's output the same way. With a ``folder``, the
cache is also kept on disk, so that the worker processes of an experiment (and later experiments
under the same root) encode each image set once between them instead of once each.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from ..backbones.base import Backbone
from ..data.dataset import Sample
from ..data.images import load_batch
from ..prompts.base import PromptMethod

logger = logging.getLogger(__name__)


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


def backbone_fingerprint(backbone: Backbone) -> str:
    """A digest of everything in a backbone that decides its image features: its class, dtype,
    preprocessing and every parameter and buffer (so a retrained or fused model gets other files)."""
    h = hashlib.sha256(f"{type(backbone).__qualname__}|{backbone.dtype}|{backbone.transform!r}".encode())
    for name, tensor in backbone.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _update_with_sample(h, sample: Sample) -> None:
    source = sample.source
    if isinstance(source, np.ndarray):
        h.update(f"array {source.shape} {source.dtype}".encode())
        h.update(np.ascontiguousarray(source).tobytes())
    elif isinstance(source, bytes):
        h.update(b"bytes")
        h.update(source)
    else:  # a file: its path, size, modification and change times and inode. A replaced file gets a new entry
        # even where the copy kept the old modification time (rsync -a, cp -p, tar x): the kernel sets ctime
        try:
            st = os.stat(source)
            h.update(f"file {os.fspath(source)} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {st.st_ino}".encode())
        except OSError:
            h.update(f"missing {os.fspath(source)}".encode())
    h.update(f"|{sample.label}|".encode())


class FeatureCache:
    """Cache of (features, labels) keyed by what produced them, in memory and, with a ``folder``, on disk.

    Keys are chosen by the caller (e.g. ``("digits", "test")`` or ``("digits/base", "train", seed, view)``)
    and must determine the image function ``fn`` given the backbone (an augmentation's seed belongs in the
    key); the cache is tied to one backbone. A disk entry is named by a digest of the backbone
    (:func:`backbone_fingerprint`), the key and the samples (sources and labels, in order); it is written
    atomically, and one that cannot be read is computed again.
    """

    def __init__(self, backbone: Backbone, folder: str | os.PathLike | None = None):
        self.backbone = backbone
        self.folder = Path(folder) if folder is not None else None
        self._fingerprint: str | None = None
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
                path = self._path(full_key, samples)
                stored = self._load(path, samples) if path is not None else None
                if stored is None:
                    stored = encode_images(self.backbone, samples, fn, batch_size, desc, kind)
                    if path is not None:
                        self._save(path, stored)
                self._store[full_key] = stored
        return self._store[full_key]

    def _path(self, full_key: tuple, samples: Sequence[Sample]) -> Path | None:
        if self.folder is None:
            return None
        if self._fingerprint is None:
            self._fingerprint = backbone_fingerprint(self.backbone)
        h = hashlib.sha256(f"{self._fingerprint}|{full_key!r}|{len(samples)}".encode())
        for sample in samples:
            _update_with_sample(h, sample)
        return self.folder / f"{h.hexdigest()[:40]}.safetensors"

    def _load(self, path: Path, samples: Sequence[Sample]) -> tuple[Tensor, Tensor] | None:
        """The entry, if it is readable and holds one row per sample with the samples' labels (an entry
        written otherwise, e.g. copied in or damaged, is encoded again rather than scored as 0%)."""
        if not path.is_file():
            return None
        from safetensors.torch import load_file

        try:
            t = load_file(path, device=str(self.backbone.device))
            feats, labels = t["features"], t["labels"]
            if feats.shape[0] != len(samples) or labels.tolist() != [s.label for s in samples]:
                raise ValueError(f"{feats.shape[0]} rows and labels that are not the samples' ({len(samples)})")
            return feats, labels
        except Exception as err:  # a damaged entry costs its recomputation, nothing else
            logger.warning("feature cache entry %s is unreadable (%s); encoding again", path, err)
            return None

    def _save(self, path: Path, stored: tuple[Tensor, Tensor]) -> None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
        save_file({"features": stored[0].detach().cpu().contiguous(), "labels": stored[1].cpu()}, tmp)
        tmp.replace(path)  # atomic: another process sees the whole file or none
