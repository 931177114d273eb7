"""Methods with their own objective (KgCoOp, ProGrad) against references derived from the official trainers:
the loss written out from HF CLIP's own features, the projection rule on hand-computed vectors, and what the
tuner, the batched paths and GRAM's inner loop do with them."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import full_length
from tolerance import assert_fp32_close, clip_logits, hf_clip_tower
from gramprompt.meta.batched import supports_batched
from gramprompt.meta.step import TaskData, adapt
from gramprompt.prompts import Batch, PromptConfig, build_method
from gramprompt.prompts.base import plain_objective
from gramprompt.prompts.prograd import project
from gramprompt.tuning.multirun import steps_together

NAMES = ["dog", "golden retriever", "annual crop land"]
TEMPLATE = "a photo of a {}, a type of pet."


def _hf(out):
    return getattr(out, "pooler_output", out)


def _setup(backbone, seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(n, 3, 32, 32, generator=g)
    labels = torch.randint(0, len(NAMES), (n,), generator=g)
    return Batch(features=backbone.encode_image(pixels), pixels=pixels), labels


def _placeholder_text(backbone, ctx):
    """The official PromptLearner: tokenize "X X X X <name>." and put ctx where the Xs were."""
    tok = backbone.tokenize([f"X X X X {n}." for n in NAMES])
    emb = backbone.token_embeddings(tok.ids).clone()
    emb[:, 1:5] = ctx
    with full_length(backbone):
        return backbone.encode_text_embeddings(emb, tok.lengths)


def _official_scores(backbone, batch, text):
    img = F.normalize(_hf(backbone.model.get_image_features(pixel_values=batch.pixels)), dim=-1)
    return backbone.model.logit_scale.exp() * img @ F.normalize(text, dim=-1).t()


def _hand_crafted(backbone):
    ids = backbone.tokenize([TEMPLATE.format(n) for n in NAMES]).ids
    return F.normalize(_hf(backbone.model.get_text_features(input_ids=ids)), dim=-1)


def test_kgcoop_loss_is_cross_entropy_plus_weighted_text_distance(backbone, gen):
    """trainers/kgcoop.py: CE(logits) + W * (1 - mean_c cos(w_c, w_c^clip)), W = TRAINER.COOP.W (8.0)."""
    kg = build_method("kgcoop", backbone, PromptConfig(text_guidance=8.0), template=TEMPLATE)
    params = kg.init_params(gen)
    batch, y = _setup(backbone)
    loss, logits = kg.loss(params, batch, NAMES, y)
    with torch.no_grad():
        text = F.normalize(_placeholder_text(backbone, params["text_ctx"]), dim=-1)
        ref_logits = _official_scores(backbone, batch, text)
        score = 1.0 - F.cosine_similarity(text, _hand_crafted(backbone), dim=1, eps=1e-7).mean()
        ref = F.cross_entropy(ref_logits, y) + 8.0 * score
    tol = clip_logits(backbone, ("text", "vision"), extra_depth=2)
    assert_fp32_close(logits, ref_logits, **tol)
    assert score > 0.05  # a random context is far from the hand-crafted prompt: the term is not vacuous
    assert_fp32_close(loss, ref, **tol)
    # the forward (inference) is CoOp's
    coop = build_method("coop", backbone, template=TEMPLATE)
    assert torch.equal(kg.logits(params, batch, NAMES), coop.logits(params, batch, NAMES))


def test_kgcoop_term_vanishes_at_the_hand_crafted_prompt_and_scales_with_its_weight(backbone, gen):
    """From "a photo of a" with the template "a photo of a {}." the learned features are the hand-crafted ones."""
    batch, y = _setup(backbone)
    losses = {}
    for w in (0.0, 8.0):
        kg = build_method("kgcoop", backbone, PromptConfig(text_init="a photo of a", text_guidance=w),
                          template="a photo of a {}.")
        params = kg.init_params(gen)
        text = kg._context_text_features(params["text_ctx"], NAMES)
        assert float(kg.guidance(text, NAMES)) == pytest.approx(0.0, abs=1e-5)
        losses[w] = float(kg.loss(params, batch, NAMES, y)[0])
    assert losses[8.0] == pytest.approx(losses[0.0], abs=1e-4)
    kg = build_method("kgcoop", backbone, PromptConfig(text_guidance=2.0), template=TEMPLATE)
    params = kg.init_params(gen)
    ce = F.cross_entropy(kg.logits(params, batch, NAMES), y)
    term = kg.guidance(kg._context_text_features(params["text_ctx"], NAMES), NAMES)
    assert float(kg.loss(params, batch, NAMES, y)[0]) == pytest.approx(float(ce + 2.0 * term), rel=1e-6)


def test_projection_on_hand_computed_vectors():
    g, away, along = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0]), torch.tensor([1.0, 1.0])
    # conflict: g - (g . u) u with u = (-1, 1)/sqrt 2 -> (1, 0) - (-1/sqrt 2)(-1, 1)/sqrt 2 = (0.5, 0.5)
    assert torch.allclose(project(g, away), torch.tensor([0.5, 0.5]))
    assert float(project(g, away) @ away) == pytest.approx(0.0, abs=1e-7)  # nothing left against g_kd
    assert torch.allclose(project(g, away, 0.8), torch.tensor([0.6, 0.4]))  # lambda 0.8 removes 80% of it
    assert torch.equal(project(g, along), g)  # no conflict: the CE gradient as it is
    assert torch.equal(project(g, torch.tensor([0.0, 1.0])), g)  # orthogonal: cos = 0 is no conflict
    assert torch.equal(project(g, torch.zeros(2)), g)  # no direction to remove
    m = torch.tensor([[2.0, 0.0], [0.0, 0.0]])  # per tensor, flattened: the official dot of .flatten()s
    assert torch.allclose(project(m, torch.tensor([[-1.0, 0.0], [0.0, 1.0]])), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


def _official_prograd(backbone, params, batch, y, lam=1.0, t=1.0):
    """trainers/prograd.py + Dassl.ProGrad's prograd_backward_and_update, written out on HF CLIP."""
    ctx = params["text_ctx"].detach().clone().requires_grad_(True)
    stu = _official_scores(backbone, batch, _placeholder_text(backbone, ctx))
    with torch.no_grad():
        tea = _official_scores(backbone, batch, _hand_crafted(backbone))
    xe = F.cross_entropy(stu, y)
    kl = (-F.softmax(tea / t, -1) * F.log_softmax(stu / t, -1) * t * t).sum(1).mean()
    (b,) = torch.autograd.grad(kl, [ctx], retain_graph=True)
    (a,) = torch.autograd.grad(xe, [ctx])
    b_n, a_n = b / torch.linalg.norm(b), a / torch.linalg.norm(a)
    if torch.dot(a_n.flatten(), b_n.flatten()) < 0:
        a = a - lam * torch.dot(a.flatten(), b_n.flatten()) * b_n
    return xe, a


@pytest.mark.parametrize("lam", [1.0, 0.8])
def test_prograd_update_equals_the_official_rule(backbone, lam):
    pg = build_method("prograd", backbone, PromptConfig(projection=lam), template=TEMPLATE)
    batch, y = _setup(backbone, n=6)
    conflicts = 0
    for seed in range(6):  # seeds where the two gradients conflict and where they do not
        params = {"text_ctx": pg.init_params(torch.Generator().manual_seed(seed))["text_ctx"].requires_grad_(True)}
        loss, _, grads = pg.gradients(params, batch, NAMES, y)
        xe, ref = _official_prograd(backbone, params, batch, y, lam)
        tol = clip_logits(backbone, ("text", "vision"), extra_depth=4)
        assert_fp32_close(loss, xe, **tol)
        raw = torch.autograd.grad(F.cross_entropy(pg.logits(params, batch, NAMES), y), [params["text_ctx"]])[0]
        conflicts += not torch.allclose(ref, raw)
        tower = hf_clip_tower(backbone, "text", extra_depth=8)
        assert_fp32_close(grads["text_ctx"], ref, terms=tower["terms"], depth=2 * tower["depth"],
                          scale=float(raw.abs().max()))
    assert conflicts  # the projection was exercised


def test_prograd_teacher_is_zero_shot_clip_on_the_same_images(backbone, gen):
    """At the hand-crafted prompt the student is the teacher: the distillation loss is at its minimum, the
    teacher's entropy, and its gradient vanishes (up to float32 rounding)."""
    pg = build_method("prograd", backbone, PromptConfig(text_init="a photo of a"), template="a photo of a {}.")
    params = {k: v.requires_grad_(True) for k, v in pg.init_params(gen).items()}
    batch, y = _setup(backbone)
    _, kd, logits = pg.losses(params, batch, NAMES, y)
    p = F.softmax(logits.detach(), -1)
    assert float(kd.detach()) == pytest.approx(float(-(p * p.log()).sum(-1).mean()), abs=1e-5)
    (g_kd,) = torch.autograd.grad(kd, [params["text_ctx"]])
    assert float(g_kd.abs().max()) < 1e-4


@pytest.mark.parametrize("name", ["kgcoop", "prograd"])
def test_own_objectives_leave_the_cross_entropy_batched_paths(backbone, name):
    """The batched meta-step and the multi-run tuner assume plain cross-entropy: these methods take the
    per-task and per-run paths, which call their objective."""
    method = build_method(name, backbone)
    assert not plain_objective(method) and not supports_batched(method) and not steps_together(method)
    assert plain_objective(build_method("coop", backbone)) and supports_batched(build_method("coop", backbone))


@pytest.mark.parametrize("name", ["kgcoop", "prograd"])
def test_gram_inner_step_follows_the_method_update(backbone, gen, name):
    """GRAM's inner loop adapts with the method's own update (theta' = theta - alpha * its gradient)."""
    method = build_method(name, backbone, template="a photo of a {}.")
    theta = {k: v.requires_grad_(True) for k, v in method.init_params(gen).items()}
    batch, y = _setup(backbone)
    task = TaskData(NAMES, batch, y, batch, y)
    adapted, raw, _ = adapt(method, theta, None, "shared", task, alpha=0.1)
    _, _, grads = method.gradients(theta, batch, NAMES, y)
    assert torch.allclose(raw["text_ctx"], grads["text_ctx"])
    assert torch.allclose(adapted["text_ctx"], theta["text_ctx"] - 0.1 * grads["text_ctx"])
    plain = torch.autograd.grad(F.cross_entropy(method.logits(theta, batch, NAMES), y), [theta["text_ctx"]])[0]
    if name == "kgcoop":  # its text term moves the update off the cross-entropy's
        assert not torch.allclose(grads["text_ctx"], plain, atol=1e-7)


def test_objective_weights_are_checked():
    with pytest.raises(ValueError, match="text_guidance"):
        PromptConfig(text_guidance=-1.0)
    with pytest.raises(ValueError, match="distill_temperature"):
        PromptConfig(distill_temperature=0.0)
    assert math.isclose(PromptConfig().text_guidance, 8.0) and PromptConfig().projection == 1.0


@pytest.mark.parametrize("name", ["kgcoop", "prograd"])
def test_multirun_tuner_trains_own_objectives_as_the_single_run_tuner(backbone, name):
    """train_many (the experiments' tuner) follows the method's objective run by run, bit for bit as train_prompts."""
    from gramprompt.data.dataset import Sample
    from gramprompt.tuning.config import TuneConfig
    from gramprompt.tuning.multirun import RunSpec, train_many
    from gramprompt.tuning.train import train_prompts

    g = torch.Generator().manual_seed(1)
    images = [(torch.rand(32, 32, 3, generator=g) * 255).byte().numpy() for _ in range(6)]
    samples = [Sample(img, i % len(NAMES)) for i, img in enumerate(images)]
    method = build_method(name, backbone, template=TEMPLATE)
    cfg = TuneConfig(epochs=2, batch_size=2, feature_views=1, lr=0.05, warmup_epochs=0)
    inits = [method.init_params(torch.Generator().manual_seed(s)) for s in (0, 1)]
    single = [train_prompts(method, init, samples, NAMES, cfg, seed=s) for s, init in zip((0, 1), inits)]
    many = train_many(method, [RunSpec(init, samples, s) for s, init in zip((0, 1), inits)], NAMES, cfg)
    for a, b, init in zip(single, many, inits):
        assert torch.equal(a["text_ctx"], b["text_ctx"]) and not torch.equal(a["text_ctx"], init["text_ctx"])


def test_prograd_official_initialization_pads_the_phrase_with_zeros(backbone, gen):
    """trainers/prograd.py: ctx = [0] * (M - p) followed by the p token embeddings of the phrase."""
    pg = build_method("prograd", backbone, PromptConfig(text_tokens=16, text_init="a photo of a"))
    ctx = pg.init_params(gen)["text_ctx"]
    phrase = pg.text.phrase_embeddings("a photo of a")
    assert ctx.shape == (16, backbone.text_width) and torch.equal(ctx[12:], phrase) and not ctx[:12].any()
    same = build_method("prograd", backbone, PromptConfig(text_tokens=4, text_init="a photo of a"))
    assert torch.equal(same.init_params(gen)["text_ctx"], phrase)
