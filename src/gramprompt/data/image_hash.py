"""Perceptual hashes of images, and near-duplicate look-up by Hamming distance.

Used to keep evaluation images out of meta-training data and to remove near-duplicate pairs from a
corpus. Both work on the image cropped to what is drawn and centred on a white square, so they
survive re-framing, rescaling, re-rasterizing and recompression, where a byte digest does not:

- evaluation images: a 16 x 16 grey thumbnail, close in RMS difference and in correlation, found by
  brute force (exact);
- "the same picture" inside a corpus: a 256-bit average hash, looked up by the pigeonhole principle
  (two hashes within distance ``t`` agree exactly on one of ``t + 1`` disjoint bit blocks).

Hashes of colour pictures flip bits where pixels sit near the mean (one Noto emoji re-rasterized:
1-16 bits of 256), so they decide duplicates of equal hash only; thumbnails catch evaluation images
(the same emoji re-rasterized: median RMS 3.0 grey levels; nearest other emoji: median 20.4).
"""
from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from gramprompt.data.images import ImageLoadError, load_image

THUMB = 16  # thumbnail side
MIN_SPREAD = 2.0  # grey-level RMS below which a thumbnail has no structure to correlate
INK_LEVEL = 224  # grey levels below this count as drawn (icons and test images are on white)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def normalized(image: Image.Image) -> Image.Image:
    """Grey, cropped to what is drawn (pixels darker than near-white) and centred on a white square:
    the same picture framed with other padding or aspect hashes the same."""
    grey = image.convert("L")
    box = grey.point(lambda v: 255 if v < INK_LEVEL else 0).getbbox()
    if box is None:
        return grey
    grey = grey.crop(box)
    side = max(grey.size)
    canvas = Image.new("L", (side, side), 255)
    canvas.paste(grey, ((side - grey.size[0]) // 2, (side - grey.size[1]) // 2))
    return canvas


def picture_hash(image: Image.Image) -> int:
    """The 256-bit average hash (16 x 16 thumbnail of ``normalized(image)``, each pixel darker or
    lighter than the mean) as an int. Simple icons defeat DCT hashes (their many near-zero
    coefficients flip bits: one house framed two ways is 85 bits apart), not this one (0 bits)."""
    import imagehash

    flat = imagehash.average_hash(normalized(image), hash_size=16).hash.reshape(-1)
    return int.from_bytes(np.packbits(flat.astype(np.uint8)).tobytes(), "big")


def thumbnail(image: Image.Image) -> np.ndarray:
    """``normalized(image)`` as a 16 x 16 grey thumbnail (256 uint8): what evaluation images are
    compared on, by RMS difference (robust where bits of a hash flip near a threshold). It is blurred
    (Gaussian, radius 2 at 64 px) before the last reduction, so that the sub-pixel shift of a crop
    box at another resolution moves edges a little instead of flipping edge pixels."""
    mid = normalized(image).resize((4 * THUMB, 4 * THUMB), Image.Resampling.BOX).filter(ImageFilter.GaussianBlur(2))
    return np.asarray(mid.resize((THUMB, THUMB), Image.Resampling.BOX), np.uint8).reshape(-1)


def pixel_digest(image: Image.Image) -> str:
    """A digest of the decoded pixels (mode and size included): equal pictures, whatever the encoder."""
    return hashlib.sha1(f"{image.mode} {image.size}".encode() + image.tobytes()).hexdigest()


def _standardized(thumbs: np.ndarray) -> np.ndarray:
    """Rows minus their mean over their RMS (zero for a structureless, near-uniform row), / sqrt(n):
    the dot product of two rows is then their correlation."""
    t = np.asarray(thumbs, np.float32)
    t = t - t.mean(1, keepdims=True)
    spread = np.sqrt((t * t).mean(1, keepdims=True))
    return np.where(spread >= MIN_SPREAD, t / np.maximum(spread, MIN_SPREAD), 0.0) / np.sqrt(t.shape[1])


def nearest_within(queries: np.ndarray, refs: np.ndarray, max_rms: float, min_corr: float = 0.0,
                   chunk: int = 512) -> np.ndarray:
    """For each query thumbnail (rows of uint8), the index of the best-correlated ``refs`` thumbnail
    among those within ``max_rms`` grey levels (RMS difference) and at least ``min_corr`` correlated,
    else -1. Both are needed: a pale picture is close in RMS to any other pale one, and correlation
    alone ignores contrast. Exact brute force: one matrix product per chunk finds the pairs within
    ``max_rms`` (|q - r|^2 = |q|^2 + |r|^2 - 2 q.r), which are then checked exactly: minutes for
    10^5 x 10^5 on 2 cores."""
    out = np.full(len(queries), -1, np.int64)
    if not len(refs) or not len(queries):
        return out
    r = np.asarray(refs, np.float32)
    rz = _standardized(r)
    # within max_rms <=> q.r >= (|q|^2 + |r|^2 - limit) / 2; float32 rounding of the product is far below
    # a grey level, and a margin keeps borderline pairs for the exact check
    half_r2 = 0.5 * (r * r).sum(1)
    limit = max_rms ** 2 * r.shape[1]
    for start in range(0, len(queries), chunk):
        q = np.asarray(queries[start:start + chunk], np.float32)
        dots = q @ r.T
        dots -= half_r2
        need = 0.5 * ((q * q).sum(1) - limit * 1.001 - 1.0)
        rows, cols = np.nonzero(dots >= need[:, None])  # the few candidate pairs
        if not len(rows):
            continue
        qz = _standardized(q)
        diff = q[rows] - r[cols]
        ok = ((diff * diff).sum(1) <= limit) & ((corr := (qz[rows] * rz[cols]).sum(1)) >= min_corr)
        rows, cols, corr = rows[ok], cols[ok], corr[ok]
        if not len(rows):
            continue
        order = np.lexsort((cols, -corr, rows))  # per query: best correlation first, then the first ref
        rows, cols = rows[order], cols[order]
        first = np.r_[True, rows[1:] != rows[:-1]]
        out[start + rows[first]] = cols[first]
    return out


class NearIndex:
    """``bits``-bit hashes that can be searched for any within Hamming distance ``max_distance``."""

    def __init__(self, max_distance: int, bits: int = 256):
        if not 0 <= max_distance < bits // 4:
            raise ValueError(f"max_distance must be in 0..{bits // 4 - 1}, got {max_distance}")
        self.max_distance = max_distance
        blocks = max_distance + 1
        edges = [int(e) for e in np.linspace(0, bits, blocks + 1)]
        self._masks = [(((1 << (hi - lo)) - 1) << lo, lo) for lo, hi in zip(edges[:-1], edges[1:])]
        self._tables: list[dict[int, list[int]]] = [defaultdict(list) for _ in self._masks]
        self._hashes: list[int] = []

    def __len__(self) -> int:
        return len(self._hashes)

    def add(self, h: int) -> int:
        """Add a hash; returns its index."""
        i = len(self._hashes)
        self._hashes.append(int(h))
        for (mask, shift), table in zip(self._masks, self._tables):
            table[(int(h) & mask) >> shift].append(i)
        return i

    def extend(self, hashes: Iterable[int]) -> None:
        for h in hashes:
            self.add(h)

    def nearest(self, h: int) -> tuple[int, int]:
        """(index, distance) of the closest stored hash within ``max_distance`` (the earliest on
        ties, so results do not depend on set order), or (-1, -1)."""
        h = int(h)
        best, best_d = -1, self.max_distance + 1
        for (mask, shift), table in zip(self._masks, self._tables):
            for i in table.get((h & mask) >> shift, ()):
                d = (self._hashes[i] ^ h).bit_count()
                if d < best_d or (d == best_d and i < best):
                    best, best_d = i, d
        return (best, best_d) if best >= 0 else (-1, -1)


def thumbnail_files(dirs: Sequence[str | os.PathLike]) -> tuple[np.ndarray, list[str], int]:
    """``thumbnail`` of every image file under ``dirs`` (recursively, sorted) as rows, the files read,
    and the number of unreadable image files skipped."""
    files: list[str] = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise FileNotFoundError(f"--exclude-images: {d} is not a folder")
        files.extend(str(p) for p in sorted(d.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    hashes, kept, bad = [], [], 0
    for f in files:
        try:
            hashes.append(thumbnail(load_image(f)))
            kept.append(f)
        except ImageLoadError:
            bad += 1
    return np.asarray(hashes, np.uint8).reshape(len(hashes), THUMB * THUMB), kept, bad
