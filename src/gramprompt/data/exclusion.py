"""Thumbnails of every image of the evaluation sets the project ships, so that meta-training corpora
can be checked to hold none of them (``iconify_source`` removes every match)."""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from gramprompt.data.dataset import ClassificationDataset, DatasetError
from gramprompt.data.image_hash import THUMB, thumbnail
from gramprompt.data.images import ImageLoadError, load_image

logger = logging.getLogger(__name__)

EXCLUSION_VERSION = 4  # bump when a shipped set's images or the hash change


def dataset_hashes(dataset: ClassificationDataset) -> np.ndarray:
    """``image_hash.thumbnail`` of every image of ``dataset`` (train, val and test; unreadable ones
    skipped), one row each."""
    out = []
    for sample in [*dataset.train, *dataset.val, *dataset.test]:
        try:
            out.append(thumbnail(load_image(sample.source)))
        except ImageLoadError:
            continue
    return np.asarray(out, np.uint8).reshape(len(out), THUMB * THUMB)


def evaluation_hashes(cache: Path, datasets: Mapping[str, Callable[[], ClassificationDataset]] | None = None,
                      ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``{name: thumbnails}`` of every shipped evaluation set (``data.builtin.BUILTIN_DATASETS``), each
    cached in ``cache``, and ``{name: reason}`` for the sets that are not installed (nothing to exclude,
    and nothing a table can test on either)."""
    if datasets is None:
        from gramprompt.data.builtin import BUILTIN_DATASETS as datasets
    hashes, missing = {}, {}
    for name in sorted(datasets):
        path = cache / f"v{EXCLUSION_VERSION}-{name}.npy"
        if path.exists():
            hashes[name] = np.load(path)
            continue
        try:
            dataset = datasets[name]()
        except DatasetError as exc:
            missing[name] = str(exc)
            logger.warning("evaluation set %s not installed, nothing to exclude: %s", name, exc)
            continue
        hashes[name] = dataset_hashes(dataset)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path.with_suffix(".tmp.npy"), hashes[name])
        path.with_suffix(".tmp.npy").replace(path)
    return hashes, missing
