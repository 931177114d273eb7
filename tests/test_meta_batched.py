"""The batched meta-step against the per-task loop of meta.step.meta_loss (the reference)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gramprompt.meta.batched import batched_meta_loss, supports_batched
from gramprompt.meta.inputs import FeatureInputs
from gramprompt.meta.regulator import RegulatorConfig, init_regulator
from gramprompt.meta.step import TaskData, meta_loss
from gramprompt.meta.tasks import TaskConfig, TaskSampler
from gramprompt.meta.trainer import MetaConfig, MetaTrainer
from gramprompt.prompts import Batch, build_method
from tolerance import assert_fp32_close, fp32_tol, meta_gradient

# different names per task, of different token lengths, so the tasks' tokens need padding
CLASSES = [["cat", "dog", "car"], ["sea horse", "grand piano", "yin yang"], ["emu", "electric guitar", "ant"]]
SIZES = [(6, 9), (3, 12), (9, 3)]  # (support, query) images per task: unequal on purpose


def make_task(backbone, names: list[str], n_support: int, n_query: int, seed: int) -> TaskData:
    gen = torch.Generator().manual_seed(seed)
    d, k = backbone.embed_dim, len(names)
    s, q = torch.randn(n_support, d, generator=gen), torch.randn(n_query, d, generator=gen)
    return TaskData(names, Batch(features=s), torch.arange(n_support) % k, Batch(features=q), torch.arange(n_query) % k)


@pytest.fixture
def method(backbone):
    return build_method("coop", backbone)


@pytest.fixture
def tasks(backbone):
    return [make_task(backbone, names, s, q, seed) for seed, (names, (s, q)) in enumerate(zip(CLASSES, SIZES))]


def leaves(method, regulator: RegulatorConfig | str, with_phi: bool):
    theta = {k: v.requires_grad_() for k, v in method.init_params(torch.Generator().manual_seed(0)).items()}
    if not with_phi:
        return theta, None
    cfg = regulator if isinstance(regulator, RegulatorConfig) else RegulatorConfig(regulator)
    # random W so R_phi is far from a scaled identity and the test sees every term
    phi = init_regulator(theta, RegulatorConfig(cfg.shape, cfg.form_name, weight_init_std=0.3),
                         torch.Generator().manual_seed(1))
    return theta, {k: v.requires_grad_() for k, v in phi.items()}


def regulated_bound(backbone, steps: int, second_order: bool, regulator: RegulatorConfig | str = "shared") -> dict:
    """tolerance.meta_gradient, plus the literal form's affine map per inner step that it counts: the
    other forms take two more reductions over the prompt's values per step (rms of g and of h, or
    rms of g and the rescale), differentiated once more in second order."""
    bound = meta_gradient(backbone, steps, second_order)
    if isinstance(regulator, RegulatorConfig) and regulator.form_name != "literal":
        bound["depth"] += 2 * steps * (2 if second_order else 1)
    return bound


def assert_matches_the_loop(backbone, loss, ref_loss, grads, ref_grads, bound):
    """float32 rounding bound (tests/tolerance.py): the loss at its own size, each gradient at its
    largest entry's (an entry small by cancellation carries the rounding of the large terms)."""
    assert_fp32_close(loss, ref_loss, **bound, msg="loss")
    for i, (g, ref) in enumerate(zip(grads, ref_grads)):
        assert ref.abs().max() > 0
        assert_fp32_close(g, ref, **bound, msg=f"gradient {i}")


def loss_and_grads(fn, method, theta, phi, shape, tasks, **kw):
    loss, stats = fn(method, theta, phi, shape, tasks, **kw)
    params = [*theta.values(), *(phi or {}).values()]
    return loss.detach(), torch.autograd.grad(loss, params), stats


@pytest.mark.parametrize("second_order", [False, True], ids=["first-order", "second-order"])
@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("regulator,with_phi", [
    (RegulatorConfig("shared"), True), (RegulatorConfig("diagonal"), True),
    (RegulatorConfig("shared", "scale-invariant"), True), (RegulatorConfig("shared", "bounded"), True),
    (RegulatorConfig("diagonal", "bounded"), True), (RegulatorConfig("shared"), False)],
    ids=["shared", "diagonal", "shared-scale-invariant", "shared-bounded", "diagonal-bounded", "no-regulator"])
def test_batched_equals_the_per_task_loop(backbone, method, tasks, regulator, with_phi, steps, second_order):
    theta, phi = leaves(method, regulator, with_phi)
    kw = dict(alpha=2.0, steps=steps, second_order=second_order, stats=True)
    ref_loss, ref_grads, ref_stats = loss_and_grads(meta_loss, method, theta, phi, regulator, tasks, **kw)
    loss, grads, stats = loss_and_grads(batched_meta_loss, method, theta, phi, regulator, tasks, **kw)
    assert len(grads) == len(ref_grads) == 1 + len(phi or {})
    bound = regulated_bound(backbone, steps, second_order, regulator)
    assert_matches_the_loop(backbone, loss, ref_loss, grads, ref_grads, bound)
    for name, value in vars(ref_stats).items():  # losses, accuracies in %, a cosine (scale 1)
        assert_fp32_close(getattr(stats, name), value, **bound, scale=max(abs(value), 1.0), msg=name)


@pytest.mark.parametrize("form", ["literal", "scale-invariant", "bounded"])
def test_regulators_applied_task_by_task_match_too(backbone, method, tasks, form):
    regulator = RegulatorConfig("full", form)
    theta, phi = leaves(method, regulator, True)
    kw = dict(alpha=1.0, steps=1, second_order=False, stats=False)
    ref_loss, ref_grads, _ = loss_and_grads(meta_loss, method, theta, phi, regulator, tasks, **kw)
    loss, grads, stats = loss_and_grads(batched_meta_loss, method, theta, phi, regulator, tasks, **kw)
    assert stats is None
    assert_matches_the_loop(backbone, loss, ref_loss, grads, ref_grads, regulated_bound(backbone, 1, False, regulator))


def test_one_text_forward_per_inner_step_and_one_for_the_query(method, tasks, monkeypatch):
    theta, phi = leaves(method, "shared", True)
    calls = []
    encode = method.backbone.encode_text_embeddings
    monkeypatch.setattr(method.backbone, "encode_text_embeddings", lambda e, n: calls.append(len(e)) or encode(e, n))
    batched_meta_loss(method, theta, phi, "shared", tasks, alpha=1.0, steps=2, stats=True)
    assert calls == [9, 9, 9]  # 3 tasks x 3 classes; the "before" statistics reuse the first forward


def test_the_concatenated_class_lists_are_not_cached(method, tasks):
    theta, phi = leaves(method, "shared", True)
    batched_meta_loss(method, theta, phi, "shared", tasks, alpha=1.0, stats=False)
    assert set(method.text._tokens) == {tuple(names) for names in CLASSES}


def test_what_is_supported(backbone, method, tasks):
    assert supports_batched(method)
    assert not any(supports_batched(build_method(m, backbone)) for m in ("cocoop", "vpt", "joint", "zeroshot"))
    theta, phi = leaves(method, "shared", True)
    with pytest.raises(ValueError, match="same number of classes"):
        batched_meta_loss(method, theta, phi, "shared", [tasks[0], make_task(backbone, ["a", "b"], 2, 2, 9)], 1.0)
    with pytest.raises(ValueError, match="CoOp-like"):
        batched_meta_loss(build_method("cocoop", backbone), theta, phi, "shared", tasks, 1.0)


def test_trainer_batched_and_per_task_reach_the_same_parameters(backbone, tmp_path):
    names = ["apple", "boat", "cloud", "drum", "eagle", "fern"]
    rng = np.random.default_rng(0)
    topic, domain = np.repeat(np.arange(6), 30), np.tile(np.repeat(np.arange(3), 10), 6)
    d = backbone.embed_dim
    feats = rng.normal(size=(6, d))[topic] + rng.normal(size=(3, d))[domain] + 0.3 * rng.normal(size=(180, d))
    sampler = TaskSampler(topic, domain, names, TaskConfig(ways=3, support_shots=2, query_shots=4))
    inputs = FeatureInputs(torch.tensor(feats, dtype=torch.float32))
    method = build_method("coop", backbone)
    states, logs = [], []
    for batched in (True, False):
        cfg = MetaConfig(iterations=4, task_batch=3, stats_every=2, checkpoint_every=4, batched=batched,
                         regulator=RegulatorConfig(weight_init_std=0.05))
        log: list[dict] = []
        states.append(MetaTrainer(method, sampler, inputs, cfg, tmp_path / str(batched), log=log.append).run())
        logs.append(log)
    (fast, slow) = states
    # Adam's first steps are ~lr * sign(g): an entry whose meta-gradient is ~0 (one b_gamma here)
    # turns float rounding into a visible part of a step, so compare against the step size; every
    # entry moved ~4 steps (8e-3) and most agree to 1e-6
    for name in slow.theta:
        torch.testing.assert_close(fast.theta[name], slow.theta[name], rtol=0, atol=0.1 * cfg.lr_theta)
    for name in slow.phi:
        torch.testing.assert_close(fast.phi[name], slow.phi[name], rtol=0, atol=0.1 * cfg.lr_phi)
    # Adam normalizes its steps: a gradient's rounding (relative to its size) becomes the same
    # fraction of a step of size lr, and the typical entry is not ~0
    bound = meta_gradient(backbone, cfg.inner_steps, cfg.second_order)
    moved = torch.cat([(a - b).detach().abs().reshape(-1) for a, b in zip(fast.phi.values(), slow.phi.values())])
    assert float(moved.median()) <= cfg.iterations * cfg.lr_phi * fp32_tol(1.0, **bound)
    assert not torch.equal(slow.theta["text_ctx"], method.init_params(torch.Generator().manual_seed(0))["text_ctx"])
    for a, b in zip(*logs):
        assert a.keys() == b.keys()
        assert_fp32_close(a["meta_loss"], b["meta_loss"], **bound, msg="meta_loss")
        for key in ("alignment", "alignment_raw"):
            if key in a:  # a cosine: scale 1
                assert_fp32_close(a[key], b[key], **bound, scale=1.0, msg=key)
