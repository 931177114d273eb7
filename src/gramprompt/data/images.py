"""Image loading and CLIP-style preprocessing with PIL + torch only (no torchvision).

All randomness in training augmentation comes from an explicit ``torch.Generator`` so
runs are reproducible and independent of the global RNG.
"""
from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

ImageSource = str | os.PathLike | np.ndarray | bytes  # path, uint8 array, or encoded file bytes

# OpenAI CLIP's normalisation constants (the usual defaults for CLIP-like backbones).
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


class ImageLoadError(ValueError):
    """An image file is missing, unreadable, truncated or not an image."""


def load_image(source: ImageSource) -> Image.Image:
    """Load ``source`` (path, encoded bytes, or uint8 array (H, W) / (H, W, 3)) as RGB.

    Transparent images (RGBA, LA, palette or grey with a transparency key) are composited
    onto a white background first; 16-bit grey is scaled to 8 bits; an EXIF orientation is
    applied, so photos come out the way cameras and viewers show them.

    Pixels are decoded eagerly (``img.load()``) so truncated files fail here, as
    ``ImageLoadError``, rather than later inside a transform.
    """
    if isinstance(source, np.ndarray):
        return _array_to_image(source)
    path = "<bytes>" if isinstance(source, bytes) else os.fspath(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else path) as img:
            img.load()
            return _flatten_to_rgb(_to_8bit(ImageOps.exif_transpose(img)))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
            Image.DecompressionBombError) as exc:
        raise ImageLoadError(f"cannot load image {path!r}: {exc}") from exc


# Modes whose pixels carry alpha; other modes may instead carry a ``transparency`` key
# (a palette index or colour) in ``img.info``.
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


# Pillow's modes for 16-bit grey (PNG, TIFF); "I" is how older Pillow versions open 16-bit PNGs.
_16BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit grey as 8-bit ``L``, ``round(v / 257)`` (so 65535 -> 255); other modes unchanged.

    Pillow's ``convert`` clips 16-bit values at 255 instead of scaling them, which turns almost
    every 16-bit image white. Mode ``I`` is read as 16-bit too (values clipped to 0..65535).
    """
    if img.mode not in _16BIT_MODES:
        return img
    values = np.clip(np.asarray(img, dtype=np.float64), 0, 65535)
    return Image.fromarray(np.rint(values / 257).astype(np.uint8))


def _flatten_to_rgb(img: Image.Image) -> Image.Image:
    """RGB with transparent pixels composited onto white.

    A plain ``convert("RGB")`` drops alpha and exposes whatever colour the transparent
    pixels happen to store (usually black), so transparent clipart and emoji would turn into
    black-background images unlike anything a CLIP-style model saw in training.
    """
    if img.mode not in _ALPHA_MODES and "transparency" not in img.info:
        return img.convert("RGB")
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    background.alpha_composite(rgba)
    return background.convert("RGB")


def _array_to_image(arr: np.ndarray) -> Image.Image:
    """In-memory arrays are produced by our own loaders, so a bad one is a bug: fail loudly."""
    if arr.dtype != np.uint8:
        raise TypeError(f"image arrays must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        return Image.fromarray(arr).convert("RGB")
    if arr.ndim == 3 and arr.shape[2] == 3:
        return Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")
    raise ValueError(f"image arrays must be (H, W) or (H, W, 3), got shape {arr.shape}")


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 tensor (3, H, W) in [0, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    u = torch.rand((), generator=generator, dtype=torch.float64).item()
    return low + (high - low) * u


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high)."""
    return int(torch.randint(low, high, (1,), generator=generator).item())


def random_resized_crop_params(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """Sample a crop box ``(top, left, crop_h, crop_w)`` the RandomResizedCrop way.

    Area fraction is uniform in ``scale`` and aspect ratio log-uniform in ``ratio``; after
    ``attempts`` misses (box does not fit) fall back to the largest centred crop whose
    aspect ratio is clamped into ``ratio``.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target_area = area * _uniform(generator, scale[0], scale[1])
        aspect = math.exp(_uniform(generator, log_lo, log_hi))
        crop_w = int(round(math.sqrt(target_area * aspect)))
        crop_h = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = _randint(generator, 0, height - crop_h + 1)
            left = _randint(generator, 0, width - crop_w + 1)
            return top, left, crop_h, crop_w
    in_ratio = width / height
    if in_ratio < min(ratio):
        crop_w = width
        crop_h = int(round(crop_w / min(ratio)))
    elif in_ratio > max(ratio):
        crop_h = height
        crop_w = int(round(crop_h * max(ratio)))
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


@dataclass(frozen=True)
class ImageTransform:
    """CLIP eval preprocessing plus the CoOp-style training augmentation.

    ``eval``: bicubic resize of the shorter side to ``size``, centre crop, normalise.
    ``train``: random resized crop to ``size`` x ``size``, random horizontal flip, normalise.
    """

    size: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"size must be positive, got {self.size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std must have 3 entries (RGB)")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must satisfy 0 < lo <= hi, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < lo <= hi, got {self.ratio}")
        if not 0.0 <= self.flip_p <= 1.0:
            raise ValueError(f"flip_p must be in [0, 1], got {self.flip_p}")

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Channel-wise ``(x - mean) / std`` on a (3, H, W) tensor in [0, 1]."""
        mean = torch.tensor(self.mean, dtype=x.dtype).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(3, 1, 1)
        return (x - mean) / std

    def eval(self, img: Image.Image) -> torch.Tensor:
        """Deterministic preprocessing -> float32 (3, size, size)."""
        w, h = img.size
        if w <= h:
            new_w, new_h = self.size, int(self.size * h / w)
        else:
            new_w, new_h = int(self.size * w / h), self.size
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
        top = int(round((new_h - self.size) / 2.0))
        left = int(round((new_w - self.size) / 2.0))
        img = img.crop((left, top, left + self.size, top + self.size))
        return self.normalize(to_tensor(img))

    def train(self, img: Image.Image, generator: torch.Generator) -> torch.Tensor:
        """Random augmentation -> float32 (3, size, size); all draws come from ``generator``."""
        w, h = img.size
        top, left, crop_h, crop_w = random_resized_crop_params(
            w, h, self.scale, self.ratio, generator
        )
        img = img.crop((left, top, left + crop_w, top + crop_h))
        img = img.resize((self.size, self.size), Image.Resampling.BICUBIC)
        x = to_tensor(img)
        if torch.rand((), generator=generator).item() < self.flip_p:
            x = x.flip(-1)
        return self.normalize(x)


def _describe(source: ImageSource) -> str:
    if isinstance(source, np.ndarray):
        return f"<array {source.shape}>"
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    return os.fspath(source)


def load_batch(
    sources: Sequence[ImageSource],
    fn: Callable[[Image.Image], torch.Tensor],
) -> tuple[torch.Tensor | None, list[int]]:
    """Load and transform ``sources``, skipping unreadable images instead of crashing.

    Returns the stacked tensors of the good images (``None`` if none were good) and the
    indices into ``sources`` that were kept, so callers can select matching labels.
    """
    tensors: list[torch.Tensor] = []
    kept: list[int] = []
    bad: list[str] = []
    for i, source in enumerate(sources):
        try:
            img = load_image(source)
        except ImageLoadError:
            bad.append(_describe(source))
            continue
        tensors.append(fn(img))
        kept.append(i)
    if bad:
        logger.warning("skipped %d unreadable image(s) of %d; first: %s",
                       len(bad), len(sources), bad[0])
    if not tensors:
        return None, kept
    return torch.stack(tensors), kept
