"""Every knob of Cross-Modal Hierarchical Clustering, with the defaults and why.

The paper uses BERTopic's pipeline (Sentence-BERT -> UMAP -> HDBSCAN) and says nothing of its
settings, so the UMAP/HDBSCAN defaults are BERTopic's (n_neighbors 15, 5 components, min_dist 0,
cosine metric; min_cluster_size 10, EOM selection). The number of visual domains per topic and
the noisy-pair filter are not given either: 3 domains, filter off.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class FeatureConfig:
    """Stage 1: caption embeddings and frozen image features, per pair-source shard."""

    text_model: str = "default"  # "default" = the offline all-MiniLM-L6-v2; any sentence-transformers name/path
    batch_size: int = 64
    dtype: str = "float32"  # storage dtype of the arrays ("float16" halves the disk at scale)
    # also keep the backbone's cacheable image stems (float16; only backbones with cache_stems), which
    # visual-prompt meta-training (VPT, UNIGRAM) reads instead of decoding every image again
    stems: bool = False
    # look each shard up in a cache shared by every feature store on this machine (``chc.reuse``), keyed
    # by the backbone's weights, these settings and the shard's pairs, so nested corpora
    # (``openclipart+iconify:N``) and stores under other roots encode a pair once
    reuse: bool = True
    # bf16 autocast for the image tower only ("bf16"; None: fp32): the default backbone's trunk ran 1.6-2.3x
    # faster on a CPU with AVX512-BF16 (features 1.4x). Captions stay fp32, so the topics are those of fp32
    # features; the image features (visual domains, the image-caption filter) and stems move by bf16 rounding
    # (docs/CHC.md measures it)
    image_autocast: str | None = None

    def __post_init__(self) -> None:
        from gramprompt.autocast import check_autocast

        check_autocast(self.image_autocast)
        if self.image_autocast == "none":  # one spelling of fp32, so that stores and the reuse cache agree
            self.image_autocast = None

    def recorded(self) -> dict[str, Any]:
        """The settings that change what is computed, as feature stores and the shard-reuse cache record them: not
        the batch size or reuse (speed and memory only), and ``image_autocast`` only when set, so that stores and
        cached shards made before the option existed stay valid."""
        out = {k: v for k, v in asdict(self).items() if k not in ("batch_size", "reuse")}
        if out["image_autocast"] is None:
            del out["image_autocast"]
        return out


@dataclass
class FilterConfig:
    """Stage 2: drop pairs whose backbone image-text cosine similarity is low (noisy pairs).

    ``threshold`` drops sim < threshold; ``quantile`` drops the lowest fraction. Both None = off.
    """

    threshold: float | None = None
    quantile: float | None = None

    def __post_init__(self) -> None:
        if self.quantile is not None and not 0.0 <= self.quantile < 1.0:
            raise ValueError(f"filter quantile must be in [0, 1), got {self.quantile}")


@dataclass
class TopicConfig:
    """Stage 3: semantic topics from caption embeddings (UMAP -> HDBSCAN -> Eq. 3 topic words)."""

    umap_neighbors: int = 15
    umap_components: int = 5
    umap_min_dist: float = 0.0
    umap_metric: str = "cosine"
    min_cluster_size: int = 10
    min_samples: int | None = None  # None: hdbscan's default (= min_cluster_size)
    cluster_selection_method: str = "eom"
    clusterer: str = "hdbscan"  # "hdbscan" (the package) or "sklearn" (sklearn.cluster.HDBSCAN)
    noise: str = "drop"  # "drop": noise pairs are not kept; "reassign": to the nearest topic centroid
    duplicates: str = "merge"  # clusters with the same top word: "merge" or "disambiguate"
    fit_size: int = 100_000  # fit UMAP + HDBSCAN on at most this many pairs, assign the rest
    assign_chunk: int = 20_000  # rows per assignment chunk (bounds the memory of the scale path)
    assign: str = "predict"  # "predict" (umap.transform + approximate_predict) or "centroid"
    top_words: int = 10
    word_min_share: float = 0.0  # > 0: a cluster counts in Eq. 3's L_w only if the word is this share of it
    extra_stop_words: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        least = {"min_cluster_size (--min-cluster-size)": (self.min_cluster_size, 2),
                 "umap_neighbors (--umap-neighbors)": (self.umap_neighbors, 2),
                 "umap_components (--umap-components)": (self.umap_components, 1),
                 "fit_size (--fit-size)": (self.fit_size, 2), "assign_chunk": (self.assign_chunk, 1),
                 "top_words": (self.top_words, 1)}
        bad = [f"{k} must be >= {low}, got {v}" for k, (v, low) in least.items() if v < low]
        if self.min_samples is not None and self.min_samples < 1:
            bad.append(f"min_samples must be >= 1 (or unset), got {self.min_samples}")
        if bad:
            raise ValueError("; ".join(bad))


# the TopicConfig fields only the cluster stage reads (topic words), which is redone on every run; every
# other field shapes the fitted topic model or the labels, so ``settings.topic_settings`` records it
WORD_SETTINGS = ("duplicates", "top_words", "word_min_share", "extra_stop_words")


@dataclass
class DomainConfig:
    """Stage 4: visual domains, k-means on image features inside each topic."""

    domains: int = 3  # U, domains per topic
    min_domain_size: int = 5  # a topic gets at most size // min_domain_size domains (>= 1)
    batch_size: int = 1024  # MiniBatchKMeans batch
    n_init: int = 3

    def __post_init__(self) -> None:
        # 0 or fewer domains once gave every topic a single domain silently: no domain shift at all
        bad = {k: v for k, v in (("domains (--domains)", self.domains), ("min_domain_size (--min-domain-size)",
               self.min_domain_size), ("batch_size", self.batch_size), ("n_init", self.n_init)) if v < 1}
        if bad:
            raise ValueError("; ".join(f"{k} must be >= 1, got {v}" for k, v in bad.items()))


@dataclass
class CHCConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    topics: TopicConfig = field(default_factory=TopicConfig)
    domains: DomainConfig = field(default_factory=DomainConfig)
    seed: int = 0
    shard_size: int = 1000  # pairs per shard for listed sources (a WebDataset tar is one shard)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CHCConfig:
        topics = dict(d.get("topics", {}))
        if "extra_stop_words" in topics:
            topics["extra_stop_words"] = tuple(topics["extra_stop_words"])
        return cls(FeatureConfig(**d.get("features", {})), FilterConfig(**d.get("filter", {})),
                   TopicConfig(**topics), DomainConfig(**d.get("domains", {})),
                   seed=d.get("seed", 0), shard_size=d.get("shard_size", 1000))
