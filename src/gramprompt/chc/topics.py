"""Stage 3: semantic topics, UMAP -> HDBSCAN on caption embeddings, fitted on a subsample.

Any reducer with ``fit``/``transform`` (or ``fit_transform``) and any clusterer with
``fit_predict`` or ``labels_`` can be passed instead of the defaults, e.g. cuML's UMAP and
HDBSCAN on a GPU. Pairs outside the fitted subsample are assigned in chunks: reduced with
``reducer.transform``, then labelled by ``hdbscan.approximate_predict`` when the clusterer
supports it (noise stays noise), otherwise by the nearest topic centroid in the reduced space.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gramprompt import signed_pickle
from gramprompt.chc.config import TopicConfig
from gramprompt.errors import GramError

logger = logging.getLogger(__name__)


def make_reducer(cfg: TopicConfig, seed: int):
    """UMAP as BERTopic configures it; a fixed ``random_state`` makes it deterministic (one thread) once
    the spectral initialization is fitted under ``seeded_eigsh``."""
    import umap

    return umap.UMAP(n_neighbors=cfg.umap_neighbors, n_components=cfg.umap_components,
                     min_dist=cfg.umap_min_dist, metric=cfg.umap_metric, random_state=seed,
                     low_memory=True, n_jobs=1)


@contextlib.contextmanager
def seeded_eigsh(seed: int) -> Iterator[None]:
    """Make ``scipy.sparse.linalg.eigsh`` draw ARPACK's restart vectors from a generator seeded with ``seed``.

    UMAP's spectral initialization calls ``eigsh`` with a fixed start vector but no ``rng``. When the
    Lanczos iteration breaks down, as on small, nearly regular components of the kNN graph (duplicate or
    near-duplicate captions), scipy restarts from a vector drawn with OS entropy, so the embedding, and
    then the topics, changed from run to run despite ``random_state`` (lmcinnes/umap#1277; here 119 or
    122 topics on openclipart). Not thread-safe: it swaps the module attribute for the duration.
    """
    import scipy.sparse.linalg as linalg

    original = linalg.eigsh
    if "rng" not in inspect.signature(original).parameters:  # an older scipy: nothing to seed through
        yield
        return
    generator = np.random.default_rng(seed)

    def eigsh(*args, **kwargs):
        kwargs.setdefault("rng", generator)
        return original(*args, **kwargs)

    linalg.eigsh = eigsh
    try:
        yield
    finally:
        linalg.eigsh = original


def make_clusterer(cfg: TopicConfig):
    """The ``hdbscan`` package (fast, supports approximate_predict) or scikit-learn's HDBSCAN."""
    if cfg.clusterer == "hdbscan":
        try:
            import hdbscan

            return hdbscan.HDBSCAN(min_cluster_size=cfg.min_cluster_size, min_samples=cfg.min_samples,
                                   cluster_selection_method=cfg.cluster_selection_method,
                                   prediction_data=True, core_dist_n_jobs=1)
        except ImportError:
            logger.warning("the hdbscan package is not installed; using sklearn.cluster.HDBSCAN")
    elif cfg.clusterer != "sklearn":
        raise ValueError(f"unknown clusterer {cfg.clusterer!r}: use hdbscan or sklearn")
    from sklearn.cluster import HDBSCAN

    return HDBSCAN(min_cluster_size=cfg.min_cluster_size, min_samples=cfg.min_samples,
                   cluster_selection_method=cfg.cluster_selection_method, copy=True)


def _reduce_fit(reducer, x: np.ndarray) -> np.ndarray:
    if hasattr(reducer, "fit_transform"):
        return np.asarray(reducer.fit_transform(x), dtype=np.float32)
    reducer.fit(x)
    return np.asarray(reducer.transform(x), dtype=np.float32)


def _cluster_fit(clusterer, z: np.ndarray) -> np.ndarray:
    if hasattr(clusterer, "fit_predict"):
        return np.asarray(clusterer.fit_predict(z), dtype=np.int64)
    clusterer.fit(z)
    return np.asarray(clusterer.labels_, dtype=np.int64)


@dataclass
class TopicModel:
    """The fitted reducer and clusterer, the raw labels of the fitted rows, centroids per label."""

    reducer: Any
    clusterer: Any
    fit_rows: np.ndarray  # global row ids of the subsample, sorted
    fit_labels: np.ndarray  # raw cluster labels of those rows (-1 = noise)
    fit_embedding: np.ndarray  # their reduced embeddings (for reassigning noise)
    centroids: np.ndarray  # (L, c) mean reduced embedding of each raw label 0..L-1

    @property
    def num_clusters(self) -> int:
        return len(self.centroids)

    def save(self, path: str | Path) -> None:
        signed_pickle.dump(self, path)  # UMAP and HDBSCAN objects only pickle: signed, see signed_pickle

    @staticmethod
    def load(path: str | Path) -> TopicModel:
        return signed_pickle.load(path)


def _check_enough(n: int, cfg: TopicConfig) -> None:
    """Name the option(s) that need more than ``n`` pairs, so the user lowers the right one."""
    needs = {"--umap-neighbors": (cfg.umap_neighbors, cfg.umap_neighbors + 1),
             "--min-cluster-size": (cfg.min_cluster_size, cfg.min_cluster_size)}
    short = {opt: (value, need) for opt, (value, need) in needs.items() if n < need}
    if short:
        why = " and ".join(f"{opt} {value} needs at least {need}" for opt, (value, need) in short.items())
        raise GramError(f"{n} pairs are too few to cluster: {why}; lower {' / '.join(short)} or use more pairs")


def fit_topics(x: np.ndarray, rows: np.ndarray, cfg: TopicConfig, seed: int,
               reducer=None, clusterer=None) -> TopicModel:
    """Fit on the subsample ``x`` (its global ``rows``); labels are renumbered 0..L-1 by first row."""
    _check_enough(len(x), cfg)
    reducer = reducer if reducer is not None else make_reducer(cfg, seed)
    clusterer = clusterer if clusterer is not None else make_clusterer(cfg)
    with warnings.catch_warnings(), seeded_eigsh(seed):
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")  # umap: seed forces one thread
        z = _reduce_fit(reducer, x)
    raw = _cluster_fit(clusterer, z)
    labels = np.full_like(raw, -1)
    order = [lab for lab in dict.fromkeys(raw.tolist()) if lab >= 0]
    for new, old in enumerate(order):
        labels[raw == old] = new
    if not order:
        raise ValueError(f"HDBSCAN found no cluster in {len(x)} pairs (all noise); "
                         "lower --min-cluster-size or use more pairs")
    centroids = np.stack([z[labels == k].mean(0) for k in range(len(order))]).astype(np.float32)
    return TopicModel(reducer, clusterer, np.asarray(rows, np.int64), labels, z, centroids)


def nearest_centroid(z: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    d = ((z[:, None, :] - centroids[None]) ** 2).sum(-1)
    return d.argmin(1).astype(np.int64)


def _supports_predict(clusterer) -> bool:
    return getattr(clusterer, "prediction_data", False) and type(clusterer).__module__.startswith("hdbscan")


def assign(model: TopicModel, x: np.ndarray, mode: str = "predict") -> tuple[np.ndarray, np.ndarray]:
    """Raw labels (-1 = noise) of new rows ``x`` and their reduced embeddings."""
    if not hasattr(model.reducer, "transform"):
        raise TypeError(f"{type(model.reducer).__name__} has no transform(): it cannot assign pairs "
                        "outside the fitted subsample; raise fit_size to cover all pairs")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        z = np.asarray(model.reducer.transform(x), dtype=np.float32)
    if mode == "predict" and _supports_predict(model.clusterer):
        import hdbscan

        raw, _ = hdbscan.approximate_predict(model.clusterer, z)
        return _renumber_like_fit(model, np.asarray(raw, np.int64)), z
    if mode not in ("predict", "centroid"):
        raise ValueError(f"unknown assignment {mode!r}: use predict or centroid")
    return nearest_centroid(z, model.centroids), z


def _renumber_like_fit(model: TopicModel, raw: np.ndarray) -> np.ndarray:
    """approximate_predict speaks the clusterer's labels; map them to ours (by first row)."""
    fitted = np.asarray(model.clusterer.labels_, np.int64)
    lut = np.full(int(fitted.max()) + 1, -1, np.int64)
    lut[fitted[fitted >= 0]] = model.fit_labels[fitted >= 0]
    return np.where(raw >= 0, lut[np.clip(raw, 0, None)], -1)
