"""MaPLe, PromptSRC and deep text prompts against references built from the official recipes on HF CLIP's own
modules: the official ``ResidualAttentionBlock_MaPLe`` / ``_IVLP`` replacement rules re-created with forward hooks on
HF's layers (independent of our layer loops), the official initialization and losses, and where gradients flow."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import full_length
from tolerance import assert_fp32_close, clip_logits, hf_clip_tower, transformer_depth
from gramprompt.prompts import Batch, PromptConfig, build_method

NAMES = ["dog", "golden retriever", "annual crop land"]
PHRASE = "a photo of a"


def _hf(out):
    return getattr(out, "pooler_output", out)


def _replace(start, values):
    """A forward pre-hook that overwrites positions start.. of the layer's hidden states with ``values``."""
    def hook(module, args, kwargs):
        h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        stop = h.shape[1] if start < 0 else start + len(values)
        first = h.shape[1] + start if start < 0 else start
        h = torch.cat([h[:, :first], values.expand(len(h), -1, -1), h[:, stop:]], dim=1)
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": h}
        return (h, *args[1:]), kwargs
    return hook


def _official_text(backbone, params, m):
    """MaPLe's (and IVLP's) text encoder: tokenize "<phrase> <name>.", overwrite the first m phrase tokens with ctx at the input
    and with deep_text[i - 1] before layer i, pool at EOT, project (HF's get_text_features, hooked)."""
    tm = backbone.model.text_model
    ids = backbone.tokenize([f"{PHRASE} {n}." for n in NAMES]).ids
    pos = tm.embeddings.position_embedding.weight[1:1 + m]
    handles = [tm.embeddings.register_forward_hook(
        lambda mod, inp, out: torch.cat([out[:, :1], (params["text_ctx"] + pos).expand(len(out), -1, -1),
                                         out[:, 1 + m:]], 1))]
    for i, deep in enumerate(params["deep_text"], start=1):
        handles.append(tm.encoder.layers[i].register_forward_pre_hook(_replace(1, deep), with_kwargs=True))
    try:
        return _hf(backbone.model.get_text_features(input_ids=ids))
    finally:
        for h in handles:
            h.remove()


def _official_image(backbone, pixels, prompts):
    """MaPLe's (and IVLP's) vision encoder: prompts[0] appended after the patch tokens before ln_pre, prompts[i] replacing the
    last M tokens before layer i (HF's get_image_features, hooked)."""
    vm = backbone.model.vision_model
    m = prompts.shape[1]
    handles = [vm.pre_layrnorm.register_forward_pre_hook(
        lambda mod, args: (torch.cat([args[0], prompts[0].expand(len(args[0]), -1, -1)], 1),))]
    for i in range(1, len(prompts)):
        handles.append(vm.encoder.layers[i].register_forward_pre_hook(_replace(-m, prompts[i]), with_kwargs=True))
    try:
        return _hf(backbone.model.get_image_features(pixel_values=pixels))
    finally:
        for h in handles:
            h.remove()


def _maple(backbone, **kw):
    return build_method("maple", backbone, PromptConfig(text_tokens=2, text_init=PHRASE, **kw))


def test_official_initialization(backbone, gen):
    maple = _maple(backbone)
    params = maple.init_params(gen)
    j = min(9, backbone.text_layers, backbone.vision_layers)
    assert maple.depth == j == 2  # the tiny CLIP has 2 layers per tower
    d, dv = backbone.text_width, backbone.vision_width
    assert params["text_ctx"].shape == (2, d) and params["deep_text"].shape == (j - 1, 2, d)
    assert params["proj_w"].shape == (dv, d) and params["deep_proj_w"].shape == (j - 1, dv, d)
    # ctx = the embeddings of "a photo", the first two tokens of the phrase
    assert torch.equal(params["text_ctx"], maple.text.phrase_embeddings(PHRASE)[:2])
    # nn.Linear's range, and the deep projections all copies of one layer (official _get_clones)
    bound = 1 / d ** 0.5
    assert params["proj_w"].abs().max() <= bound and params["proj_b"].abs().max() <= bound
    assert all(torch.equal(w, params["deep_proj_w"][0]) for w in params["deep_proj_w"])
    assert not torch.equal(params["deep_proj_w"][0], params["proj_w"])


def test_text_features_equal_the_official_construction(backbone, gen):
    maple = _maple(backbone)
    params = maple.init_params(gen)
    params["text_ctx"] = params["text_ctx"] + 0.1 * torch.randn(params["text_ctx"].shape, generator=gen)
    with full_length(backbone):
        ours = maple.text_features(params, NAMES)
    ref = _official_text(backbone, params, 2)
    assert_fp32_close(ours, ref, **hf_clip_tower(backbone))
    # the deep prompts act: other deep vectors, other features (not a constant shift: LayerNorm removes it)
    other = dict(params, deep_text=torch.randn(params["deep_text"].shape, generator=gen))
    assert (maple.text_features(other, NAMES) - ours).abs().max() > 1e-3


def test_depth_one_text_is_the_hand_crafted_prompt(backbone, gen):
    """With no deeper layers the learned "a photo" + "of a <name>." is the template "a photo of a {}."."""
    maple = _maple(backbone, visual_depth=1)
    params = maple.init_params(gen)
    assert params["deep_text"].shape[0] == 0
    zs = backbone.model.get_text_features(input_ids=backbone.tokenize([f"{PHRASE} {n}." for n in NAMES]).ids)
    assert_fp32_close(maple.text_features(params, NAMES), _hf(zs), **hf_clip_tower(backbone))


def test_image_features_equal_the_official_construction(backbone, gen):
    maple = _maple(backbone)
    params = maple.init_params(gen)
    pixels = torch.randn(3, 3, 32, 32, generator=gen)
    prompts = maple.visual_prompts(params)
    assert prompts.shape == (2, 2, backbone.vision_width)
    # layer 0's prompts are proj(ctx), layer i's proj_i(deep_text[i - 1])
    assert torch.allclose(prompts[0], F.linear(params["text_ctx"], params["proj_w"], params["proj_b"]))
    assert torch.allclose(prompts[1], F.linear(params["deep_text"][0], params["deep_proj_w"][0], params["deep_proj_b"][0]))
    ours = maple._image_features(Batch(pixels=pixels), prompts)
    assert_fp32_close(ours, _official_image(backbone, pixels, prompts), **hf_clip_tower(backbone, "vision"))
    logits = maple.logits(params, Batch(pixels=pixels), NAMES)
    img = F.normalize(_official_image(backbone, pixels, prompts), dim=-1)
    with full_length(backbone):
        txt = F.normalize(_official_text(backbone, params, 2), dim=-1)
    assert_fp32_close(logits, backbone.logit_scale() * img @ txt.t(), **clip_logits(backbone, ("text", "vision")))


def test_every_parameter_gets_a_gradient(backbone, gen):
    maple = _maple(backbone)
    params = {k: v.requires_grad_(True) for k, v in maple.init_params(gen).items()}
    pixels = torch.randn(3, 3, 32, 32, generator=gen)
    loss, _ = maple.loss(params, Batch(pixels=pixels), NAMES, torch.tensor([0, 1, 2]))
    grads = torch.autograd.grad(loss, list(params.values()))
    assert all(float(g.abs().max()) > 0 for g in grads), [k for k, g in zip(params, grads) if not g.abs().max() > 0]


def test_random_context_without_a_phrase_and_depth_errors(backbone, gen):
    maple = build_method("maple", backbone, PromptConfig(text_tokens=3))
    params = maple.init_params(gen)
    assert params["text_ctx"].shape == (3, backbone.text_width) and float(params["text_ctx"].std()) < 0.05
    coop = build_method("coop", backbone)  # layer 0 is CoOp's "[SOS] ctx <name>."
    one = build_method("maple", backbone, PromptConfig(text_tokens=3, visual_depth=1))
    assert torch.allclose(one.text_features(one.init_params(gen) | {"text_ctx": params["text_ctx"]}, NAMES),
                          coop._context_text_features(params["text_ctx"], NAMES))
    with pytest.raises(ValueError, match="depth 3"):
        build_method("maple", backbone, PromptConfig(visual_depth=3)).init_params(gen)
    with pytest.raises(ValueError, match="fewer than"):
        build_method("maple", backbone, PromptConfig(text_tokens=5, text_init=PHRASE)).init_params(gen)
    with pytest.raises(ValueError, match="at most 1"):
        backbone.encode_text_embeddings(torch.zeros(1, 4, backbone.text_width), torch.tensor([4]),
                                        torch.zeros(2, 1, backbone.text_width))


def test_minilm_layer_by_layer_equals_bert_and_places_deep_prompts():
    """The default backbone's text tower: with no deep sets the explicit layer loop is BERT's own forward; with
    sets it equals BERT's forward with the official replacement done by hooks."""
    from gramprompt.backbones import load_backbone

    default = load_backbone("default")
    text = default.text
    tok = default.tokenize([f"{PHRASE} {n}." for n in NAMES])
    n = int(tok.lengths.max())
    emb = default.token_embeddings(tok.ids[:, :n])
    mask = (torch.arange(n)[None] < tok.lengths[:, None]).float()
    bert = text.bert.config
    tol = dict(terms=bert.intermediate_size, depth=transformer_depth(bert.num_hidden_layers))
    plain = text.bert(inputs_embeds=emb, attention_mask=mask).last_hidden_state
    assert_fp32_close(text.layer_by_layer(emb, mask, torch.zeros(0, 2, default.text_width)), plain, **tol)
    deep = torch.randn(text.layers - 1, 2, default.text_width, generator=torch.Generator().manual_seed(0)) * 0.1
    handles = [text.bert.encoder.layer[i].register_forward_pre_hook(_replace(1, deep[i - 1]), with_kwargs=True)
               for i in range(1, text.layers)]
    try:
        ref = text.bert(inputs_embeds=emb, attention_mask=mask).last_hidden_state
    finally:
        for h in handles:
            h.remove()
    ours = text.layer_by_layer(emb, mask, deep)
    assert_fp32_close(ours, ref, **tol)
    assert (ours - plain).abs().max() > 1e-3
    pooled = (ref * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert_fp32_close(default.encode_text_embeddings(emb, tok.lengths, deep), pooled, **tol)


def test_promptsrc_prompts_and_loss_equal_the_official_ones(backbone, gen):
    """trainers/promptsrc.py: IVLP prompts; CE + KL(zs || prompted, sum / (B C)) + 25 L1(text, 60-template mean)
    + 10 L1(image, frozen image), all features normalized."""
    from gramprompt.prompts.templates import ENSEMBLE_TEMPLATES

    src = build_method("promptsrc", backbone, PromptConfig(text_tokens=4, text_init=PHRASE, visual_tokens=4))
    params = src.init_params(gen)
    assert torch.equal(params["text_ctx"], src.text.phrase_embeddings(PHRASE))  # the whole phrase is learned
    assert params["deep_text"].shape == (1, 4, backbone.text_width)
    assert params["visual_ctx"].shape == (2, 4, backbone.vision_width) and float(params["visual_ctx"].std()) < 0.05
    params = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in params.items()}
    pixels = torch.randn(4, 3, 32, 32, generator=gen)
    y = torch.tensor([0, 1, 2, 0])
    loss, logits = src.loss(params, Batch(pixels=pixels), NAMES, y)
    with torch.no_grad():
        with full_length(backbone):
            text = F.normalize(_official_text(backbone, params, 4), dim=-1)
        image = F.normalize(_official_image(backbone, pixels, params["visual_ctx"]), dim=-1)
        frozen_image = F.normalize(_hf(backbone.model.get_image_features(pixel_values=pixels)), dim=-1)
        ensemble = torch.stack([_hf(backbone.model.get_text_features(
            input_ids=backbone.tokenize([t.replace("{}", n) for n in NAMES]).ids)) for t in ENSEMBLE_TEMPLATES])
        fixed = F.normalize(ensemble.mean(0), dim=-1)
        scale = backbone.model.logit_scale.exp()
        ref_logits = scale * image @ text.t()
        zs = scale * frozen_image @ fixed.t()
        kl = F.kl_div(F.log_softmax(ref_logits, 1), F.log_softmax(zs, 1), reduction="sum", log_target=True)
        ref = (F.cross_entropy(ref_logits, y) + kl / ref_logits.numel() + 25 * F.l1_loss(text, fixed)
               + 10 * F.l1_loss(image, frozen_image))
    tol = clip_logits(backbone, ("text", "vision"), extra_depth=4)
    assert_fp32_close(logits, ref_logits, **tol)
    assert_fp32_close(loss, ref, **tol)
    assert torch.allclose(src.logits(params, Batch(pixels=pixels), NAMES), logits, atol=1e-5)


def test_gpa_weights_are_the_official_normalized_gaussian():
    import numpy as np

    from gramprompt.tuning.gpa import gpa_weights

    dens = lambda x, mu, s: (1 / (s * np.sqrt(2 * np.pi))) * np.exp(-0.5 * ((x - mu) / s) ** 2)  # noqa: E731
    for n, mu, s in ((20, 15, 1), (20, 6, 10), (10, 15, 1)):
        ref = np.array([dens(e, mu, s) for e in range(1, n + 1)])
        assert np.allclose(gpa_weights(n, mu, s), ref / ref.sum(), rtol=1e-12, atol=1e-15)
    e = np.exp(-0.5)
    assert np.allclose(gpa_weights(3, 2, 1), [e / (1 + 2 * e), 1 / (1 + 2 * e), e / (1 + 2 * e)])
    assert gpa_weights(2, 1000, 1)[1] == pytest.approx(1.0)  # far from every epoch: no 0 / 0


@pytest.mark.parametrize("many", [False, True])
def test_tuner_returns_the_gaussian_average_of_the_epochs(backbone, many):
    """With gpa_mean the tuned prompts are sum_e w_e * (prompts after epoch e), the single-run and multi-run tuners."""
    from gramprompt.data.dataset import Sample
    from gramprompt.tuning.config import TuneConfig
    from gramprompt.tuning.gpa import gpa_weights
    from gramprompt.tuning.multirun import RunSpec, train_many
    from gramprompt.tuning.train import train_prompts

    g = torch.Generator().manual_seed(3)
    samples = [Sample((torch.rand(32, 32, 3, generator=g) * 255).byte().numpy(), i % 3) for i in range(6)]
    method = build_method("coop", backbone)
    init = method.init_params(torch.Generator().manual_seed(0))
    cfg = TuneConfig(epochs=4, batch_size=2, lr=0.05, warmup_epochs=0, gpa_mean=3.0, gpa_std=1.0)
    seen = []
    keep = lambda epoch, params: seen.append(params["text_ctx"].detach().clone())  # noqa: E731
    if many:
        out = train_many(method, [RunSpec(init, samples, 1, on_epoch=keep)], NAMES, cfg)[0]
    else:
        out = train_prompts(method, init, samples, NAMES, cfg, seed=1, on_epoch=keep)
    expected = sum(w * p for w, p in zip(gpa_weights(4, 3.0, 1.0), seen))
    assert len(seen) == 4 and torch.allclose(out["text_ctx"], expected, atol=1e-6)
    assert not torch.allclose(out["text_ctx"], seen[-1], atol=1e-4)
