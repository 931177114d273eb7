"""The meta-step against independent truths: plain SGD, finite differences, first vs second order."""
from __future__ import annotations

import pytest
import torch

from gramprompt.meta.regulator import RegulatorConfig, init_regulator

LITERAL = RegulatorConfig("shared", "literal")  # the paper's formula, which these tests were written for
from gramprompt.meta.step import TaskData, adapt, meta_loss, task_loss
from gramprompt.prompts import Batch, build_method
from tolerance import assert_fp32_close, meta_gradient

CLASSES = ["cat", "dog", "car"]


def make_task(backbone, seed: int) -> TaskData:
    gen = torch.Generator().manual_seed(seed)
    d = backbone.embed_dim
    s, q = torch.randn(6, d, generator=gen), torch.randn(9, d, generator=gen)
    return TaskData(CLASSES, Batch(features=s), torch.arange(3).repeat(2), Batch(features=q), torch.arange(3).repeat(3))


@pytest.fixture
def setup(backbone):
    method = build_method("coop", backbone)
    theta = {k: v.requires_grad_() for k, v in method.init_params(torch.Generator().manual_seed(0)).items()}
    phi = init_regulator(theta, RegulatorConfig("shared", "literal", weight_init_std=0.05), torch.Generator().manual_seed(1))
    phi = {k: v.requires_grad_() for k, v in phi.items()}
    return method, theta, phi, [make_task(backbone, 1), make_task(backbone, 2)]


def test_identity_regulator_is_plain_sgd(setup):
    method, theta, phi, tasks = setup
    phi = {k: v.detach().clone() for k, v in phi.items()}
    for k in phi:
        phi[k].zero_()
        if k.endswith("b_gamma"):
            phi[k].fill_(20.0)  # gamma = tanh(20) = 1, beta = 0
    adapted, _, _ = adapt(method, theta, phi, LITERAL, tasks[0], alpha=0.5)
    loss, _ = task_loss(method, theta, tasks[0].support, tasks[0].support_y, CLASSES)
    (g,) = torch.autograd.grad(loss, [theta["text_ctx"]])
    torch.testing.assert_close(adapted["text_ctx"], theta["text_ctx"] - 0.5 * g)
    raw, _, _ = adapt(method, theta, None, LITERAL, tasks[0], alpha=0.5)  # --no-regulator
    torch.testing.assert_close(raw["text_ctx"], adapted["text_ctx"])


@pytest.mark.parametrize("form", ["literal", "bounded"])
def test_phi_gradient_is_the_same_in_first_and_second_order_for_one_inner_step(setup, form):
    method, theta, _, tasks = setup
    regulator = RegulatorConfig("shared", form)
    phi = init_regulator(theta, RegulatorConfig("shared", form, weight_init_std=0.05), torch.Generator().manual_seed(1))
    phi = {k: v.requires_grad_() for k, v in phi.items()}
    grads = []
    for second in (False, True):
        loss, _ = meta_loss(method, theta, phi, regulator, tasks, alpha=1.0, second_order=second, stats=False)
        grads.append(torch.autograd.grad(loss, list(phi.values())))
    bound = meta_gradient(method.backbone, steps=1, second_order=True)
    bound["depth"] += 4 if form == "bounded" else 0  # its two norms, differentiated twice
    for a, b in zip(*grads):
        # the same phi-gradient through two graphs (SO also runs the math attention kernel): fp32 rounding
        assert_fp32_close(a, b, **bound)


def test_first_order_phi_gradient_is_inexact_with_several_inner_steps(setup):
    """Step k > 1 regulates g(theta'_{k-1}), which depends on phi through theta'_{k-1}: first order
    drops that term, second order keeps it (finite differences are the truth)."""
    method, theta, phi, tasks = setup
    names, alpha, steps = list(phi), 2.0, 3

    def f(tensors, second_order=True):
        loss, _ = meta_loss(method, theta, dict(zip(names, tensors)), LITERAL, tasks, alpha, steps,
                            second_order=second_order, stats=False)
        return loss

    gen = torch.Generator().manual_seed(6)
    v = [torch.randn(phi[n].shape, generator=gen) for n in names]
    norm = torch.sqrt(sum((t ** 2).sum() for t in v))
    v = [t / norm for t in v]
    eps = 1e-2
    base = [phi[n].detach() for n in names]
    fd = (f([b + eps * d for b, d in zip(base, v)]) - f([b - eps * d for b, d in zip(base, v)])).item() / (2 * eps)
    directional = {}
    for second in (False, True):
        grads = torch.autograd.grad(f([phi[n] for n in names], second), [phi[n] for n in names])
        directional[second] = sum(float((g * d).sum()) for g, d in zip(grads, v))
    assert directional[True] == pytest.approx(fd, rel=2e-2, abs=3e-5)  # float32 loss rounding / (2 eps): ~1e-5
    assert abs(directional[False] - fd) > 5 * abs(directional[True] - fd)


def test_second_order_theta_gradient_matches_finite_differences(setup):
    method, theta, phi, tasks = setup
    alpha = 2.0  # a large inner step so the Hessian term matters

    def f(ctx):
        loss, _ = meta_loss(method, {"text_ctx": ctx}, phi, LITERAL, tasks, alpha, second_order=True, stats=False)
        return loss

    ctx = theta["text_ctx"]
    v = torch.randn(ctx.shape, generator=torch.Generator().manual_seed(5))
    v = v / v.norm()
    eps = 1e-2
    fd = (f((ctx + eps * v).detach().requires_grad_()) - f((ctx - eps * v).detach().requires_grad_())).item() / (2 * eps)
    so = (torch.autograd.grad(f(ctx), [ctx])[0] * v).sum().item()
    loss_fo, _ = meta_loss(method, theta, phi, LITERAL, tasks, alpha, second_order=False, stats=False)
    fo = (torch.autograd.grad(loss_fo, [ctx])[0] * v).sum().item()
    assert so == pytest.approx(fd, rel=2e-2, abs=1e-4)
    assert abs(fo - fd) > 5 * abs(so - fd)  # first order drops the Hessian term: visibly off here


def test_stats_are_logged(setup):
    method, theta, phi, tasks = setup
    loss, stats = meta_loss(method, theta, phi, LITERAL, tasks, alpha=1.0)
    assert loss.requires_grad and -1.0 <= stats.alignment <= 1.0
    # the raw alignment by hand: cos(g_support, g_query) at theta, averaged over the tasks
    cos = []
    for t in tasks:
        g = [torch.autograd.grad(task_loss(method, theta, b, y, CLASSES)[0], [theta["text_ctx"]])[0].reshape(-1)
             for b, y in ((t.support, t.support_y), (t.query, t.query_y))]
        cos.append(float(g[0] @ g[1] / (g[0].norm() * g[1].norm())))
    assert stats.alignment_raw == pytest.approx(sum(cos) / len(cos), abs=1e-5)
    assert abs(stats.alignment - stats.alignment_raw) > 1e-4  # phi (random weights, a bias) turns the gradient
    _, plain = meta_loss(method, theta, None, LITERAL, tasks, alpha=1.0)
    assert plain.alignment == plain.alignment_raw == pytest.approx(stats.alignment_raw, abs=1e-6)
    assert 0 <= stats.query_acc_before <= 100 and stats.query_loss_after > 0
