"""The fast CHC feature path equals the reference path: pixels, the oneDNN trunk, the shared MiniLM forward, stores.

Tolerances follow tests/tolerance.py: the two paths compute the same float32 quantities with other kernels
(fused oneDNN epilogues), other batch shapes (a shard's captions sorted together instead of per batch) and,
for the caption embedding, the backbone's MiniLM tower instead of sentence-transformers' copy of it.
"""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from gramprompt.backbones import load_backbone
from gramprompt.backbones.default.fused import OneDNNTrunk
from gramprompt.chc.config import FeatureConfig
from gramprompt.chc.features import (BatchPixels, FeatureExtractor, embed_captions, load_text_model,
                                     shares_text_tower)
from gramprompt.chc.store import FeatureStore
from gramprompt.data.images import CLIP_MEAN, CLIP_STD, ImageTransform, load_image
from gramprompt.data.pairs import open_pair_source
from tolerance import assert_fp32_close, hf_clip_tower, transformer_depth

# the trunk (tests/test_trunk_fusion.py): ~50 chained convolutions, longest reduction 1152 channels, ReLU6 scale 6
FMAP = dict(terms=1152, depth=50)
# a unit image feature of the default backbone: the trunk, its ImageNet classifier (1280), the v2 head (base,
# 2 pre-LN layers of width 256, MLP 1024, out projection) and the normalization
IMAGE = dict(terms=1280, depth=50 + 1 + transformer_depth(2, head=8) + 1, scale=1.0)
WORDS = ["red apple fruit", "green leaf plant", "blue car on a street", "yellow sun in the sky"]
LONG = " ".join(f"keyword{i} tree" for i in range(80))  # > 128 MiniLM tokens: the tower cuts it, the caption model not


@pytest.fixture(scope="module")
def default():
    return load_backbone("default")


@pytest.fixture(scope="module")
def text_model():
    return load_text_model("default")


def minilm(text_model) -> dict:
    """A unit caption embedding: MiniLM, mean pooling (in the head's 3) and the norm (tests/test_chc_features.py)."""
    bert = text_model[0].auto_model.config
    return dict(terms=bert.intermediate_size, depth=transformer_depth(bert.num_hidden_layers) + 1, scale=1.0)


def images(rng) -> list[Image.Image]:
    """Sizes and modes the decoder meets: already 224 (no resize), portrait, landscape, tiny, grey, RGBA, palette."""
    rgb = lambda h, w: Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))  # noqa: E731
    rgba = Image.fromarray(rng.integers(0, 256, (224, 224, 4), dtype=np.uint8), "RGBA")
    return [rgb(224, 224), rgb(300, 200), rgb(150, 411), rgb(9, 13), rgb(224, 225),
            Image.fromarray(rng.integers(0, 256, (64, 80), dtype=np.uint8)), rgba,
            rgb(40, 40).convert("P", palette=Image.Palette.ADAPTIVE)]


def write_pairs(root, rng, n=10, corrupt=(4,)):
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, img in enumerate((images(rng) * 2)[:n]):
        path = root / f"img{i:02d}.png"
        if i in corrupt:
            path.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        else:
            img.save(path)
        caption = LONG if i == 7 else f"a {WORDS[i % 4]}" + (f" number {i}" if i % 2 else "")  # even i: repeats
        rows.append({"path": path.name, "caption": caption})
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.mark.parametrize("transform", [ImageTransform(224, (127 / 255,) * 3, (128 / 255,) * 3),
                                       ImageTransform(32, CLIP_MEAN, CLIP_STD)], ids=["lite", "clip"])
def test_batch_pixels_equal_transform_eval_bit_for_bit(transform, tmp_path):
    rng = np.random.default_rng(0)
    decoded = []
    for i, img in enumerate(images(rng)):  # through the files, so transparency is flattened by load_image
        img.save(tmp_path / f"{i}.png")
        decoded.append(load_image(tmp_path / f"{i}.png"))
    to_pixels = BatchPixels(transform)
    got = to_pixels.stack([to_pixels.prepare(img) for img in decoded])
    ref = torch.stack([transform.eval(img) for img in decoded])
    assert got.dtype == ref.dtype and got.shape == ref.shape
    assert torch.equal(got, ref)  # the same float32 operations on the same uint8 values
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_onednn_trunk_equals_the_module(default, gen):
    if getattr(torch.ops.mkldnn, "_convolution_pointwise", None) is None or not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN fused convolutions")
    assert default._onednn_trunk is not None  # the default backbone's folded trunk is one it knows
    x = torch.randn(5, 3, 96, 96, generator=gen) * 2  # any size: the paddings are the module's own
    with torch.inference_mode():
        ref = default.trunk.extract_features(x.contiguous(memory_format=torch.channels_last))
        got = default._onednn_trunk.extract_features(x)
        assert_fp32_close(got, ref, **FMAP, scale=6.0)
        fmap, logits = default.inference_trunk_outputs(x)  # in chunks of ONEDNN_TRUNK_CHUNK (4)
        ref_fmap, ref_logits = default.trunk_outputs(x)
        assert_fp32_close(fmap, ref_fmap, **FMAP, scale=6.0)
        assert_fp32_close(logits, ref_logits, terms=1280, depth=FMAP["depth"] + 1, scale=float(ref_logits.abs().max()))
        x = torch.randn(2, 3, 224, 224, generator=gen) * 2  # the head's stem needs the 7x7 map
        stem = default.inference_stem(x)
        ref_stem = default.encode_image_stem(x)
        assert_fp32_close(stem, ref_stem, terms=1280, depth=FMAP["depth"] + 3, scale=float(ref_stem.abs().max()))
    # where autograd is on, the module itself runs (oneDNN's fused calls have no backward)
    assert torch.equal(default.inference_stem(x[:1]), default.encode_image_stem(x[:1]))


def test_onednn_trunk_takes_a_folded_trunk_and_refuses_the_library_model():
    from gramprompt.backbones.default.fused import fuse_for_inference
    from gramprompt.backbones.default.towers import load_efficientnet_lite0

    library = load_efficientnet_lite0()
    with pytest.raises(TypeError, match="not folded"):
        OneDNNTrunk(library)  # what `gram build-default-backbone` keeps: the backbone then runs the module
    if getattr(torch.ops.mkldnn, "_convolution_pointwise", None) is not None:
        trunk = OneDNNTrunk(fuse_for_inference(library))
        assert len(trunk.blocks) == 16 and sum(skip for *_, skip in trunk.blocks) == 9


def test_the_caption_model_is_the_default_backbones_text_tower(default, text_model, backbone):
    assert shares_text_tower(default, text_model)
    assert shares_text_tower(default, text_model)  # the tokenizer's padding state left by a call does not matter
    assert not shares_text_tower(backbone, text_model)  # a CLIP tower is another model
    bias = text_model[0].auto_model.encoder.layer[3].output.dense.bias
    kept = bias.detach().clone()
    with torch.no_grad():
        bias[0] += 1e-3  # the caption model's own copy of MiniLM, changed a little
    try:
        assert not shares_text_tower(default, text_model)
    finally:
        with torch.no_grad():
            bias.copy_(kept)
    captions = [*WORDS, "cat", LONG, "a   snowman ", "ÉMOJI: face with tears of joy"]
    ex = FeatureExtractor(default, text_model)
    text, txt = ex.caption_features(captions)
    ref = embed_captions(text_model, captions)
    assert_fp32_close(txt, ref, **minilm(text_model))
    # the long caption is cut at 128 tokens by the tower, not by the caption model: it came from the caption model
    assert float(np.abs(text[5].numpy() - ref[5]).max()) > 1e-3
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-6)


def stores_equal(ref_dir, fast_dir, image_tol: dict, text_tol: dict) -> None:
    a, b = FeatureStore(ref_dir), FeatureStore(fast_dir)
    assert a.column("key") == b.column("key") and a.counts() == b.counts()
    assert a.column("caption") == b.column("caption") and a.column("meta") == b.column("meta")
    assert [s.rows for s in a.shards] == [s.rows for s in b.shards]
    for kind, tol in (("img", image_tol), ("text", text_tol)):
        x, y = (np.concatenate([c for _, c in s.chunks(kind)]) for s in (a, b))
        assert x.dtype == y.dtype
        assert_fp32_close(y, x, **tol, msg=kind)
    # sim = img . text: both sides' errors, plus the dot product (scale 1)
    depth = max(image_tol["depth"], text_tol["depth"]) + 1
    assert_fp32_close(b.column("sim"), a.column("sim"), terms=max(image_tol["terms"], text_tol["terms"]), depth=depth,
                      scale=1.0, msg="sim")
    if a.has("stem"):
        x, y = (s.gather("stem", np.arange(len(s))).astype(np.float32) for s in (a, b))
        # float16 storage: one half-precision step at the stem's scale, on top of float32 rounding
        np.testing.assert_allclose(y, x, rtol=0, atol=float(np.abs(x).max()) * 2 ** -10)


@pytest.fixture(scope="module")
def default_reference(default, text_model, tmp_path_factory):
    """The pairs (2 shards, one image corrupt, repeated and over-long captions) and their reference store."""
    root = tmp_path_factory.mktemp("default_reference")
    source = open_pair_source(f"folder:{write_pairs(root / 'pairs', np.random.default_rng(1))}", shard_size=6)
    ex = FeatureExtractor(default, text_model, FeatureConfig(batch_size=2, stems=True), fast=False)
    for i in range(source.num_shards()):
        ex.run_shard(source, i, root / "reference")
    return source, root / "reference"


@pytest.mark.parametrize("workers", [1, 2])
def test_fast_path_writes_the_reference_store_default_backbone(default, text_model, default_reference, tmp_path,
                                                               workers):
    source, reference = default_reference
    threads = torch.get_num_threads()
    ex = FeatureExtractor(default, text_model, FeatureConfig(batch_size=2, stems=True, reuse=False))
    ex.workers = lambda: workers
    for i in range(source.num_shards()):
        ex.run_shard(source, i, tmp_path / "fast")
    assert torch.get_num_threads() == threads  # the worker threads' setting is undone
    assert ex._shared  # the fast run used one MiniLM forward per caption
    assert FeatureStore(tmp_path / "fast").counts()["corrupt_image"] == 1
    stores_equal(reference, tmp_path / "fast", IMAGE, minilm(text_model))


def test_fast_path_writes_the_reference_store_tiny_clip(backbone, text_model, tmp_path):
    source = open_pair_source(f"folder:{write_pairs(tmp_path / 'pairs', np.random.default_rng(2))}", shard_size=10)
    for fast in (False, True):
        ex = FeatureExtractor(backbone, text_model, FeatureConfig(batch_size=3, dtype="float16"), fast=fast)
        ex.run_shard(source, 0, tmp_path / f"fast{fast}")
    assert ex._shared is False
    a, b = FeatureStore(tmp_path / "fastFalse"), FeatureStore(tmp_path / "fastTrue")
    assert a.column("key") == b.column("key") and len(a) == 9
    # float16 storage: equal up to one half-precision step of a unit vector's entries
    for kind in ("img", "text"):
        x, y = (np.concatenate([c for _, c in s.chunks(kind)]).astype(np.float32) for s in (a, b))
        np.testing.assert_allclose(y, x, rtol=0, atol=2 ** -11)
    vision = hf_clip_tower(backbone, "vision", extra_depth=1)
    text = hf_clip_tower(backbone, "text", extra_depth=1)
    assert_fp32_close(b.column("sim"), a.column("sim"), terms=max(vision["terms"], text["terms"]),
                      depth=max(vision["depth"], text["depth"]) + 1, scale=1.0)
    # and in float32 the stores agree to float32 rounding
    for fast in (False, True):
        FeatureExtractor(backbone, text_model, FeatureConfig(batch_size=3), fast=fast).run_shard(
            source, 0, tmp_path / f"f32{fast}")
    stores_equal(tmp_path / "f32False", tmp_path / "f32True", dict(**vision, scale=1.0), minilm(text_model))


def test_the_fast_path_is_the_default_and_handles_a_shard_without_pairs(default, text_model, tmp_path):
    assert FeatureExtractor(default, text_model).fast
    root = write_pairs(tmp_path / "pairs", np.random.default_rng(3), n=2, corrupt=(0, 1))
    ex = FeatureExtractor(default, text_model, FeatureConfig(stems=True))
    counts = ex.run_shard(open_pair_source(f"folder:{root}"), 0, tmp_path / "f")
    assert counts["pairs"] == 0 and counts["corrupt_image"] == 2
    pairs, img, txt, sim, stems = ex.features_fast([], Counter())
    assert img.shape == (0, 384) and txt.shape == (0, 384) and sim.shape == (0,) and stems.shape == (0, 0)
