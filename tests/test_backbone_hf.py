"""The HF CLIP backbone against HF's own forward on the same (random) weights, loaded from disk."""
from __future__ import annotations

import pytest
import torch

from conftest import full_length
from tolerance import assert_fp32_close, hf_clip_tower
from gramprompt.backbones import BackboneError, load_backbone

TEXTS = ["a photo of a dog.", "a photo of a golden retriever, a type of pet.", "x", "satellite photo of annual crop land."]


def _hf(out):
    return getattr(out, "pooler_output", out)


def test_tokenizer_gives_openai_clip_ids(backbone):
    tok = backbone.tokenize(["a photo of a dog."])
    assert tok.ids[0, :8].tolist() == [49406, 320, 1125, 539, 320, 1929, 269, 49407]
    assert tok.lengths.tolist() == [8]
    assert tok.ids.shape[1] == 77


def test_text_features_match_hf(backbone):
    tok = backbone.tokenize(TEXTS)
    ours = backbone.encode_text_embeddings(backbone.token_embeddings(tok.ids), tok.lengths)
    ref = _hf(backbone.model.get_text_features(input_ids=tok.ids))
    assert_fp32_close(ours, ref, **hf_clip_tower(backbone))


def test_truncation_is_exact(backbone):
    tok = backbone.tokenize(TEXTS)
    emb = backbone.token_embeddings(tok.ids)
    truncated = backbone.encode_text_embeddings(emb, tok.lengths)
    with full_length(backbone):
        full = backbone.encode_text_embeddings(emb, tok.lengths)
    assert_fp32_close(truncated, full, **hf_clip_tower(backbone))


def test_image_features_match_hf_without_prompts(backbone):
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ref = _hf(backbone.model.get_image_features(pixel_values=pixels))
    assert ref.shape == (3, backbone.embed_dim)
    assert_fp32_close(backbone.encode_image(pixels), ref, **hf_clip_tower(backbone, "vision"))
    empty = torch.zeros(0, backbone.vision_width)
    assert_fp32_close(backbone.encode_image(pixels, empty), ref, **hf_clip_tower(backbone, "vision"))


def test_deep_prompts_of_depth_one_equal_shallow(backbone, gen):
    pixels = torch.randn(2, 3, 32, 32, generator=gen)
    prompts = torch.randn(3, backbone.vision_width, generator=gen)
    shallow = backbone.encode_image(pixels, prompts)
    deep = backbone.encode_image(pixels, prompts[None])
    assert torch.allclose(shallow, deep)
    assert (shallow - backbone.encode_image(pixels)).abs().max() > 1e-4  # the prompts do act


def test_deep_prompts_replace_per_layer(backbone, gen):
    pixels = torch.randn(2, 3, 32, 32, generator=gen)
    prompts = torch.randn(2, 3, backbone.vision_width, generator=gen, requires_grad=True)
    out = backbone.encode_image(pixels, prompts)
    (grad,) = torch.autograd.grad(out.sum(), prompts)
    assert grad[0].abs().sum() > 0 and grad[1].abs().sum() > 0  # every layer's prompts reach the output
    with pytest.raises(ValueError, match="depth"):
        backbone.encode_image(pixels, torch.zeros(backbone.vision_layers + 1, 1, backbone.vision_width))


def test_backbone_is_frozen(backbone):
    assert not any(p.requires_grad for p in backbone.parameters())
    assert backbone.embed_dim == 32 and backbone.context_length == 77 and backbone.transform.size == 32


def test_bad_backbone_specs_give_clear_errors(tmp_path):
    with pytest.raises(BackboneError, match="unknown backbone"):
        load_backbone("clip-b16")
    with pytest.raises(BackboneError, match="not a directory"):
        load_backbone(f"hf:{tmp_path / 'missing'}")
    with pytest.raises(BackboneError, match="could not load"):
        load_backbone(f"hf:{tmp_path}")  # a directory without a checkpoint
