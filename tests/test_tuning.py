"""The few-shot tuning loop: schedule, determinism, the exact SGD step, the gradient hook, NaN guard."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gramprompt.data.dataset import Sample
from gramprompt.prompts import Batch, build_method
from gramprompt.errors import NonFiniteError
from gramprompt.tuning.config import TuneConfig, lr_at_epoch
from gramprompt.tuning.features import encode_images
from gramprompt.tuning.train import train_prompts
from tolerance import assert_fp32_close, hf_clip_tower

NAMES = ["zero", "one", "two"]


def _samples(n_per_class=4, seed=0):
    rng = np.random.default_rng(seed)
    return [Sample(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), c) for c in range(3) for _ in range(n_per_class)]


def test_lr_schedule_is_cocoop_warmup_then_cosine():
    cfg = TuneConfig()
    assert lr_at_epoch(cfg, 0) == 1e-5
    assert lr_at_epoch(cfg, 1) == pytest.approx(0.001 * (1 + math.cos(math.pi / 10)))
    assert lr_at_epoch(cfg, 5) == pytest.approx(0.001)
    assert lr_at_epoch(cfg, 9) == pytest.approx(0.001 * (1 + math.cos(math.pi * 9 / 10)))


def test_one_step_equals_hand_computed_sgd(backbone, gen):
    """One full-batch step: theta - lr * (grad + wd * theta) (the momentum buffer starts at the gradient)."""
    coop = build_method("coop", backbone)
    init = coop.init_params(gen)
    samples = _samples()
    cfg = TuneConfig(epochs=1, warmup_epochs=0, lr=0.5, batch_size=len(samples), feature_views=0)
    out = train_prompts(coop, init, samples, NAMES, cfg, seed=3)
    feats, labels = encode_images(backbone, samples, backbone.transform.eval)
    ctx = init["text_ctx"].clone().requires_grad_(True)
    loss = F.cross_entropy(coop.logits({"text_ctx": ctx}, Batch(features=feats), NAMES), labels)
    (g,) = torch.autograd.grad(loss, ctx)
    lr = lr_at_epoch(cfg, 0)
    expected = init["text_ctx"] - lr * (g + cfg.weight_decay * init["text_ctx"])
    # fp32 rounding (tests/tolerance.py) of the image features, the text tower forward and backward
    # (+ norms, logits, cross-entropy, batch mean) and the update, at the size of the update's terms
    image, text = hf_clip_tower(backbone, "vision"), hf_clip_tower(backbone, "text", extra_depth=4)
    assert_fp32_close(out["text_ctx"], expected, terms=max(image["terms"], text["terms"]),
                      depth=image["depth"] + 2 * text["depth"] + 1,
                      scale=float(init["text_ctx"].abs().max() + lr * g.abs().max()))


def test_training_is_seeded(backbone, gen):
    coop = build_method("coop", backbone)
    init = coop.init_params(gen)
    cfg = TuneConfig(epochs=2, batch_size=2, lr=0.1, feature_views=2)
    a = train_prompts(coop, init, _samples(), NAMES, cfg, seed=1)
    b = train_prompts(coop, init, _samples(), NAMES, cfg, seed=1)
    c = train_prompts(coop, init, _samples(), NAMES, cfg, seed=2)
    assert torch.equal(a["text_ctx"], b["text_ctx"])
    assert not torch.allclose(a["text_ctx"], c["text_ctx"])


def test_gradient_hook_and_nan_guard(backbone, gen):
    vpt = build_method("vpt", backbone)
    init = vpt.init_params(gen)
    cfg = TuneConfig(epochs=2, batch_size=4, lr=0.1)
    logged = []
    plain = train_prompts(vpt, init, _samples(), NAMES, cfg, seed=1)
    identity = train_prompts(vpt, init, _samples(), NAMES, cfg, seed=1, grad_transform=lambda g: g)
    assert torch.equal(plain["visual_ctx"], identity["visual_ctx"])
    assert not torch.equal(plain["visual_ctx"], init["visual_ctx"])
    with pytest.raises(NonFiniteError, match="6 of 6 steps"):  # every step skipped: no result, not init back
        train_prompts(vpt, init, _samples(), NAMES, cfg, seed=1, log=logged.append,
                      grad_transform=lambda g: {k: v * float("nan") for k, v in g.items()})
    assert [r["skipped_steps"] for r in logged] == [3, 3]
    calls, logged = [], []

    def poison_first(g):  # 1 of 12 steps: a counted skip within MAX_SKIPPED, the run goes on
        calls.append(1)
        return {k: v * float("nan") for k, v in g.items()} if len(calls) == 1 else g

    once = train_prompts(vpt, init, _samples(), NAMES, TuneConfig(epochs=4, batch_size=4, lr=0.1), seed=1,
                         log=logged.append, grad_transform=poison_first)
    assert [r["skipped_steps"] for r in logged] == [1, 0, 0, 0] and torch.isfinite(once["visual_ctx"]).all()


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), -1.0])
def test_a_non_finite_or_negative_lr_is_refused_before_training(backbone, gen, lr):
    coop = build_method("coop", backbone)
    with pytest.raises(NonFiniteError, match="learning rate"):
        train_prompts(coop, coop.init_params(gen), _samples(), NAMES, TuneConfig(epochs=1, lr=lr), seed=1)


def test_non_finite_initial_prompts_and_updates_are_errors(backbone, gen):
    coop = build_method("coop", backbone)
    init = coop.init_params(gen)
    bad = {"text_ctx": init["text_ctx"].clone()}
    bad["text_ctx"][0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="initial prompts: text_ctx"):
        train_prompts(coop, bad, _samples(), NAMES, TuneConfig(epochs=1), seed=1)
    # a finite gradient times a finite but huge lr overflows the parameters: an error, not a NaN result
    with pytest.raises(NonFiniteError, match="made text_ctx non-finite"):
        train_prompts(coop, init, _samples(), NAMES, TuneConfig(epochs=1, lr=1e38, momentum=0.0, warmup_epochs=0), seed=1,
                      grad_transform=lambda g: {k: v * 1e10 for k, v in g.items()})


def test_zero_shot_has_nothing_to_train(backbone, gen):
    assert train_prompts(build_method("zeroshot", backbone), {}, _samples(), NAMES, TuneConfig(), seed=1) == {}


def test_cached_stems_give_the_same_evaluation_as_pixels(backbone, gen):
    from gramprompt.eval.evaluate import evaluate

    vpt = build_method("vpt", backbone)
    params = vpt.init_params(gen)
    samples = _samples(n_per_class=3)
    direct = evaluate(vpt, params, samples, NAMES)
    backbone.cache_stems = True
    try:
        cached = evaluate(vpt, params, samples, NAMES)
    finally:
        backbone.cache_stems = False
    assert direct == cached


def test_each_epoch_logs_the_drift_from_init_without_changing_training(backbone, gen):
    """drift = ||params - init|| over all tensors, after every epoch; logging it changes no result."""
    vpt = build_method("vpt", backbone)
    init = vpt.init_params(gen)
    cfg = TuneConfig(epochs=3, batch_size=4, lr=0.1)
    after: dict[int, dict] = {}
    logged = []
    out = train_prompts(vpt, init, _samples(), NAMES, cfg, seed=1, log=logged.append,
                        on_epoch=lambda e, p: after.setdefault(e, {k: v.detach().clone() for k, v in p.items()}))
    assert [r["epoch"] for r in logged] == [1, 2, 3] and all(r["drift"] > 0 for r in logged)
    for record in logged:
        moved = after[record["epoch"]]
        by_hand = math.sqrt(sum(((moved[k].double() - init[k].double()) ** 2).sum().item() for k in init))
        assert record["drift"] == pytest.approx(by_hand, rel=1e-5)
    assert logged[-1]["drift"] == pytest.approx(
        math.sqrt(sum(((out[k].double() - init[k].double()) ** 2).sum().item() for k in init)), rel=1e-5)
    quiet = train_prompts(vpt, init, _samples(), NAMES, cfg, seed=1)  # no log, no hook: bit-identical
    assert all(torch.equal(quiet[k], out[k]) for k in out)


def test_lr_scale_scales_one_groups_update_and_zero_freezes_it(backbone, gen):
    """One full-batch step without momentum history is -lr * scale * (g + wd * theta): the visual update of joint
    tuning is exactly `scale` times the unscaled one, and the text update is unchanged. The two runs' gradients are
    bit for bit the same (same forward, one step), so only the update's few float32 operations differ."""
    joint = build_method("joint", backbone)
    init = joint.init_params(gen)
    samples = _samples()
    base = dict(epochs=1, warmup_epochs=0, lr=0.5, batch_size=len(samples), feature_views=0)
    plain = train_prompts(joint, init, samples, NAMES, TuneConfig(**base), seed=3)
    scaled = train_prompts(joint, init, samples, NAMES, TuneConfig(**base, lr_scale={"visual": 0.25}), seed=3)
    frozen = train_prompts(joint, init, samples, NAMES, TuneConfig(**base, lr_scale={"visual": 0.0}), seed=3)
    step = plain["visual_ctx"] - init["visual_ctx"]
    assert float(step.abs().max()) > 0
    # rounding of: lr * scale, g + wd * theta, the product, theta - update, and the subtraction of theta here
    assert_fp32_close(scaled["visual_ctx"] - init["visual_ctx"], 0.25 * step, terms=1, depth=5,
                      scale=float(init["visual_ctx"].abs().max() + step.abs().max()))
    assert torch.equal(frozen["visual_ctx"], init["visual_ctx"])
    assert torch.equal(scaled["text_ctx"], plain["text_ctx"]) and torch.equal(frozen["text_ctx"], plain["text_ctx"])


def test_lr_scale_of_a_group_the_method_lacks_or_a_bad_value_is_refused(backbone, gen):
    coop = build_method("coop", backbone)
    with pytest.raises(ValueError, match=r"lr_scale names \['visual'\], which coop does not have.*\['text'\]"):
        train_prompts(coop, coop.init_params(gen), _samples(), NAMES, TuneConfig(lr_scale={"visual": 0.5}), seed=1)
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="lr_scale values must be finite and >= 0"):
            TuneConfig(lr_scale={"visual": bad})
