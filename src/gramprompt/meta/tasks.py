"""Meta-training tasks from a CHC hierarchy (paper Sec. 3.2, "Automatic Meta-Training Task Generation").

A K_t-way task samples K_t topics; their topic words are the class names. The support set of each
class comes from ONE visual domain of its topic, the query set from ALL its domains (round robin over
the domains in random order, so small domains are not drowned by large ones), never reusing a support
image. This is the simulated domain shift; ``domain_shift=False`` (the ablation) draws the support
set from all domains too. ``TaskSampler.supervised`` builds tasks from a labelled dataset's classes
instead (the "- CHC" ablation), with visual domains found inside each class (``meta.run.class_domains``)
so that the row keeps the simulated domain shift and differs from UNIGRAM only in where the classes
come from.

``TaskSampler.sample_images`` serves the "- meta-learning" ablation (prompt pre-training): a batch of
images drawn uniformly from every topic the tasks draw from, labelled over ALL those topics' names.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass
class TaskConfig:
    ways: int = 5  # K_t
    support_shots: int = 4  # per class
    query_shots: int = 8  # per class
    domain_shift: bool = True

    def __post_init__(self) -> None:
        if self.ways < 2 or self.support_shots < 1 or self.query_shots < 1:
            raise ValueError(f"a task needs ways >= 2 and shots >= 1, got {self}")


@dataclass
class Task:
    """Rows index whatever the sampler was built on (e.g. hierarchy rows / feature-store rows)."""

    classnames: list[str]
    topics: np.ndarray  # (K,) topic id of each class
    support: np.ndarray  # (K * support_shots,) rows
    support_labels: np.ndarray  # 0..K-1
    query: np.ndarray
    query_labels: np.ndarray


@dataclass
class ImageBatch:
    """Images of many topics, each labelled by its topic's index in ``classnames`` (every topic)."""

    classnames: list[str]
    rows: np.ndarray
    labels: np.ndarray


class TaskSampler:
    """Samples tasks with an explicit ``numpy.random.Generator`` (never the global RNG)."""

    def __init__(self, topic: np.ndarray, domain: np.ndarray, names: list[str], cfg: TaskConfig | None = None,
                 rows: np.ndarray | None = None):
        """``topic``/``domain`` per item (-1 = not kept); ``rows`` maps items to the rows tasks
        report (default: the item index)."""
        self.cfg = cfg or TaskConfig()
        self.names = list(names)
        topic, domain = np.asarray(topic), np.asarray(domain)
        rows = np.arange(len(topic)) if rows is None else np.asarray(rows)
        self.domains: dict[int, list[np.ndarray]] = {}
        self.skipped: dict[str, int] = {"too_small_topics": 0}
        for t in range(len(self.names)):
            mine = topic == t
            parts = [rows[mine & (domain == d)] for d in np.unique(domain[mine])]
            if self._usable(parts):
                self.domains[t] = parts
            else:
                self.skipped["too_small_topics"] += 1
        self.topics = np.array(sorted(self.domains))
        if len(self.topics) < self.cfg.ways:
            raise ValueError(f"only {len(self.topics)} topics can fill a {self.cfg.ways}-way task with "
                             f"{self.cfg.support_shots} support + {self.cfg.query_shots} query images per class "
                             f"({self.skipped['too_small_topics']} topics too small); lower ways or shots")

    @classmethod
    def from_hierarchy(cls, hierarchy, cfg: TaskConfig | None = None) -> TaskSampler:
        """Tasks whose rows are feature-store rows of ``hierarchy`` (a ``chc.hierarchy.Hierarchy``)."""
        return cls(hierarchy.topic, hierarchy.domain, hierarchy.class_names(), cfg, rows=hierarchy.rows)

    @classmethod
    def supervised(cls, labels: np.ndarray, names: list[str], cfg: TaskConfig | None = None,
                   domains: np.ndarray | None = None) -> TaskSampler:
        """Tasks over a labelled dataset's classes, with ``domains`` per item (e.g. k-means inside each
        class, ``meta.run.class_domains``); without them every class is one domain (no domain shift)."""
        labels = np.asarray(labels)
        return cls(labels, np.zeros_like(labels) if domains is None else np.asarray(domains), names, cfg)

    @property
    def classnames(self) -> list[str]:
        """The names of the topics tasks draw from (pre-training's label space), in ``topics`` order."""
        return [self.names[int(t)] for t in self.topics]

    @cached_property
    def _pool(self) -> tuple[np.ndarray, np.ndarray]:
        """Every row of the usable topics and its label (index into ``classnames``)."""
        rows = [np.concatenate(self.domains[int(t)]) for t in self.topics]
        return np.concatenate(rows), np.repeat(np.arange(len(rows)), [len(r) for r in rows])

    def sample_images(self, rng: np.random.Generator, n: int) -> ImageBatch:
        """``n`` distinct images (at most all of them) drawn uniformly from every usable topic: plain
        classification of the clustered data over all topic names, on the same images and topics the
        tasks see."""
        rows, labels = self._pool
        take = rng.choice(len(rows), min(n, len(rows)), replace=False)
        return ImageBatch(self.classnames, rows[take], labels[take])

    def _usable(self, parts: list[np.ndarray]) -> bool:
        total = sum(len(p) for p in parts)
        if total < self.cfg.support_shots + self.cfg.query_shots:
            return False
        return not self.cfg.domain_shift or max(len(p) for p in parts) >= self.cfg.support_shots

    def sample(self, rng: np.random.Generator) -> Task:
        cfg = self.cfg
        chosen = rng.choice(self.topics, cfg.ways, replace=False)
        support, query = [], []
        for t in chosen:
            parts = self.domains[int(t)]
            if cfg.domain_shift:
                big = [i for i, p in enumerate(parts) if len(p) >= cfg.support_shots]
                s = rng.choice(parts[int(rng.choice(big))], cfg.support_shots, replace=False)
            else:
                s = rng.choice(np.concatenate(parts), cfg.support_shots, replace=False)
            support.append(s)
            query.append(_round_robin(parts, set(s.tolist()), cfg.query_shots, rng))
        k = np.arange(cfg.ways)
        return Task([self.names[int(t)] for t in chosen], chosen, np.concatenate(support),
                    np.repeat(k, cfg.support_shots), np.concatenate(query), np.repeat(k, cfg.query_shots))


def _round_robin(parts: list[np.ndarray], exclude: set, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` items spread evenly over the domains (in random order), without ``exclude``."""
    pools = [rng.permutation([r for r in p.tolist() if r not in exclude]) for p in parts]
    order = rng.permutation(len(pools))
    taken, pos = [], [0] * len(pools)
    while len(taken) < n:
        for i in order:
            if pos[i] < len(pools[i]) and len(taken) < n:
                taken.append(pools[i][pos[i]])
                pos[i] += 1
    return np.array(taken, dtype=np.int64)
