"""A rerun of `gram chc` into an existing folder never mixes stages made with other settings.

The same settings resume (a killed run) or reuse; other settings that the stored features or
topics depend on are refused with the difference and how to start over; settings only the
cluster stage uses are simply redone.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from test_chc_pipeline import small_config as pipeline_config

from gramprompt.chc.config import CHCConfig
from gramprompt.chc.features import FeatureExtractor
from gramprompt.chc.pipeline import build_hierarchy, run_chc
from gramprompt.chc.store import FeatureStore
from gramprompt.chc.synthetic import write_mixture
from gramprompt.data.dataset import DatasetError
from gramprompt.errors import GramError


def write_pairs(root, n=14):
    """``n`` small random images with captions."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / f"{i:02d}.png")
    rows = [{"path": f"{i:02d}.png", "caption": f"picture number {i}"} for i in range(n)]
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"folder:{root}"


def features(pairs, spec, out, backbone, shard_size=5, stage="features", **kw):
    cfg = CHCConfig(shard_size=shard_size)
    return run_chc(pairs, spec, out, cfg, stage=stage, backbone=backbone, report=False, **kw)


def store_rows(folder):
    store = FeatureStore(folder)
    return (store.column("key"), [s.rows for s in store.shards],
            np.concatenate([c for _, c in store.chunks("img")]), np.concatenate([c for _, c in store.chunks("text")]))


def test_features_killed_then_resumed_with_another_shard_size_duplicate_nothing(backbone, tiny_clip_dir,
                                                                                 tmp_path, monkeypatch):
    pairs, spec = write_pairs(tmp_path / "pairs"), f"hf:{tiny_clip_dir}"
    features(pairs, spec, tmp_path / "clean", backbone)
    run_shard = FeatureExtractor.run_shard

    def killed_at_shard_1(self, source, index, out):
        if index == 1:
            raise KeyboardInterrupt
        return run_shard(self, source, index, out)

    with monkeypatch.context() as m:
        m.setattr(FeatureExtractor, "run_shard", killed_at_shard_1)
        with pytest.raises(KeyboardInterrupt):
            features(pairs, spec, tmp_path / "h", backbone)
    with pytest.raises(GramError, match="shard_size: 5 on disk, 4 now") as err:
        features(pairs, spec, tmp_path / "h", backbone, shard_size=4)
    assert f"delete {tmp_path / 'h' / 'features'}" in str(err.value)
    assert [s.rows for s in FeatureStore(tmp_path / "h" / "features").shards] == [5]  # nothing added
    features(pairs, spec, tmp_path / "h", backbone)  # the same settings resume
    keys, rows, img, txt = store_rows(tmp_path / "h" / "features")
    clean_keys, clean_rows, clean_img, clean_txt = store_rows(tmp_path / "clean" / "features")
    assert len(set(keys)) == len(keys) == 14 and keys == clean_keys and rows == clean_rows == [5, 5, 4]
    np.testing.assert_array_equal(img, clean_img)
    np.testing.assert_array_equal(txt, clean_txt)


def test_features_made_otherwise_are_refused_by_every_stage(backbone, tiny_clip_dir, tmp_path):
    pairs, spec = write_pairs(tmp_path / "pairs"), f"hf:{tiny_clip_dir}"
    out = tmp_path / "h"
    features(pairs, spec, out, backbone)
    other_pairs = write_pairs(tmp_path / "other")
    for stage in ("features", "fit", "cluster"):  # what config.json would then claim is not on disk
        with pytest.raises(GramError, match="backbone: .* on disk, 'default:v2' now"):
            features(pairs, "default", out, backbone, stage=stage)
        with pytest.raises(GramError, match="pairs: "):
            features(other_pairs, spec, out, backbone, stage=stage)
    text = CHCConfig(shard_size=5)
    text.features.stems = True
    with pytest.raises(GramError, match="features.stems: False on disk, True now"):
        run_chc(pairs, spec, out, text, stage="features", backbone=backbone)
    text.features.stems, text.features.batch_size = False, 3  # how fast, not what: a resume may change it
    assert run_chc(pairs, spec, out, text, stage="features", backbone=backbone) is None
    assert not (out / "topics").exists() and not (out / "config.json").exists()


def test_features_without_a_record_are_refused(backbone, tiny_clip_dir, tmp_path):
    """A store of an older gram chc (or copied in) cannot be checked, so it is not trusted."""
    pairs, spec = write_pairs(tmp_path / "pairs"), f"hf:{tiny_clip_dir}"
    features(pairs, spec, tmp_path / "h", backbone)
    (tmp_path / "h" / "features" / "settings.json").unlink()
    with pytest.raises(GramError, match="no settings.json"):
        features(pairs, spec, tmp_path / "h", backbone)


def test_a_failed_start_does_not_block_the_corrected_command(backbone, tiny_clip_dir, tmp_path):
    pairs, spec = write_pairs(tmp_path / "pairs"), f"hf:{tiny_clip_dir}"
    with pytest.raises(DatasetError, match="nowhere"):  # a typo: nothing made, nothing to protect
        features(f"folder:{tmp_path / 'nowhere'}", spec, tmp_path / "h", backbone)
    features(pairs, spec, tmp_path / "h", backbone)
    assert len(FeatureStore(tmp_path / "h" / "features")) == 14


N = 600


def small_config(**topics) -> CHCConfig:
    """test_chc_pipeline's small config, fitted on 400 of the N pairs."""
    return pipeline_config(**{"fit_size": 400, **topics})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixture")
    write_mixture(root / "features", N, 4, 3, seed=5, shard_rows=200)
    return FeatureStore(root / "features")


def fast(store, cfg, out, reducer=None):
    """PCA + k-means in place of UMAP + HDBSCAN: what is recorded does not depend on which."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    reducer = reducer if reducer is not None else PCA(8, random_state=0)
    return build_hierarchy(store, cfg, out, reducer=reducer, clusterer=KMeans(4, n_init=2, random_state=0))


def test_other_topic_settings_are_refused_and_cluster_settings_redone(store, tmp_path):
    from sklearn.decomposition import TruncatedSVD

    out = tmp_path / "h"
    first = fast(store, small_config(), out)
    config = (out / "config.json").read_text()
    model = (out / "topics" / "model.pkl").stat().st_mtime_ns
    for cfg, change in [(small_config(min_cluster_size=40), "topics.min_cluster_size: 25 on disk, 40 now"),
                        (small_config(noise="reassign"), "topics.noise: 'drop' on disk, 'reassign' now"),
                        (CHCConfig(topics=small_config().topics, seed=1), "seed: 0 on disk, 1 now")]:
        with pytest.raises(GramError, match=change) as err:
            fast(store, cfg, out)
        assert f"delete {out / 'topics'}" in str(err.value)
    with pytest.raises(GramError, match="reducer: 'sklearn.decomposition._pca.PCA' on disk"):
        fast(store, small_config(), out, reducer=TruncatedSVD(8, random_state=0))
    assert (out / "config.json").read_text() == config  # still describes what is on disk
    cfg = small_config(top_words=3)
    cfg.domains.domains = 2
    again = fast(store, cfg, out)  # topic words and domains: redone from the same topics
    assert (out / "topics" / "model.pkl").stat().st_mtime_ns == model
    np.testing.assert_array_equal(again.topic, first.topic)
    assert all(len(t.top_words) <= 3 and len(t.domains) <= 2 for t in again.topics)
    recorded = json.loads((out / "config.json").read_text())["config"]
    assert recorded["domains"]["domains"] == 2 and recorded["topics"]["top_words"] == 3


def test_topics_of_another_feature_store_are_refused(store, tmp_path):
    fast(store, small_config(), tmp_path / "h")
    write_mixture(tmp_path / "more", N + 10, 4, 3, seed=5, shard_rows=200)
    with pytest.raises(GramError, match=r"shards: \[\[0, 200\], \[1, 200\], \[2, 200\]\] on disk"):
        fast(FeatureStore(tmp_path / "more"), small_config(), tmp_path / "h")
