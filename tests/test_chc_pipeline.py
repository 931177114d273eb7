"""CHC on a synthetic mixture with known topics and domains: recovery, determinism, the scale path."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from gramprompt.chc.config import CHCConfig, FilterConfig
from gramprompt.chc.domains import cluster_domains, num_domains
from gramprompt.chc.executor import ProcessExecutor, make_executor
from gramprompt.chc.hierarchy import Hierarchy
from gramprompt.chc.pipeline import build_hierarchy, sim_threshold
from gramprompt.chc.report import write_report
from gramprompt.chc.store import FeatureStore, StoreError
from gramprompt.chc.synthetic import write_mixture

N, TOPICS, DOMAINS = 900, 5, 3


def small_config(**topics) -> CHCConfig:
    cfg = CHCConfig()
    cfg.topics.min_cluster_size = 25
    cfg.topics.fit_size = 600  # fewer than N: the other 300 go through the assignment path
    cfg.topics.assign_chunk = 128
    for k, v in topics.items():
        setattr(cfg.topics, k, v)
    return cfg


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixture")
    truth = write_mixture(root / "features", N, TOPICS, DOMAINS, seed=3, shard_rows=250)
    return root, truth


@pytest.fixture(scope="module")
def hierarchy(mixture):
    root, _ = mixture
    return build_hierarchy(FeatureStore(root / "features"), small_config(), root / "h")


def test_store_reads_back_row_aligned(mixture):
    root, truth = mixture
    store = FeatureStore(root / "features")
    assert len(store) == N and [s.rows for s in store.shards] == [250, 250, 250, 150]
    rows = np.array([899, 0, 251, 250, 3])
    chunks = np.concatenate([c for _, c in store.chunks("text", 100)])
    np.testing.assert_array_equal(store.gather("text", rows), chunks[rows])
    assert store.column("key")[251] == f"{251:09d}"
    assert store.counts() == {"pairs": N}
    for bad in ([N], [-1]):  # reliability probe: hierarchy rows out of range raised IndexError
        with pytest.raises(StoreError, match="outside the 900 rows"):
            store.gather("text", np.array(bad))


def test_topics_and_domains_are_recovered(mixture, hierarchy):
    _, truth = mixture
    h = hierarchy
    kept = h.kept
    assert kept.mean() > 0.95
    assert adjusted_rand_score(truth.topic[kept], h.topic[kept]) >= 0.9
    assert sorted(h.class_names()) == sorted(truth.words)  # Eq. 3 finds each topic's word
    for t in h.topics:
        rows = kept & (h.topic == t.id)
        assert adjusted_rand_score(truth.domain[rows], h.domain[rows]) >= 0.9
        assert len(t.domains) == DOMAINS and sum(t.domains) == t.size == rows.sum()
        assert t.domains == sorted(t.domains, reverse=True)


def test_same_seed_same_hierarchy_and_files_round_trip(mixture, hierarchy, tmp_path):
    root, _ = mixture
    again = build_hierarchy(FeatureStore(root / "features"), small_config(), tmp_path / "h")
    np.testing.assert_array_equal(again.topic, hierarchy.topic)
    np.testing.assert_array_equal(again.domain, hierarchy.domain)
    loaded = Hierarchy.load(root / "h")
    np.testing.assert_array_equal(loaded.topic, hierarchy.topic)
    assert loaded.topics == hierarchy.topics and loaded.keys == hierarchy.keys
    assert loaded.info["counts"]["kept"] == int(hierarchy.kept.sum())
    assert loaded.features_dir == (root / "features").resolve()


def test_stages_resume_from_disk(mixture, hierarchy):
    root, _ = mixture
    (root / "h" / "topics" / "labels_00001.npy").unlink()  # as if killed during assignment
    before = (root / "h" / "topics" / "model.pkl").stat().st_mtime_ns
    again = build_hierarchy(FeatureStore(root / "features"), small_config(), root / "h")
    assert (root / "h" / "topics" / "model.pkl").stat().st_mtime_ns == before  # not refitted
    np.testing.assert_array_equal(again.topic, hierarchy.topic)


def test_noise_reassign_and_filter(mixture, tmp_path):
    root, truth = mixture
    cfg = small_config(noise="reassign", min_cluster_size=40)
    cfg.filter = FilterConfig(quantile=0.2)
    h = build_hierarchy(FeatureStore(root / "features"), cfg, tmp_path / "h")
    sims = np.asarray(FeatureStore(root / "features").column("sim"))
    dropped = sims < np.quantile(sims, 0.2)
    assert h.info["counts"]["filtered"] == dropped.sum()
    assert (np.array(h.status)[dropped] == "filtered").all()
    assert "noise" not in h.status and (h.topic[~dropped] >= 0).all()
    assert adjusted_rand_score(truth.topic[~dropped], h.topic[~dropped]) >= 0.9


def test_sim_threshold_rules():
    sims = np.arange(10, dtype=np.float32) / 10
    assert sim_threshold(sims, FilterConfig()) is None
    assert sim_threshold(sims, FilterConfig(threshold=0.25)) == 0.25
    assert sim_threshold(sims, FilterConfig(quantile=0.5)) == pytest.approx(0.45)
    assert sim_threshold(sims, FilterConfig(threshold=0.9, quantile=0.5)) == 0.9  # the stricter wins
    with pytest.raises(ValueError):
        FilterConfig(quantile=1.0)


def test_domains_shrink_for_small_topics():
    cfg = CHCConfig().domains
    assert [num_domains(n, cfg) for n in (1, 9, 10, 14, 15, 1000)] == [1, 1, 2, 2, 3, 3]
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.01, (40, 4)) + 1, rng.normal(0, 0.01, (2, 4)) - 1])
    labels = cluster_domains(x, cfg, seed=0)  # k = 3 leaves at most a 2-member domain: folded in
    assert np.bincount(labels).min() >= cfg.min_domain_size


def test_too_few_pairs_is_a_clear_error(tmp_path):
    write_mixture(tmp_path / "f", 12, 2, 2)
    with pytest.raises(ValueError, match="too few"):
        build_hierarchy(FeatureStore(tmp_path / "f"), small_config(), tmp_path / "h")
    with pytest.raises(StoreError, match="no feature shards"):
        FeatureStore(tmp_path / "empty")


def test_process_executor_gives_the_same_hierarchy(mixture, hierarchy, tmp_path):
    root, _ = mixture
    h = build_hierarchy(FeatureStore(root / "features"), small_config(), tmp_path / "h", ProcessExecutor(2))
    np.testing.assert_array_equal(h.topic, hierarchy.topic)
    np.testing.assert_array_equal(h.domain, hierarchy.domain)


def test_ray_executor_gives_the_same_hierarchy(mixture, hierarchy, tmp_path):
    ray = pytest.importorskip("ray")
    try:
        executor = make_executor("ray")
        h = build_hierarchy(FeatureStore(mixture[0] / "features"), small_config(), tmp_path / "h", executor)
    finally:
        ray.shutdown()
    np.testing.assert_array_equal(h.topic, hierarchy.topic)
    np.testing.assert_array_equal(h.domain, hierarchy.domain)


def test_report_files(mixture, hierarchy):
    root, _ = mixture
    folder = write_report(hierarchy, root / "h")
    for name in ("sizes.png", "grid.png", "report.md"):
        assert (folder / name).stat().st_size > 0
    text = (folder / "report.md").read_text()
    assert all(w in text for w in hierarchy.class_names())
    assert json.loads((root / "h" / "config.json").read_text())["config"]["topics"]["fit_size"] == 600


def test_any_reducer_and_clusterer_plug_in(mixture, tmp_path):
    """e.g. cuML on a GPU: here PCA (fit/transform) and KMeans (fit_predict); pairs outside the
    fitted subsample then go to the nearest topic centroid."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    root, truth = mixture
    h = build_hierarchy(FeatureStore(root / "features"), small_config(), tmp_path / "h",
                        reducer=PCA(8, random_state=0), clusterer=KMeans(TOPICS, n_init=4, random_state=0))
    assert h.kept.all() and len(h.topics) == TOPICS
    assert adjusted_rand_score(truth.topic, h.topic) >= 0.9


def test_swapped_or_damaged_shards_are_errors_naming_the_file(mixture, hierarchy, tmp_path):
    """Reliability probe: two feature shards swapped were used silently; damaged shards gave library errors
    without the file."""
    import shutil

    from gramprompt.chc.hierarchy import Hierarchy

    root, _ = mixture
    feats = tmp_path / "features"
    shutil.copytree(root / "features", feats)
    h = Hierarchy.load(root / "h")
    h.info = {**h.info, "features": str(feats)}
    h.store()  # the copy holds the same pairs
    # the image features of shards 0 and 1 swapped (same row counts): the recorded digests see it
    a, b = (feats / "img_emb" / f"img_emb_{i:05d}.npy" for i in (0, 1))
    tmp = a.with_suffix(".x")
    a.rename(tmp), b.rename(a), tmp.rename(b)
    with pytest.raises(StoreError, match="img_emb_00000.npy is not the array"):
        FeatureStore(feats).array("img", 0)
    b.rename(tmp), a.rename(b), tmp.rename(a)  # back
    # whole shards swapped (metadata and arrays): the store reads consistently, but not as the hierarchy's rows
    for kind, name in (("metadata", "metadata_{:05d}.parquet"), ("img_emb", "img_emb_{:05d}.npy"),
                       ("text_emb", "text_emb_{:05d}.npy")):
        a, b = (feats / kind / name.format(i) for i in (0, 1))
        a.rename(tmp), b.rename(a), tmp.rename(b)
    h = Hierarchy.load(root / "h")
    h.info = {**h.info, "features": str(feats)}
    with pytest.raises(StoreError, match="does not hold this hierarchy's pairs"):
        h.store()
    # a damaged array or metadata file
    (feats / "text_emb" / "text_emb_00002.npy").write_bytes(b"\\x93NUMPY garbage")
    with pytest.raises(StoreError, match="text_emb_00002.npy is damaged"):
        FeatureStore(feats).array("text", 2)
    (feats / "metadata" / "metadata_00003.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(StoreError, match="metadata_00003.parquet is damaged"):
        FeatureStore(feats)
