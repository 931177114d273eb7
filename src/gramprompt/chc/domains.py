"""Stage 4: visual domains, k-means on the frozen image features inside each topic.

A topic of n pairs gets min(U, n // min_domain_size) domains (at least one), so every domain
can fill a support set. k-means can still leave a domain below the minimum; its members move
to the nearest remaining centroid. Domains are numbered by size, largest first.
"""
from __future__ import annotations

import numpy as np
from sklearn.cluster import MiniBatchKMeans

from gramprompt.chc.config import DomainConfig


def num_domains(size: int, cfg: DomainConfig) -> int:
    return max(1, min(cfg.domains, size // max(1, cfg.min_domain_size)))


def cluster_domains(features: np.ndarray, cfg: DomainConfig, seed: int) -> np.ndarray:
    """Domain id per row of ``features`` (one topic's L2-normalized image features)."""
    k = num_domains(len(features), cfg)
    if k == 1:
        return np.zeros(len(features), np.int64)
    km = MiniBatchKMeans(n_clusters=k, batch_size=cfg.batch_size, n_init=cfg.n_init, random_state=seed)
    labels = km.fit_predict(features).astype(np.int64)
    centers = km.cluster_centers_
    sizes = np.bincount(labels, minlength=k)
    small = sizes < cfg.min_domain_size
    if small.any() and not small.all():
        big = np.flatnonzero(~small)
        moved = small[labels]
        d = ((features[moved, None, :] - centers[None, big]) ** 2).sum(-1)
        labels[moved] = big[d.argmin(1)]
    order = np.argsort(-np.bincount(labels, minlength=k), kind="stable")
    rank = np.empty(k, np.int64)
    rank[order] = np.arange(k)
    return rank[labels]


def topic_domains_job(job: tuple[str, np.ndarray, dict, int]) -> np.ndarray:
    """Executor job: (feature store dir, the topic's global rows, DomainConfig dict, seed)."""
    from gramprompt.chc.store import FeatureStore

    root, rows, cfg, seed = job
    return cluster_domains(FeatureStore.open(root).gather("img", rows), DomainConfig(**cfg), seed)
