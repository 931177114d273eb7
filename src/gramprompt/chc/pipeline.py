"""Cross-Modal Hierarchical Clustering end to end, as resumable stages with files in between.

    features  pair shards -> feature store (per shard; executor; --shard-index/--num-shards)
    fit       noisy-pair filter, subsample, UMAP + HDBSCAN         -> topics/model.pkl
    assign    every shard's pairs -> raw topic labels (per shard; executor; --shard-index/--num-shards)
                                                                    -> topics/labels_{i}.npy
    cluster   Eq. 3 topic words (duplicates merged), k-means domains per topic (executor)
              -> hierarchy.parquet, topics.json, config.json, report/

Every stage skips what is already on disk, so a killed run is rerun with the same command. The
feature store and the topics folder record the settings they were made with (``settings.py``): a
rerun with other settings they depend on is refused instead of reusing them.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from gramprompt.backbones.registry import backbone_name
from gramprompt.chc.config import CHCConfig, FilterConfig
from gramprompt.chc.domains import topic_domains_job
from gramprompt.chc.executor import Executor, SerialExecutor
from gramprompt.chc.hierarchy import Hierarchy, Topic
from gramprompt.chc.settings import claim, feature_settings, topic_settings
from gramprompt.chc.store import FeatureStore, holds_shards
from gramprompt.chc.topic_words import ENGLISH_STOP_WORDS, count_words, merge_counts, name_topics
from gramprompt.chc.topics import TopicModel, assign, fit_topics, nearest_centroid
from gramprompt.errors import GramError
from gramprompt.locks import writes

logger = logging.getLogger(__name__)

FILTERED, NOISE = -2, -1  # raw label codes besides clusters 0..L-1
STAGES = ("all", "features", "fit", "assign", "cluster")


def sim_threshold(sims: np.ndarray, cfg: FilterConfig) -> float | None:
    """The similarity below which a pair is dropped as noisy; None when the filter is off."""
    cuts = []
    if cfg.threshold is not None:
        cuts.append(float(cfg.threshold))
    if cfg.quantile is not None and len(sims):
        cuts.append(float(np.quantile(sims, cfg.quantile)))
    return max(cuts) if cuts else None


@dataclass
class FitInfo:
    threshold: float | None
    candidates: int  # pairs that passed the filter
    fit_rows: int
    clusters: int


def fit_stage(store: FeatureStore, cfg: CHCConfig, out: Path, reducer=None, clusterer=None) -> TopicModel:
    """Filter, subsample (seeded) and fit UMAP + HDBSCAN; reuses ``out/topics/model.pkl`` if it was
    made with the same settings (refused otherwise)."""
    topics = out / "topics"
    made = (topics / "model.pkl").exists() or any(topics.glob("labels_*.npy"))
    claim(topics, topic_settings(store, cfg, reducer, clusterer), made,
          f"delete {topics} to fit the topics again (the features are kept), "
          f"or use another --out with --features {store.root}")
    path = topics / "model.pkl"
    if path.exists():
        return TopicModel.load(path)
    if not len(store):
        skipped = ", ".join(f"{k} {v}" for k, v in store.counts().items() if k != "pairs" and v)
        raise GramError(f"no pair to cluster in {store.root}: the pair source gave none "
                        f"(skipped: {skipped or 'nothing'}); check the pair source")
    sims = np.asarray(store.column("sim"), np.float32)
    threshold = sim_threshold(sims, cfg.filter)
    candidates = np.flatnonzero(sims >= threshold) if threshold is not None else np.arange(len(sims))
    rng = np.random.default_rng(cfg.seed)
    rows = candidates
    if len(candidates) > cfg.topics.fit_size:
        rows = np.sort(rng.choice(candidates, cfg.topics.fit_size, replace=False))
    logger.info("fitting topics on %d of %d pairs", len(rows), len(candidates))
    model = fit_topics(store.gather("text", rows), rows, cfg.topics, cfg.seed, reducer, clusterer)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)
    info = FitInfo(threshold, len(candidates), len(rows), model.num_clusters)
    (out / "topics" / "fit.json").write_text(json.dumps(asdict(info), indent=1))
    return model


def _labels_path(out: Path, index: int) -> Path:
    return out / "topics" / f"labels_{index:05d}.npy"


def assign_shard(store: FeatureStore, model: TopicModel, index: int, cfg: CHCConfig,
                 threshold: float | None) -> np.ndarray:
    """Raw labels of one shard: fitted rows keep their HDBSCAN label, the rest are assigned in
    chunks; then filtered pairs get FILTERED and noise is kept or reassigned per ``cfg``."""
    info = next(s for s in store.shards if s.index == index)
    rows = np.arange(info.offset, info.offset + info.rows)
    labels = np.full(info.rows, NOISE, np.int64)
    z_noise = np.zeros((info.rows, model.centroids.shape[1]), np.float32)
    pos = np.searchsorted(model.fit_rows, rows)
    in_fit = (pos < len(model.fit_rows)) & (model.fit_rows[np.minimum(pos, len(model.fit_rows) - 1)] == rows)
    labels[in_fit] = model.fit_labels[pos[in_fit]]
    z_noise[in_fit] = model.fit_embedding[pos[in_fit]]
    sims = store.metadata(index, ["sim"]).column("sim").to_numpy()
    passed = sims >= threshold if threshold is not None else np.ones(info.rows, bool)
    todo = np.flatnonzero(~in_fit & passed)
    texts = store.array("text", index)
    chunk = cfg.topics.assign_chunk
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        labels[part], z_noise[part] = assign(model, np.asarray(texts[part], np.float32), cfg.topics.assign)
    if cfg.topics.noise == "reassign":
        noisy = np.flatnonzero((labels == NOISE) & passed)
        if len(noisy):
            labels[noisy] = nearest_centroid(z_noise[noisy], model.centroids)
    elif cfg.topics.noise != "drop":
        raise ValueError(f"noise must be 'drop' or 'reassign', got {cfg.topics.noise!r}")
    labels[~passed] = FILTERED
    return labels


def assign_shard_job(job: tuple[str, str, int, str, str]) -> int:
    """Executor job: (store dir, out dir, shard, CHCConfig JSON, threshold JSON); writes labels."""
    root, out, index, cfg_json, threshold_json = job
    out = Path(out)
    path = _labels_path(out, index)
    if path.exists():
        return index
    store = FeatureStore.open(root)
    model = _load_model(str(out / "topics" / "model.pkl"))
    labels = assign_shard(store, model, index, CHCConfig.from_dict(json.loads(cfg_json)), json.loads(threshold_json))
    np.save(path.with_suffix(".tmp.npy"), labels.astype(np.int32))
    os.replace(path.with_suffix(".tmp.npy"), path)
    return index


_MODELS: dict[tuple[str, int], TopicModel] = {}


def _load_model(path: str) -> TopicModel:
    """One unpickling per worker process, not one per shard (keyed by path and mtime)."""
    key = (path, os.stat(path).st_mtime_ns)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = TopicModel.load(path)
    return _MODELS[key]


def assign_stage(store: FeatureStore, cfg: CHCConfig, out: Path, executor: Executor,
                 shards: Sequence[int] | None = None) -> None:
    """Labels for ``shards`` (default all) through ``executor``; finished shards are skipped."""
    threshold = json.loads((out / "topics" / "fit.json").read_text())["threshold"]
    shards = [s.index for s in store.shards] if shards is None else shards
    jobs = [(str(store.root), str(out), i, json.dumps(cfg.to_dict()), json.dumps(threshold))
            for i in shards if not _labels_path(out, i).exists()]
    executor.map(assign_shard_job, jobs, desc="assign topics" if jobs else None)


def read_labels(store: FeatureStore, out: Path) -> np.ndarray:
    missing = [s.index for s in store.shards if not _labels_path(out, s.index).exists()]
    if missing:
        raise FileNotFoundError(f"topic labels missing for {len(missing)} shard(s), e.g. {missing[:5]} "
                                "(run the assign stage for them)")
    return np.concatenate([np.load(_labels_path(out, s.index)).astype(np.int64) for s in store.shards])


def cluster_stage(store: FeatureStore, cfg: CHCConfig, out: Path, executor: Executor,
                  info: dict) -> Hierarchy:
    """Topic words (Eq. 3, streamed over shards), duplicate words resolved, domains per topic."""
    raw = read_labels(store, out)
    stop = ENGLISH_STOP_WORDS | frozenset(cfg.topics.extra_stop_words)
    counts: dict = {}
    for s in tqdm(store.shards, desc="topic words", leave=False):
        captions = store.metadata(s.index, ["caption"]).column("caption").to_pylist()
        merge_counts(counts, count_words(captions, raw[s.offset:s.offset + s.rows], stop))
    for label in range(int(raw.max()) + 1 if len(raw) else 0):  # a cluster of stop words only
        counts.setdefault(label, Counter())
    remap, words, names = name_topics(counts, cfg.topics.duplicates, cfg.topics.top_words, cfg.topics.word_min_share)
    lut = np.full(max(remap, default=-1) + 1, -1, np.int64)
    for old, new in remap.items():
        lut[old] = new
    topic = np.where(raw >= 0, lut[np.clip(raw, 0, None)], -1)
    order = np.argsort(topic, kind="stable")  # rows grouped by topic, in row order within each
    bounds = np.searchsorted(topic[order], np.arange(len(names) + 1))
    rows_of = [order[bounds[t]:bounds[t + 1]] for t in range(len(names))]
    jobs = [(str(store.root), rows, asdict(cfg.domains), cfg.seed + t) for t, rows in enumerate(rows_of)]
    domain = np.full(len(topic), -1, np.int64)
    for rows, dom in zip(rows_of, executor.map(topic_domains_job, jobs, desc="domains"), strict=True):
        domain[rows] = dom
    topics = [Topic(t, names[t], [(w, float(sc)) for w, sc in zip(words[t].words, words[t].scores)],
                    int(len(rows_of[t])), np.bincount(domain[rows_of[t]]).tolist())
              for t in range(len(names))]
    status = np.where(raw == FILTERED, "filtered", np.where(topic >= 0, "kept", "noise"))
    info = {**info, "counts": {**store.counts(), "filtered": int((raw == FILTERED).sum()),
                               "noise": int((status == "noise").sum()), "kept": int((topic >= 0).sum()),
                               "clusters": int(raw.max()) + 1 if len(raw) else 0, "topics": len(names)},
            "fit": json.loads((out / "topics" / "fit.json").read_text())}
    return Hierarchy(store.column("key"), np.arange(len(raw)), store.column("source"), status.tolist(),
                     topic, domain, topics, info)


def features_stage(pairs: str, backbone_spec: str, features: Path, cfg: CHCConfig, executor: Executor,
                   shard_index: int = 0, num_shards: int = 1, device: str | None = None, backbone=None) -> None:
    """Extract this job's shards of ``pairs`` into the store ``features`` (finished ones skipped).

    In this process when the executor is serial (reusing ``backbone`` if given), else one job
    per shard, each worker loading the models once."""
    from gramprompt.chc.features import FeatureExtractor, extract, extract_shard_job, load_text_model, my_shards
    from gramprompt.data.pairs import open_pair_source

    claim(features, feature_settings(pairs, backbone_spec, cfg), holds_shards(features), _redo_features(features))
    source = open_pair_source(pairs, cfg.shard_size)
    if hasattr(source, "report"):  # what the source selected and removed, with its data's attribution
        features.mkdir(parents=True, exist_ok=True)
        (features / "source.json").write_text(json.dumps(source.report(), indent=1))
    shards = my_shards(source.num_shards(), shard_index, num_shards)
    if isinstance(executor, SerialExecutor):
        if backbone is None:
            from gramprompt.backbones import load_backbone

            backbone = load_backbone(backbone_spec, device=device)
        extractor = FeatureExtractor(backbone, load_text_model(cfg.features.text_model, backbone.device), cfg.features)
        extract(extractor, source, features, shards)
        return
    done = {s.index for s in FeatureStore(features).shards} if (features / "metadata").is_dir() else set()
    jobs = [(pairs, cfg.shard_size, i, str(features), backbone_spec, device, json.dumps(asdict(cfg.features)))
            for i in shards if i not in done]
    executor.map(extract_shard_job, jobs, desc=f"features {pairs}" if jobs else None)


def _redo_features(features: Path) -> str:
    return f"delete {features} to extract the features again, or use another --out (or --features)"


@writes("out", "gram chc")
def run_chc(pairs: str, backbone_spec: str, out: str | os.PathLike, cfg: CHCConfig | None = None,
            executor: Executor | None = None, stage: str = "all", shard_index: int = 0, num_shards: int = 1,
            features: str | os.PathLike | None = None, device: str | None = None, backbone=None,
            report: bool = True, agreement_field: str | None = None,
            domain_field: str | None = None) -> Hierarchy | None:
    """``gram chc`` stages: ``features`` and ``assign`` do this job's shards only (``shard_index``
    of ``num_shards``, e.g. a SLURM array), ``fit`` fits the topic model once, ``cluster`` finishes
    what is left (fit, assign, words, domains, report) on a complete store; ``all`` runs them all.
    Returns the hierarchy when it was built."""
    cfg = cfg or CHCConfig()
    executor = executor or SerialExecutor()
    out = Path(out)
    features = Path(features) if features is not None else out / "features"
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: use {', '.join(STAGES)}")
    if stage in ("all", "cluster", "fit") and num_shards > 1:
        raise ValueError(f"--num-shards splits the features and assign stages only, not {stage!r}")
    if stage in ("all", "features"):
        features_stage(pairs, backbone_spec, features, cfg, executor, shard_index, num_shards, device, backbone)
        if stage == "features":
            return None
    store = FeatureStore(features)  # perhaps made by other jobs or passed with --features: check it too
    claim(features, feature_settings(pairs, backbone_spec, cfg), True, _redo_features(features))
    if stage in ("fit", "assign"):
        fit_stage(store, cfg, out)
        if stage == "assign":
            from gramprompt.chc.features import my_shards

            mine = my_shards(len(store.shards), shard_index, num_shards)
            assign_stage(store, cfg, out, executor, [store.shards[i].index for i in mine])
        return None
    hierarchy = build_hierarchy(store, cfg, out, executor, {"pairs": pairs, "backbone": backbone_name(backbone_spec)})
    if report:
        from gramprompt.chc.report import write_report

        write_report(hierarchy, out, field=agreement_field, domain_field=domain_field)
    return hierarchy


def build_hierarchy(store: FeatureStore, cfg: CHCConfig, out: str | os.PathLike,
                    executor: Executor | None = None, info: dict | None = None,
                    reducer=None, clusterer=None) -> Hierarchy:
    """fit -> assign -> cluster on a complete feature store; writes and returns the hierarchy."""
    out = Path(out)
    executor = executor or SerialExecutor()
    fit_stage(store, cfg, out, reducer, clusterer)
    assign_stage(store, cfg, out, executor)
    info = {"config": cfg.to_dict(), "features": str(Path(store.root).resolve()), **(info or {})}
    hierarchy = cluster_stage(store, cfg, out, executor, info)
    hierarchy.save(out)
    return hierarchy
