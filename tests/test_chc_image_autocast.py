"""CHC features with the image tower under bf16 autocast (``FeatureConfig.image_autocast``).

What must hold: the image tower really ran in bf16; captions stay fp32 (the stored caption embeddings, which the
topics are made from, are bit for bit those of the fp32 run); each image's bf16 feature is far closer to its own
fp32 feature than to any other image's (so the visual domains see the same pictures); the option is part of what a
store and the shard-reuse cache record, and leaves the fp32 record as it was before the option existed.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from gramprompt.backbones import load_backbone
from gramprompt.chc.config import CHCConfig, FeatureConfig
from gramprompt.chc.features import FeatureExtractor, load_text_model
from gramprompt.chc.settings import feature_settings
from gramprompt.chc.store import FeatureStore
from gramprompt.data.pairs import open_pair_source
from tolerance import assert_fp32_close

SHAPES = ["circle", "square", "triangle", "bar"]
COLOURS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 60, 220)}


@pytest.fixture(scope="module")
def default():
    return load_backbone("default")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """12 icon-like pictures (4 shapes x 3 colours on white) with their captions, as a folder source."""
    root = tmp_path_factory.mktemp("shapes")
    rows = []
    for shape in SHAPES:
        for colour, rgb in COLOURS.items():
            img = Image.new("RGB", (224, 224), "white")
            d = ImageDraw.Draw(img)
            if shape == "circle":
                d.ellipse((40, 40, 184, 184), fill=rgb)
            elif shape == "triangle":
                d.polygon([(112, 30), (30, 194), (194, 194)], fill=rgb)
            else:
                d.rectangle((40, 40, 184, 184) if shape == "square" else (20, 96, 204, 128), fill=rgb)
            img.save(root / f"{colour}-{shape}.png")
            rows.append({"path": f"{colour}-{shape}.png", "caption": f"a {colour} {shape}"})
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return open_pair_source(f"folder:{root}", shard_size=12)


def extract(default, source, out, fast=True, **config):
    ex = FeatureExtractor(default, load_text_model("default"), FeatureConfig(batch_size=5, reuse=False, **config),
                          fast=fast)
    ex.run_shard(source, 0, out)
    return FeatureStore(out)


@pytest.mark.parametrize("fast", [True, False])
def test_bf16_image_tower_keeps_captions_and_each_images_identity(default, pairs, tmp_path, fast):
    fp32 = extract(default, pairs, tmp_path / "fp32", fast, stems=True)
    seen = []  # the output types of the trunk's convolutions, in the bf16 extraction
    hooks = [m.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
             for m in default.trunk.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        bf16 = extract(default, pairs, tmp_path / "bf16", fast, stems=True, image_autocast="bf16")
    finally:
        for h in hooks:
            h.remove()
    # the trunk's modules ran (not the fp32 fused oneDNN copy), every convolution in bf16
    assert seen and set(seen) == {torch.bfloat16}

    assert fp32.column("key") == bf16.column("key")
    text = [np.concatenate([c for _, c in s.chunks("text")]) for s in (fp32, bf16)]
    np.testing.assert_array_equal(text[1], text[0])  # captions stay fp32: the topics' input is unchanged

    a, b = (np.concatenate([c for _, c in s.chunks("img")]) for s in (fp32, bf16))
    assert b.dtype == np.float32
    # unit vectors: the norm is one reduction over the feature width, computed once in float32 and once in float64
    assert_fp32_close(np.linalg.norm(b.astype(np.float64), axis=1), np.ones(len(b)), terms=b.shape[1], depth=2,
                      scale=1.0)
    own = np.linalg.norm(b - a, axis=1)
    others = np.linalg.norm(a[:, None] - a[None], axis=-1) + np.diag(np.full(len(a), np.inf))
    # each bf16 feature is nearest to its own picture's fp32 feature (observed: at most 0.42 of the distance to the
    # nearest other picture on these flat shapes; 0.03-0.16 on openclipart drawings)
    assert (own < others.min(axis=1)).all(), (own, others.min(axis=1))
    stems = [s.gather("stem", np.arange(len(s))).astype(np.float32) for s in (fp32, bf16)]
    assert stems[1].shape == stems[0].shape and stems[1].dtype == np.float32
    assert not np.array_equal(stems[1], stems[0])  # the stems were computed in bf16, not copied from fp32


def test_image_autocast_is_recorded_only_when_set(default):
    assert "image_autocast" not in FeatureConfig().recorded()
    assert FeatureConfig(image_autocast="none").image_autocast is None  # one spelling of fp32
    assert FeatureConfig(image_autocast="bf16").recorded()["image_autocast"] == "bf16"
    with pytest.raises(ValueError, match="autocast"):
        FeatureConfig(image_autocast="fp8")
    # the fp32 record is the one stores made before the option existed carry
    assert feature_settings("folder:x", "default", CHCConfig())["features"] == {
        "text_model": "default", "dtype": "float32", "stems": False}
    text_model = load_text_model("default")
    settings = [FeatureExtractor(default, text_model, FeatureConfig(image_autocast=name))._reuse_settings()
                for name in (None, "bf16")]
    assert settings[0] != settings[1]  # a bf16 store never links shards encoded in fp32, nor the other way


def test_gram_chc_takes_image_autocast():
    from gramprompt.cli import build_parser
    from gramprompt.cli.data import _chc_config

    args = build_parser().parse_args(["chc", "--pairs", "folder:x", "--backbone", "default", "--out", "o", "--image-autocast", "bf16"])
    assert _chc_config(args).features.image_autocast == "bf16"
    args = build_parser().parse_args(["chc", "--pairs", "folder:x", "--backbone", "default", "--out", "o"])
    assert _chc_config(args).features.image_autocast is None
