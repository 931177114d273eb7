"""Augmentation with the pixel work on the device (DeviceAugment) against the host path (ImageTransform.train): the
same crop boxes and flips for the same seed, the same pixels up to the resampler's rounding, the crop-box and flip
statistics of RandomResizedCrop, and reproducibility per seed. Run on the CPU as the device; tests/test_cuda.py
repeats the comparison on CUDA."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from gramprompt.data.images import ImageTransform
from gramprompt.tuning.augment import DeviceAugment

T = ImageTransform(size=32)


def _images(n=6, seed=0):
    """Smooth pictures of several sizes and shapes (gradients + blobs + mild noise), as photos are."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        img = np.stack([128 + 100 * np.sin(3 * xx + i), 128 + 100 * np.cos(4 * yy - i), 255 * xx * yy], -1)
        img += rng.normal(0, 4, img.shape)
        out.append(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)))
    return out


def test_same_boxes_flips_and_pixels_as_the_host_path():
    images = _images()
    aug = DeviceAugment(T, images, torch.device("cpu"))
    g_host, g_dev = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(5):
        idx = [3, 0, 5, 1]
        host = torch.stack([T.train(images[i], g_host) for i in idx])
        dev = aug.batch(idx, g_dev)
        assert dev.shape == host.shape == (4, 3, 32, 32) and dev.dtype == torch.float32
        levels = ((dev - host) * torch.tensor(T.std).view(1, 3, 1, 1) * 255).abs()  # in 8-bit grey levels
        assert float(levels.mean()) < 0.5 and float(torch.quantile(levels.flatten(), 0.999)) <= 3.0
        # both consumed the same draws: the generators are in the same state
        assert torch.equal(torch.rand(3, generator=g_host), torch.rand(3, generator=g_dev))


def test_crop_box_and_flip_statistics_are_random_resized_crops():
    """RandomResizedCrop: area fraction uniform in [0.08, 1] (where the box fits at once), aspect log-uniform in
    [3/4, 4/3]; flips with probability 1/2."""
    big = [Image.new("RGB", (400, 400))]
    aug = DeviceAugment(T, big, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    boxes = aug.boxes([0] * 4000, gen)
    area = np.array([h * w / 400 ** 2 for _, _, h, w, _ in boxes])
    aspect = np.array([w / h for _, _, h, w, _ in boxes])
    flips = np.array([f for *_, f in boxes])
    n = len(boxes)
    assert 0.075 <= area.min() and area.max() <= 1.0
    assert abs(flips.mean() - 0.5) < 4 * math.sqrt(0.25 / n)
    assert 3 / 4 - 0.02 <= aspect.min() and aspect.max() <= 4 / 3 + 0.02
    assert abs(np.log(aspect).mean()) < 4 * (np.log(4 / 3) * 2 / math.sqrt(12)) / math.sqrt(n)
    # the area mean of the rule written out independently (numpy): draw (area, log-aspect) until the box fits
    rng = np.random.default_rng(0)
    ref = []
    for _ in range(20000):
        for _ in range(10):
            a, r = rng.uniform(0.08, 1.0), math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            w, h = round(math.sqrt(a * r) * 400), round(math.sqrt(a / r) * 400)
            if w <= 400 and h <= 400:
                ref.append(w * h / 400 ** 2)
                break
        else:
            ref.append(1.0)
    assert abs(area.mean() - np.mean(ref)) < 4 * area.std() / math.sqrt(n)
    tops = np.array([t for t, _, h, _, _ in boxes]) / np.maximum(1, 400 - np.array([h for _, _, h, _, _ in boxes]))
    assert abs(tops.mean() - 0.5) < 0.03  # the box position is uniform where it fits


def test_reproducible_per_seed():
    images = _images(3)
    aug = DeviceAugment(T, images, torch.device("cpu"))
    a = aug.batch([0, 1, 2], torch.Generator().manual_seed(1))
    b = aug.batch([0, 1, 2], torch.Generator().manual_seed(1))
    c = aug.batch([0, 1, 2], torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
