"""R_phi against a NumPy reference, its gradients against finite differences, its initialization."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gramprompt.meta.regulator import SHAPES, RegulatorConfig, init_regulator, regulate, regulate_one
from tolerance import assert_fp32_close


def numpy_regulator(w_g, b_g, w_b, b_b, g, shape):
    """The paper's formula written out independently: tanh(W g + b) per shape."""
    def affine(w, b):
        if shape == "shared":  # W acts on the embedding axis of every token
            return np.einsum("ij,...j->...i", w, g) + b
        if shape == "diagonal":
            return w * g + b
        return (w @ g.reshape(-1) + b).reshape(g.shape)
    return np.tanh(affine(w_g, b_g)) * g + np.tanh(affine(w_b, b_b))


def rounding_bound(phi, g, shape, name="ctx"):
    """``terms``, ``depth`` and ``scale`` of R_phi(g) in float32 (tests/tolerance.py): the affine maps
    sum a row of W g and b (rounded relative to A = max|b| + max|g| * the largest row sum of |W|),
    then tanh, then gamma * g + beta, whose size is at most (1 + max|g|) * max(A, 1)."""
    g = torch.as_tensor(g)
    ws = [phi[f"{name}.w_{k}"].abs() for k in ("gamma", "beta")]
    rows = [w if shape == "diagonal" else w.sum(-1) for w in ws]
    a = max(float(phi[f"{name}.b_{k}"].abs().max()) + float(g.abs().max()) * float(r.max())
            for k, r in zip(("gamma", "beta"), rows))
    terms = {"shared": g.shape[-1], "diagonal": 1, "full": g.numel()}[shape] + 1
    return dict(terms=terms, depth=3, scale=(1 + float(g.abs().max())) * max(a, 1.0))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("prompt_shape", [(4, 6), (2, 3, 6)])  # text (M, d) and deep visual (depth, M, d)
def test_regulator_matches_reference(shape, prompt_shape):
    gen = torch.Generator().manual_seed(0)
    params = {"ctx": torch.zeros(prompt_shape)}
    phi = init_regulator(params, RegulatorConfig(shape, weight_init_std=0.5), gen)
    phi = {k: v + 0.3 * torch.randn(v.shape, generator=gen) for k, v in phi.items()}
    g = torch.randn(prompt_shape, generator=gen)
    out = regulate_one(phi, "ctx", g, shape)
    ref = numpy_regulator(*(phi[f"ctx.{k}"].numpy() for k in ("w_gamma", "b_gamma", "w_beta", "b_beta")),
                          g.numpy(), shape)
    assert_fp32_close(out, ref, **rounding_bound(phi, g, shape))


@pytest.mark.parametrize("shape", SHAPES)
def test_regulator_gradients_match_finite_differences(shape):
    gen = torch.Generator().manual_seed(1)
    params = {"ctx": torch.zeros(3, 4, dtype=torch.float64)}
    phi = init_regulator(params, RegulatorConfig(shape, weight_init_std=0.4), gen)
    phi = {k: v.double().requires_grad_() for k, v in phi.items()}
    g = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    names = sorted(phi)

    def f(g_, *tensors):
        return regulate_one(dict(zip(names, tensors)), "ctx", g_, shape)

    assert torch.autograd.gradcheck(f, (g, *(phi[n] for n in names)), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_initialization_is_a_scaled_identity(shape):
    params = {"text_ctx": torch.randn(4, 8), "visual_ctx": torch.randn(2, 4, 8)}
    phi = init_regulator(params, RegulatorConfig(shape))
    assert len(phi) == 8 and all(v.dtype == torch.float32 for v in phi.values())
    grads = {k: torch.randn_like(v) * 1e-3 for k, v in params.items()}
    out = regulate(phi, grads, shape)
    for k in params:  # gamma = tanh(2) for any g, beta = 0
        torch.testing.assert_close(out[k], math.tanh(2.0) * grads[k])


def test_saturated_gamma_is_plain_sgd_and_unregulated_names_pass_through():
    params = {"text_ctx": torch.randn(4, 8), "meta_w1": torch.randn(8, 8)}
    phi = init_regulator(params, names=["text_ctx"])
    phi["text_ctx.b_gamma"].fill_(20.0)  # tanh(20) == 1 in float32: the identity regulator
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    out = regulate(phi, grads, "shared")
    assert torch.equal(out["text_ctx"], grads["text_ctx"]) and out["meta_w1"] is grads["meta_w1"]


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="shape"):
        RegulatorConfig("conv")
    with pytest.raises(ValueError, match="gamma_init"):
        RegulatorConfig(gamma_init=1.0)
    with pytest.raises(ValueError, match="full regulator"):
        init_regulator({"ctx": torch.zeros(24, 512)}, RegulatorConfig("full"))


@pytest.mark.parametrize("shape", SHAPES)
def test_scale_invariant_option_commutes_with_gradient_scale(shape):
    gen = torch.Generator().manual_seed(2)
    params = {"ctx": torch.zeros(3, 5)}
    phi = init_regulator(params, RegulatorConfig(shape, weight_init_std=0.5), gen)
    phi = {k: v + 0.3 * torch.randn(v.shape, generator=gen) for k, v in phi.items()}
    g = torch.randn(3, 5, generator=gen) * 1e-2
    out = regulate_one(phi, "ctx", g, shape, scale_invariant=True)
    rms = g.pow(2).mean().sqrt()  # independent truth: the paper's formula on g / rms, rescaled
    bound = rounding_bound(phi, g / rms, shape)  # on g / rms, + the rms (a sum of numel squares) and the division
    bound = dict(terms=max(bound["terms"], g.numel()), depth=bound["depth"] + 2, scale=float(rms) * bound["scale"])
    assert_fp32_close(regulate_one(phi, "ctx", 1e3 * g, shape, scale_invariant=True), 1e3 * out,
                      **{**bound, "scale": 1e3 * bound["scale"]})
    ref = numpy_regulator(*(phi[f"ctx.{k}"].numpy() for k in ("w_gamma", "b_gamma", "w_beta", "b_beta")),
                          (g / rms).numpy(), shape) * rms.numpy()
    assert_fp32_close(out, ref, **bound)
