"""Feature extraction: bad pairs counted and skipped, resumable per shard, and `gram chc` end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from gramprompt.chc.config import FeatureConfig
from gramprompt.chc.features import (FeatureExtractor, embed_captions, encode_texts, extract, load_text_model,
                                     my_shards)
from gramprompt.chc.hierarchy import Hierarchy
from gramprompt.chc.store import FeatureStore
from gramprompt.cli import main
from gramprompt.data.images import load_image
from gramprompt.data.pairs import ConcatPairSource, open_pair_source
from conftest import full_length
from tolerance import assert_fp32_close, hf_clip_tower, transformer_depth

WORDS = ["red apple fruit", "green leaf plant", "blue car street", "yellow sun sky"]


def write_folder(root, n=14, corrupt=(3,), empty=(5,)):
    """n images with captions; some files corrupt, some captions empty."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        path = root / f"img{i:02d}.png"
        if i in corrupt:
            path.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
        else:
            Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)).save(path)
        rows.append({"path": path.name, "caption": "  " if i in empty else f"a {WORDS[i % 4]} number {i}"})
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_texts_encoded_by_length_equal_one_full_batch(backbone):
    texts = [" ".join(["word"] * n) + f" {i}" for i, n in enumerate([1, 12, 3, 30, 0, 7, 2, 20, 5])]
    tok = backbone.tokenize(texts)
    with full_length(backbone):  # the reference: every text over the full context, in one batch
        ref = backbone.encode_text_embeddings(backbone.token_embeddings(tok.ids), tok.lengths)
    got = encode_texts(backbone, texts, chunk=2)
    assert_fp32_close(got, ref, **hf_clip_tower(backbone), scale=float(ref.abs().max()))  # a swapped row: O(scale)


@pytest.fixture(scope="module")
def text_model():
    return load_text_model("default")


def test_extraction_counts_bad_pairs_and_aligns_rows(backbone, text_model, tmp_path):
    source = open_pair_source(f"folder:{write_folder(tmp_path / 'pairs')}", shard_size=5)
    extract(FeatureExtractor(backbone, text_model, FeatureConfig(batch_size=3)), source, tmp_path / "f")
    store = FeatureStore(tmp_path / "f")
    counts = store.counts()
    assert counts["corrupt_image"] == 1 and counts["empty_caption"] == 1 and counts["pairs"] == 12
    assert len(store) == 12 and [s.rows for s in store.shards] == [4, 4, 4]
    keys = store.column("key")
    assert keys == [f"img{i:02d}.png" for i in range(14) if i not in (3, 5)]
    img = np.concatenate([c for _, c in store.chunks("img")])
    txt = np.concatenate([c for _, c in store.chunks("text")])
    # unit vectors in float32: the extractor's and this norm (sums of squares) against an exact 1
    assert_fp32_close(np.linalg.norm(img, axis=1), np.ones(len(img)), terms=img.shape[1], depth=2, scale=1.0,
                      reference_exact=True)
    # independent truth: the backbone's own encoders on the same image and caption
    first = load_image(tmp_path / "pairs" / "img00.png")
    with torch.no_grad():
        ref = backbone.encode_image(backbone.transform.eval(first)[None])
    # batched vs one image, normalized (scale 1): the vision tower and the norm
    assert_fp32_close(img[0], torch.nn.functional.normalize(ref, dim=-1)[0].numpy(),
                      **hf_clip_tower(backbone, "vision", extra_depth=1), scale=1.0)
    captions = store.column("caption")
    bert = text_model[0].auto_model.config  # MiniLM, then mean pooling (in the head's 3) and the norm
    assert_fp32_close(txt, embed_captions(text_model, captions), terms=bert.intermediate_size,
                      depth=transformer_depth(bert.num_hidden_layers) + 1, scale=1.0)
    sims = np.asarray(store.column("sim"))
    assert np.all(np.abs(sims) <= 1 + 1e-5)


def test_interrupted_extraction_resumes_to_the_same_arrays(backbone, text_model, tmp_path):
    source = open_pair_source(f"folder:{write_folder(tmp_path / 'pairs')}", shard_size=4)
    extractor = FeatureExtractor(backbone, text_model, FeatureConfig(reuse=False))  # every shard computed
    extract(extractor, source, tmp_path / "whole")

    def killed(index, counts):
        if index == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract(extractor, source, tmp_path / "resumed", on_shard=killed)
    assert len(FeatureStore(tmp_path / "resumed").shards) == 2  # shards 0 and 1 were complete
    (tmp_path / "resumed" / "img_emb" / "img_emb_00002.npy.tmp").write_bytes(b"half-written")
    done = []
    extract(extractor, source, tmp_path / "resumed", on_shard=lambda i, c: done.append((i, bool(c))))
    assert done == [(0, False), (1, False), (2, True), (3, True)]  # finished shards are skipped
    a, b = FeatureStore(tmp_path / "whole"), FeatureStore(tmp_path / "resumed")
    for kind in ("img", "text"):
        np.testing.assert_array_equal(np.concatenate([c for _, c in a.chunks(kind)]),
                                      np.concatenate([c for _, c in b.chunks(kind)]))
    assert a.column("key") == b.column("key") and a.counts() == b.counts()


def test_nested_corpora_reuse_the_shards_they_share(backbone, text_model, tmp_path, monkeypatch):
    monkeypatch.setenv("GRAM_FEATURE_CACHE", str(tmp_path / "reuse"))
    small = open_pair_source(f"folder:{write_folder(tmp_path / 'a', n=8, corrupt=(), empty=())}", shard_size=4)
    large = ConcatPairSource("a+b", [small, open_pair_source(f"folder:{write_folder(tmp_path / 'b', n=5)}", 4)])
    extractor = FeatureExtractor(backbone, text_model)
    computed = []
    compute = extractor.features_fast
    monkeypatch.setattr(extractor, "features_fast", lambda pairs, counts: computed.append(pairs[0].key) or compute(pairs, counts))
    extract(extractor, small, tmp_path / "small")
    extract(extractor, large, tmp_path / "large")
    assert len(computed) == 2 + 2  # the large corpus encoded only its own two shards
    a, b = FeatureStore(tmp_path / "small"), FeatureStore(tmp_path / "large")
    for kind in ("img", "text"):
        np.testing.assert_array_equal(np.concatenate([c for _, c in a.chunks(kind)]),
                                      np.concatenate([c for _, c in b.chunks(kind)])[:len(a)])
    assert b.column("key")[:len(a)] == a.column("key") and b.counts()["pairs"] == 8 + 4  # b: one corrupt image

    # another caption, image or setting is another shard
    write_folder(tmp_path / "a", n=8, corrupt=(), empty=())  # the same files rewritten: new file times
    extract(extractor, small, tmp_path / "again")
    assert len(computed) == 4 + 2
    off = FeatureExtractor(backbone, text_model, FeatureConfig(reuse=False))
    monkeypatch.setattr(off, "features_fast", lambda pairs, counts: computed.append(pairs[0].key) or compute(pairs, counts))
    extract(off, small, tmp_path / "off")
    assert len(computed) == 6 + 2


def test_job_sharding_covers_every_shard_once():
    parts = [my_shards(10, i, 3) for i in range(3)]
    assert sorted(s for p in parts for s in p) == list(range(10))
    with pytest.raises(ValueError):
        my_shards(10, 3, 3)


def test_gram_chc_cli_end_to_end(tiny_clip_dir, tmp_path, capsys):
    rng = np.random.default_rng(1)
    root = tmp_path / "pairs"
    root.mkdir()
    rows = []
    for i in range(60):  # two caption topics, images of two colours within each
        topic = ["sailing boat harbour", "pine forest hiking"][i % 2]
        colour = (200, 40, 40) if i % 4 < 2 else (40, 40, 200)
        pixels = np.clip(np.array(colour) + rng.normal(0, 10, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{i}.png")
        rows.append({"path": f"{i}.png", "caption": f"{topic} photo {i}", "scene": topic.split()[1]})
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "h"
    args = ["chc", "--pairs", f"folder:{root}", "--backbone", f"hf:{tiny_clip_dir}", "--out", str(out),
            "--shard-size", "25", "--min-cluster-size", "8", "--umap-neighbors", "8", "--domains", "2"]
    assert main([*args, "--stage", "features", "--shard-index", "1", "--num-shards", "2"]) == 0
    assert [s.index for s in FeatureStore(out / "features").shards] == [1]
    assert main([*args, "--stage", "features", "--shard-index", "0", "--num-shards", "2"]) == 0
    assert main([*args, "--stage", "assign", "--shard-index", "1", "--num-shards", "2"]) == 0
    assert sorted(p.name for p in (out / "topics").glob("labels_*.npy")) == ["labels_00001.npy"]
    assert main([*args, "--agreement", "scene"]) == 0
    printed = capsys.readouterr().out
    h = Hierarchy.load(out)
    # L = 2: exclusive words tie at Eq. 3 score 0 and the tie goes alphabetically; "photo" scores < 0
    assert sorted(h.class_names()) == ["boat", "forest"], printed
    assert (out / "report" / "grid.png").exists() and "hierarchy written" in printed
    assert json.loads((out / "report" / "agreement.json").read_text())["ari"] == pytest.approx(1.0)
    assert main(["chc", "--pairs", "nowhere", "--backbone", f"hf:{tiny_clip_dir}", "--out", str(out / "x")]) == 2


def test_extraction_from_webdataset_shards(backbone, text_model, tmp_path):
    import io
    import tarfile

    from gramprompt.data.pairs import load_pair_image

    rng = np.random.default_rng(2)
    for shard in range(2):
        with tarfile.open(tmp_path / f"{shard:05d}.tar", "w") as tar:
            for j in range(3):
                key = f"{shard:05d}{j:04d}"
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(buf, "JPEG")
                members = {f"{key}.jpg": buf.getvalue(), f"{key}.txt": f"{WORDS[j]} {shard}".encode()}
                if j == 2:
                    members[f"{key}.jpg"] = b"garbage"  # decodes to nothing: counted, not fatal
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    source = open_pair_source(f"wds:{tmp_path}/*.tar")
    extract(FeatureExtractor(backbone, text_model), source, tmp_path / "f")
    store = FeatureStore(tmp_path / "f")
    assert store.counts()["corrupt_image"] == 2 and len(store) == 4
    assert store.column("key") == ["000000000", "000000001", "000010000", "000010001"]
    src = store.column("source")[2]
    assert src.endswith("00001.tar#000010000.jpg")
    with torch.no_grad():
        ref = backbone.encode_image(backbone.transform.eval(load_pair_image(src))[None])
    assert_fp32_close(store.array("img", 1)[0], torch.nn.functional.normalize(ref, dim=-1)[0].numpy(),
                      **hf_clip_tower(backbone, "vision", extra_depth=1), scale=1.0)  # as above


def test_stored_stems_give_the_same_features_and_feed_visual_meta_training(text_model, tmp_path):
    from gramprompt.backbones import load_backbone
    from gramprompt.meta.inputs import FeatureInputs
    from gramprompt.prompts import build_method

    default = load_backbone("default")
    source = open_pair_source(f"folder:{write_folder(tmp_path / 'pairs', n=6)}", shard_size=4)
    extract(FeatureExtractor(default, text_model, FeatureConfig(batch_size=3)), source, tmp_path / "plain")
    extract(FeatureExtractor(default, text_model, FeatureConfig(batch_size=3, stems=True)), source, tmp_path / "s")
    plain, with_stems = FeatureStore(tmp_path / "plain"), FeatureStore(tmp_path / "s")
    assert not plain.has("stem") and with_stems.has("stem")
    img = np.concatenate([c for _, c in with_stems.chunks("img")])
    np.testing.assert_array_equal(img, np.concatenate([c for _, c in plain.chunks("img")]))
    # independent truth: the stem the backbone computes for the first image, stored in float16
    with torch.no_grad():
        ref = default.encode_image_stem(default.transform.eval(load_image(tmp_path / "pairs" / "img00.png"))[None])
    stems = with_stems.gather("stem", np.arange(len(with_stems)))
    np.testing.assert_allclose(stems[0], ref[0].numpy(), rtol=2e-3, atol=2e-3)
    inputs = FeatureInputs.from_store(with_stems, np.array([0, 2]), kind="stems")
    vpt = build_method("vpt", default)
    params = vpt.init_params(torch.Generator().manual_seed(0))
    batch = inputs.batch(np.array([2, 0]))
    assert batch.stems.dtype == torch.float32 and batch.stems.shape == (2, stems.shape[1])
    with torch.no_grad():
        from_store = vpt.logits(params, batch, ["red", "green"])
        pixels = torch.stack([default.transform.eval(load_image(tmp_path / "pairs" / f"img{i:02d}.png"))
                              for i in (2, 0)])
        from gramprompt.prompts import Batch
        direct = vpt.logits(params, Batch(pixels=pixels), ["red", "green"])
    torch.testing.assert_close(from_store, direct, rtol=1e-2, atol=1e-2)
