"""Prompt methods against independent references: CoOp's original placeholder construction,
hand-crafted prompts, HF's own features, and where gradients may flow."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import full_length
from tolerance import assert_fp32_close, clip_logits, hf_clip_tower
from gramprompt.errors import GramError
from gramprompt.prompts import METHODS, Batch, PromptConfig, build_method, template_for

NAMES = ["dog", "golden retriever", "annual crop land"]


def _hf(out):
    return getattr(out, "pooler_output", out)


def _batch(backbone, n=2, seed=0):
    pixels = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return Batch(features=backbone.encode_image(pixels), pixels=pixels)


def test_coop_prompt_equals_placeholder_reference(backbone, gen):
    """CoOp's original recipe: tokenize "X X X X <name>." and overwrite the X embeddings with ctx."""
    coop = build_method("coop", backbone)
    ctx = coop.init_params(gen)["text_ctx"]
    ours = coop._context_text_features(ctx, NAMES)
    tok = backbone.tokenize([f"X X X X {n}." for n in NAMES])
    emb = backbone.token_embeddings(tok.ids).clone()
    assert (tok.ids[:, 1:5] == tok.ids[0, 1]).all()  # "X" is one token here
    emb[:, 1:5] = ctx
    with full_length(backbone):
        ref = backbone.encode_text_embeddings(emb, tok.lengths)
    assert_fp32_close(ours, ref, **hf_clip_tower(backbone))


def test_phrase_init_reproduces_the_hand_crafted_prompt(backbone, gen):
    coop = build_method("coop", backbone, PromptConfig(text_init="a photo of a"))
    zs = build_method("zeroshot", backbone, template="a photo of a {}.")
    params = coop.init_params(gen)
    assert params["text_ctx"].shape == (4, backbone.text_width)
    batch = _batch(backbone)
    assert_fp32_close(coop.logits(params, batch, NAMES), zs.logits({}, batch, NAMES), **clip_logits(backbone))
    with pytest.raises(ValueError, match="tokens"):
        build_method("coop", backbone, PromptConfig(text_tokens=2, text_init="a photo of a")).init_params(gen)


def test_zeroshot_is_scaled_cosine_of_hf_features(backbone):
    zs = build_method("zeroshot", backbone, template=template_for("OxfordPets"))
    batch = _batch(backbone)
    ids = backbone.tokenize([f"a photo of a {n}, a type of pet." for n in NAMES]).ids
    txt = F.normalize(_hf(backbone.model.get_text_features(input_ids=ids)), dim=-1)
    img = F.normalize(_hf(backbone.model.get_image_features(pixel_values=batch.pixels)), dim=-1)
    ref = backbone.model.logit_scale.exp() * img @ txt.t()
    assert_fp32_close(zs.logits({}, batch, NAMES), ref, **clip_logits(backbone, ("text", "vision")))


def test_coop_gradient_reaches_only_the_context(backbone, gen):
    coop = build_method("coop", backbone)
    params = {k: v.requires_grad_(True) for k, v in coop.init_params(gen).items()}
    loss = F.cross_entropy(coop.logits(params, _batch(backbone), NAMES), torch.tensor([0, 2]))
    loss.backward()
    assert params["text_ctx"].grad is not None and params["text_ctx"].grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.parameters())


def test_cocoop_with_zero_meta_net_output_is_coop(backbone, gen):
    cocoop, coop = build_method("cocoop", backbone), build_method("coop", backbone)
    params = cocoop.init_params(gen)
    params["meta_w2"].zero_()
    params["meta_b2"].zero_()
    batch = _batch(backbone, n=3)
    assert_fp32_close(cocoop.logits(params, batch, NAMES), coop.logits({"text_ctx": params["text_ctx"]}, batch, NAMES),
                      **clip_logits(backbone, extra_depth=2))  # + the meta-net's two layers


def test_cocoop_conditions_each_image_on_its_own_prompt(backbone, gen):
    cocoop = build_method("cocoop", backbone)
    params = cocoop.init_params(gen)
    batch = _batch(backbone, n=3)
    full = cocoop.logits(params, batch, NAMES)
    for i in range(3):  # image i's logits do not depend on the other images in the batch
        single = cocoop.logits(params, Batch(features=batch.features[i:i + 1]), NAMES)
        assert_fp32_close(full[i], single[0], **clip_logits(backbone, extra_depth=2))


@pytest.mark.parametrize("name", ["vpt", "vpt-deep", "joint"])
def test_visual_methods_train_their_prompts_from_pixels(backbone, gen, name):
    method = build_method(name, backbone, PromptConfig(text_tokens=2, visual_tokens=2))
    params = {k: v.requires_grad_(True) for k, v in method.init_params(gen).items()}
    if name == "vpt-deep":
        assert params["visual_ctx"].shape == (backbone.vision_layers, 2, backbone.vision_width)
    logits = method.logits(params, _batch(backbone), NAMES)
    assert logits.shape == (2, 3)
    grads = torch.autograd.grad(logits.logsumexp(-1).sum(), list(params.values()))
    assert all(g.abs().sum() > 0 for g in grads)
    with pytest.raises(ValueError, match="pixels"):
        method.logits(params, Batch(features=_batch(backbone).features), NAMES)


def test_registry_and_templates(backbone):
    assert set(METHODS) == {"zeroshot", "coop", "cocoop", "vpt", "vpt-deep", "joint", "kgcoop", "prograd", "maple",
                            "promptsrc"}
    with pytest.raises(ValueError, match="valid: zeroshot"):
        build_method("coop++", backbone)
    assert template_for("EuroSAT") == "a centered satellite photo of {}."
    assert template_for("DTD") == "{} texture."
    assert template_for("digits") == "a photo of a {}."


def test_class_token_cache_is_bounded_and_recomputes_the_same_tokens(backbone):
    from gramprompt.prompts.text import TextCache

    cache = TextCache(backbone)
    first = cache.class_tokens(["cat", "dog"])
    for i in range(TextCache.MAX_CLASS_SETS + 5):  # meta-training: a new class set per task
        cache.class_tokens([f"thing{i}", "dog"])
    assert len(cache._tokens) == TextCache.MAX_CLASS_SETS and ("cat", "dog") not in cache._tokens
    again = cache.class_tokens(["cat", "dog"])
    assert again is not first and torch.equal(again.embeds, first.embeds) and torch.equal(again.lengths, first.lengths)


def _cats(k):
    """A class name of k words "cat", one CLIP BPE token each."""
    return " ".join(["cat"] * k)


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("config", [PromptConfig(), PromptConfig(text_tokens=0, text_init="a photo of a")])
def test_class_name_must_fit_the_context_length(backbone, name, config):
    # Both prompt forms have k + 7 tokens: [SOS] "a photo of a" (or 4 context vectors) k x "cat" "." [EOT];
    # the tiny CLIP's context length is 77, so 70 cats fit exactly and 71 do not.
    method = build_method(name, backbone, config)
    method.check_classnames(["dog", _cats(70)])
    with pytest.raises(GramError, match=r"'cat cat .*' \(78 tokens\) too long .*context length of 77"):
        method.check_classnames(["dog", _cats(71)])


def test_class_name_error_counts_tokens_past_the_context_length(backbone):
    # 200 cats: the tokenizer truncates at 77, but the error states the real 207 tokens
    with pytest.raises(GramError, match=r"\(207 tokens\) too long for vpt: its prompt \(template 'a photo of a \{\}.'\)"):
        build_method("vpt", backbone).check_classnames([_cats(200), "dog"])


def test_class_name_of_one_giant_word_is_refused_without_a_count(backbone):
    # "zq-zq-...-zq" splits at each "-" into far more than 77 tokens, yet holds no space to recount by
    with pytest.raises(GramError, match=r"\(over 77 tokens\) too long for coop"):
        build_method("coop", backbone).check_classnames(["-".join(["zq"] * 40)])
