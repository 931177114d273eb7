"""A synthetic image-text mixture with known topics and known visual domains.

Ground truth for tests and data at any size for benchmarks: caption embeddings scatter around
one random direction per topic, image features around one direction per (topic, domain), and
each caption names its topic word among filler words shared by all topics.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from gramprompt.chc.store import write_shard

FILLER = ("photo", "image", "picture", "showing", "nice", "view", "colorful", "small", "large", "old")


@dataclass
class Mixture:
    topic: np.ndarray  # (N,) true topic of each pair
    domain: np.ndarray  # (N,) true domain within the topic
    words: list[str]  # topic word of each topic


def topic_word(t: int) -> str:
    """Letters only, so the tokenizer keeps it whole: 0 -> "topicaa", 27 -> "topicbb"."""
    return "topic" + chr(97 + t // 26 % 26) + chr(97 + t % 26)


def write_mixture(root: str | os.PathLike, n: int, topics: int = 8, domains: int = 3, seed: int = 0,
                  text_dim: int = 384, image_dim: int = 512, text_noise: float = 0.6,
                  image_noise: float = 0.6, shard_rows: int = 10_000) -> Mixture:
    """Write an ``n``-pair feature store to ``root``, shard by shard (memory stays per shard)."""
    rng = np.random.default_rng(seed)
    t_centers = _unit(rng.standard_normal((topics, text_dim)))
    i_centers = _unit(rng.standard_normal((topics, domains, image_dim)))
    topic = rng.integers(0, topics, n)
    domain = rng.integers(0, domains, n)
    words = [topic_word(t) for t in range(topics)]
    for index, start in enumerate(range(0, n, shard_rows)):
        t, d = topic[start:start + shard_rows], domain[start:start + shard_rows]
        m = len(t)
        text = _unit(t_centers[t] + text_noise * rng.standard_normal((m, text_dim)) / np.sqrt(text_dim))
        image = _unit(i_centers[t, d] + image_noise * rng.standard_normal((m, image_dim)) / np.sqrt(image_dim))
        fill = rng.integers(0, len(FILLER), (m, 3))
        captions = [f"{FILLER[a]} {words[k]} {FILLER[b]} {FILLER[c]}" for k, (a, b, c) in zip(t, fill)]
        keys = [f"{start + j:09d}" for j in range(m)]
        sims = rng.uniform(0.0, 1.0, m)  # stands in for image-text similarity (noisy-pair filter)
        write_shard(root, index, image.astype(np.float32), text.astype(np.float32),
                    {"key": keys, "caption": captions, "source": keys, "sim": sims.tolist(),
                     "meta": ["{}"] * m}, {"pairs": m})
    return Mixture(topic, domain, words)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
