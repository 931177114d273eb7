"""Training augmentation with the pixel work on the accelerator.

``ImageTransform.train`` crops, resizes and flips every image with PIL on the host, one image after another: on a GPU
that host work, not the arithmetic, sets the pace of the visual-prompt runs. Here the crop boxes and flips
are drawn on the host exactly as ``ImageTransform.train`` draws them (the same generator calls in the same order, so
the same boxes and flips for the same seed: equal in distribution by construction, and run for run), and the pixels
go to the device as the cropped uint8 region, where they are resized (bicubic with antialiasing, PIL's filter),
rounded to 8 bits as PIL's output is, flipped and normalized. Host RNG draws never wait for the device.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..data.images import ImageTransform, random_resized_crop_params


class DeviceAugment:
    """``ImageTransform.train`` for a fixed list of images, its pixel work on ``device``."""

    def __init__(self, transform: ImageTransform, images: Sequence[Image.Image], device: torch.device):
        self.transform, self.device = transform, torch.device(device)
        self.images = [torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
                       for img in images]  # uint8 (3, H, W) on the host; only each step's crops travel
        self.mean = torch.tensor(transform.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(transform.std, device=self.device).view(1, 3, 1, 1)

    def boxes(self, indices: Sequence[int], generator: torch.Generator) -> list[tuple[int, int, int, int, bool]]:
        """(top, left, height, width, flip) of each image, drawn as ``ImageTransform.train`` draws them."""
        t, out = self.transform, []
        for i in indices:
            _, h, w = self.images[i].shape
            top, left, ch, cw = random_resized_crop_params(w, h, t.scale, t.ratio, generator)
            out.append((top, left, ch, cw, torch.rand((), generator=generator).item() < t.flip_p))
        return out

    def _to_device(self, t: Tensor) -> Tensor:
        """A host tensor on the device without a synchronizing copy (pinned, non-blocking on CUDA)."""
        if self.device.type == "cuda":
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def batch(self, indices: Sequence[int], generator: torch.Generator) -> Tensor:
        """Augmented, normalized float32 images (B, 3, size, size) on the device."""
        size = self.transform.size
        boxes = self.boxes(indices, generator)
        crops = []
        for i, (top, left, ch, cw, _) in zip(indices, boxes):
            region = self._to_device(self.images[i][:, top:top + ch, left:left + cw].contiguous())[None].float()
            crops.append(F.interpolate(region, size=(size, size), mode="bicubic", antialias=True, align_corners=False))
        x = torch.cat(crops).round_().clamp_(0, 255).div_(255.0)
        flip = self._to_device(torch.tensor([f for *_, f in boxes])).view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(-1), x)
        return (x - self.mean) / self.std
