"""The few-shot tuning loop: schedule, determinism, the exact SGD step, the gradient hook, NaN guard."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gramprompt.data.dataset import Sample
from gramprompt.prompts import Batch, build_method
from gramprompt.tuning.config import TuneConfig, lr_at_epoch
from gramprompt.tuning.features import encode_images
from gramprompt.tuning.train import train_prompts

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
    assert torch.allclose(out["text_ctx"], expected, atol=1e-6)


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
    poisoned = train_prompts(vpt, init, _samples(), NAMES, cfg, seed=1, log=logged.append,
                             grad_transform=lambda g: {k: v * float("nan") for k, v in g.items()})
    assert torch.equal(poisoned["visual_ctx"], init["visual_ctx"])  # every step skipped, nothing applied
    assert [r["skipped_steps"] for r in logged] == [3, 3]


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
