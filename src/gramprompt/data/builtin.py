"""Datasets available without any download: bundled with libraries or installed packages."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.datasets import load_digits

from gramprompt.data.dataset import ClassificationDataset, Sample
from gramprompt.data.emoji_styles import EMOJI_STYLE_DATASETS
from gramprompt.data.noto_scripts import load_noto_scripts
from gramprompt.data.offline import OFFLINE_DATASETS
from gramprompt.data.tuxpaint import load_tuxpaint_stamps
from gramprompt.data.splits import stratified_split

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def load_digits_dataset(test_fraction: float = 0.3, seed: int = 0) -> ClassificationDataset:
    """sklearn's 1797 8x8 handwritten digits as grey uint8 images, split stratified.

    Pixel values 0..16 are scaled by 255/16 and rounded, so 16 -> 255.
    """
    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    samples = [Sample(img, int(label)) for img, label in zip(images, bunch.target, strict=True)]
    train, test = stratified_split(samples, test_fraction, seed)
    return ClassificationDataset(name="digits", classnames=list(DIGIT_NAMES), train=train, test=test)


# digits ships with scikit-learn; the offline sets need OS/PyPI packages and raise a
# DatasetError naming the install command when those are missing. The emoji-style targets
# live in their own module (it imports offline.py, so offline.py cannot import it).
BUILTIN_DATASETS: dict[str, Callable[[], ClassificationDataset]] = {
    "digits": load_digits_dataset,
    **OFFLINE_DATASETS,
    **EMOJI_STYLE_DATASETS,
    "noto-scripts": load_noto_scripts,
    "tuxpaint-stamps": load_tuxpaint_stamps,
}
