"""The on-disk feature cache: shared between caches (processes), keyed by backbone, key and samples."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from gramprompt.data.dataset import Sample
from gramprompt.tuning.features import FeatureCache, backbone_fingerprint, encode_images


@pytest.fixture
def samples(tmp_path):
    rng = np.random.default_rng(0)
    out = [Sample(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8), i % 2) for i in range(3)]
    path = tmp_path / "img.png"
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
    return [*out, Sample(str(path), 1)]


def counting(backbone):
    calls = []
    original = backbone.encode_image

    def encode_image(pixels, *a, **k):
        calls.append(len(pixels))
        return original(pixels, *a, **k)

    backbone.encode_image = encode_image
    return calls


def test_a_second_cache_on_the_folder_reads_instead_of_encoding(backbone, samples, tmp_path):
    fn = backbone.transform.eval
    calls = counting(backbone)
    try:
        first = FeatureCache(backbone, tmp_path / "features").get(("toy", "eval"), samples, fn)
        assert calls == [4]
        second = FeatureCache(backbone, tmp_path / "features").get(("toy", "eval"), samples, fn)  # "another process"
        assert calls == [4]
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
        ref = encode_images(backbone, samples, fn)  # and both equal encoding without a cache
        assert torch.equal(first[0], ref[0]) and first[1].tolist() == [0, 1, 0, 1]
        before = len(calls)
        # another key, other samples (a label, an image file rewritten), or no folder: encoded again
        FeatureCache(backbone, tmp_path / "features").get(("toy", "other"), samples, fn)
        FeatureCache(backbone, tmp_path / "features").get(("toy", "eval"), [*samples[:3], Sample(samples[3].source, 0)], fn)
        Image.new("RGB", (16, 16), "white").save(samples[3].source)
        FeatureCache(backbone, tmp_path / "features").get(("toy", "eval"), samples, fn)
        FeatureCache(backbone).get(("toy", "eval"), samples, fn)
        assert calls[before:] == [4] * 4
        assert len(list((tmp_path / "features").glob("*.safetensors"))) == 4
        assert not list((tmp_path / "features").glob(".*tmp"))  # written atomically, no leftovers
    finally:
        del backbone.encode_image


def test_an_unreadable_entry_is_encoded_again(backbone, samples, tmp_path, caplog):
    fn = backbone.transform.eval
    ref = FeatureCache(backbone, tmp_path).get(("k",), samples, fn)
    (entry,) = tmp_path.glob("*.safetensors")
    entry.write_bytes(b"not a safetensors file")
    with caplog.at_level(logging.WARNING):
        again = FeatureCache(backbone, tmp_path).get(("k",), samples, fn)
    assert "unreadable" in caplog.text and torch.equal(again[0], ref[0])
    assert FeatureCache(backbone, tmp_path)._load(entry, samples) is not None  # rewritten whole


def test_a_file_replaced_with_its_time_kept_and_an_entry_with_foreign_labels_are_encoded_again(
        backbone, samples, tmp_path, caplog):
    """Reliability probe: images replaced with their modification times kept (rsync -a, cp -p, tar x) reused
    stale features; an entry whose labels were out of range scored Base/New 0.00."""
    import os

    from safetensors.torch import save_file

    fn = backbone.transform.eval
    calls = counting(backbone)
    try:
        FeatureCache(backbone, tmp_path / "f").get(("k",), samples, fn)
        path = samples[3].source
        st = os.stat(path)
        other = tmp_path / "other.png"
        Image.new("RGB", (16, 16), "black").save(other)
        os.replace(other, path)  # as rsync -a does: a new file renamed over the old one...
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # ...with the old modification time
        FeatureCache(backbone, tmp_path / "f").get(("k",), samples, fn)
        assert calls == [4, 4]

        entry = FeatureCache(backbone, tmp_path / "f")._path(("k", "features"), samples)
        feats, labels = FeatureCache(backbone, tmp_path / "f").get(("k",), samples, fn)
        save_file({"features": feats.contiguous(), "labels": labels + 7}, entry)  # labels out of range
        with caplog.at_level(logging.WARNING):
            again = FeatureCache(backbone, tmp_path / "f").get(("k",), samples, fn)
        assert again[1].tolist() == [0, 1, 0, 1] and "not the samples'" in caplog.text and calls == [4, 4, 4]
    finally:
        del backbone.encode_image


def test_the_fingerprint_follows_the_weights(backbone):
    before = backbone_fingerprint(backbone)
    assert backbone_fingerprint(backbone) == before
    param = next(backbone.parameters())
    with torch.no_grad():
        param.view(-1)[0] += 1.0
        try:
            assert backbone_fingerprint(backbone) != before
        finally:
            param.view(-1)[0] -= 1.0
