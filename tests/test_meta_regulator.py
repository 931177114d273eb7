"""R_phi against a NumPy reference, its gradients against finite differences, its initialization,
and the promises of each form (R(0) = 0, ||R(g)|| <= ||g||, R(c g) = c R(g), descent)."""
from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import pytest
import torch

from gramprompt.meta.regulator import (FORMS, GATE_INIT, SHAPES, RegulatorConfig, check_phi, init_regulator, regulate,
                                       regulate_one)
from tolerance import assert_fp32_close, fp32_tol

PROMISED = ("bounded",)  # the forms with R(0) = 0, ||R(g)|| <= ||g|| and a descent direction
HOMOGENEOUS = ("scale-invariant", "bounded")  # R(c g) = c R(g) for c > 0


def numpy_gates(phi, g, shape, name="ctx"):
    """tanh(W x + b) for gamma and beta, per shape, written out independently."""
    def affine(kind):
        w, b = phi[f"{name}.w_{kind}"], phi[f"{name}.b_{kind}"]
        if shape == "shared":  # W acts on the embedding axis of every token
            return np.einsum("ij,...j->...i", w, g) + b
        if shape == "diagonal":
            return w * g + b
        return (w @ g.reshape(-1) + b).reshape(g.shape)
    return np.tanh(affine("gamma")), np.tanh(affine("beta"))


def numpy_regulator(phi, g, shape, form, name="ctx"):
    """Every form's formula (regulator.py's docstring) in float64 NumPy."""
    phi = {k: v.detach().double().numpy() for k, v in phi.items()}
    g = np.asarray(g, dtype=np.float64)
    if form == "literal":
        gamma, beta = numpy_gates(phi, g, shape, name)
        return gamma * g + beta
    rms = np.sqrt(np.mean(g ** 2))
    if form == "scale-invariant":  # the form as first written: rms + 1e-12 (so not scale-free below ~1e-6)
        gamma, beta = numpy_gates(phi, g / (rms + 1e-12), shape, name)
        return gamma * g + beta * (rms + 1e-12)
    x = g / rms
    gamma, beta = numpy_gates(phi, x, shape, name)
    h = gamma * x + beta
    u = h * np.linalg.norm(g) / np.linalg.norm(h)
    a = 0.5 * (1 + 1 / (1 + np.exp(-phi[f"{name}.b_gate"])))
    return a * g + (1 - a) * u


def random_phi(prompt_shape, shape, form, seed, w_std=0.5, b_std=0.3, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    phi = init_regulator({"ctx": torch.zeros(prompt_shape)}, RegulatorConfig(shape, form, weight_init_std=w_std), gen)
    return {k: (v + b_std * torch.randn(v.shape, generator=gen)).to(dtype) for k, v in phi.items()}


def rounding_bound(phi, g, shape, name="ctx"):
    """``terms``, ``depth`` and ``scale`` of the literal R_phi(g) in float32 (tests/tolerance.py): the
    affine maps sum a row of W g and b (rounded relative to A = max|b| + max|g| * the largest row sum
    of |W|), then tanh, then gamma * g + beta, whose size is at most (1 + max|g|) * max(A, 1)."""
    g = torch.as_tensor(g)
    ws = [phi[f"{name}.w_{k}"].abs() for k in ("gamma", "beta")]
    rows = [w if shape == "diagonal" else w.sum(-1) for w in ws]
    a = max(float(phi[f"{name}.b_{k}"].abs().max()) + float(g.abs().max()) * float(r.max())
            for k, r in zip(("gamma", "beta"), rows))
    terms = {"shared": g.shape[-1], "diagonal": 1, "full": g.numel()}[shape] + 1
    return dict(terms=terms, depth=3, scale=(1 + float(g.abs().max())) * max(a, 1.0))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("prompt_shape", [(4, 6), (2, 3, 6)])  # text (M, d) and deep visual (depth, M, d)
def test_literal_regulator_matches_reference_in_float32(shape, prompt_shape):
    phi = random_phi(prompt_shape, shape, "literal", seed=0)
    g = torch.randn(prompt_shape, generator=torch.Generator().manual_seed(10))
    out = regulate_one(phi, "ctx", g, RegulatorConfig(shape, "literal"))
    assert_fp32_close(out, numpy_regulator(phi, g.numpy(), shape, "literal"), **rounding_bound(phi, g, shape))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("prompt_shape", [(4, 6), (2, 3, 6)])
def test_every_form_matches_reference(form, shape, prompt_shape):
    """In float64, so the comparison checks the formula, not float32 rounding."""
    phi = random_phi(prompt_shape, shape, form, seed=0, dtype=torch.float64)
    for scale in (1e-6, 1.0, 1e4):
        g = scale * torch.randn(prompt_shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        out = regulate_one(phi, "ctx", g, RegulatorConfig(shape, form)).numpy()
        ref = numpy_regulator(phi, g.numpy(), shape, form)
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12 * max(np.abs(ref).max(), scale))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shape", SHAPES)
def test_regulator_gradients_match_finite_differences(form, shape):
    phi = {k: v.requires_grad_() for k, v in random_phi((3, 4), shape, form, seed=1, w_std=0.4,
                                                        dtype=torch.float64).items()}
    g = torch.randn(3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64, requires_grad=True)
    names = sorted(phi)

    def f(g_, *tensors):
        return regulate_one(dict(zip(names, tensors)), "ctx", g_, RegulatorConfig(shape, form))

    assert torch.autograd.gradcheck(f, (g, *(phi[n] for n in names)), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_initialization_is_a_scaled_identity(shape):
    params = {"text_ctx": torch.randn(4, 8), "visual_ctx": torch.randn(2, 4, 8)}
    grads = {k: torch.randn_like(v) * 1e-3 for k, v in params.items()}
    for form in ("literal", "scale-invariant"):
        cfg = RegulatorConfig(shape, form)
        phi = init_regulator(params, cfg)
        assert len(phi) == 8 and all(v.dtype == torch.float32 for v in phi.values())
        out = regulate(phi, grads, cfg)
        for k in params:  # gamma = tanh(2) for any g, beta = 0
            torch.testing.assert_close(out[k], math.tanh(2.0) * grads[k])


@pytest.mark.parametrize("shape", SHAPES)
def test_bounded_form_starts_as_the_identity(shape):
    params = {"text_ctx": torch.randn(4, 8), "visual_ctx": torch.randn(2, 4, 8)}
    cfg = RegulatorConfig(shape, "bounded")
    phi = init_regulator(params, cfg)
    assert len(phi) == 10 and float(torch.sigmoid(phi["text_ctx.b_gate"])) == pytest.approx(2 * GATE_INIT - 1)
    for scale in (1e-8, 1e-2, 1e3):
        grads = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(3)) * scale for k, v in params.items()}
        out = regulate(phi, grads, cfg)
        for k, g in grads.items():  # h = gamma_init * x is parallel to g, so u = g and a g + (1 - a) g = g
            assert_fp32_close(out[k], g, terms=g.numel(), depth=6)


def test_saturated_gamma_is_plain_sgd_and_unregulated_names_pass_through():
    params = {"text_ctx": torch.randn(4, 8), "meta_w1": torch.randn(8, 8)}
    literal = RegulatorConfig("shared", "literal")
    phi = init_regulator(params, literal, names=["text_ctx"])
    phi["text_ctx.b_gamma"].fill_(20.0)  # tanh(20) == 1 in float32: the identity regulator
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    out = regulate(phi, grads, literal)
    assert torch.equal(out["text_ctx"], grads["text_ctx"]) and out["meta_w1"] is grads["meta_w1"]


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="shape"):
        RegulatorConfig("conv")
    with pytest.raises(ValueError, match="form"):
        RegulatorConfig(form="clipped")
    # the old spelling alone selects its form over the default one (old configs say only scale_invariant)
    assert RegulatorConfig(form="bounded", scale_invariant=True).form_name == "scale-invariant"
    with pytest.raises(ValueError, match="contradicts"):
        RegulatorConfig(form="literal", scale_invariant=True)
    with pytest.raises(ValueError, match="gamma_init"):
        RegulatorConfig(gamma_init=1.0)
    with pytest.raises(ValueError, match="full regulator"):
        init_regulator({"ctx": torch.zeros(24, 512)}, RegulatorConfig("full"))
    phi = init_regulator({"ctx": torch.zeros(2, 3)}, RegulatorConfig(form="literal"))
    with pytest.raises(ValueError, match="lacks \\['b_gate'\\]"):  # literal tensors, bounded metadata
        check_phi(phi, RegulatorConfig(form="bounded"), "gram.safetensors")


def test_the_old_scale_invariant_spelling_is_the_same_config():
    """Run folders and checkpoints from before ``form`` say ``scale_invariant``: both spellings are
    one config, stored the old way, so their settings compare equal."""
    old, new = RegulatorConfig(scale_invariant=True), RegulatorConfig(form="scale-invariant")
    assert old == new and asdict(new) == asdict(old) and new.form_name == "scale-invariant"
    assert RegulatorConfig(form="literal") == RegulatorConfig(form=None) and RegulatorConfig(form=None).form_name == "literal"
    assert RegulatorConfig(form="bounded") == RegulatorConfig() and RegulatorConfig().form_name == "bounded"  # the default
    for cfg in (RegulatorConfig("diagonal"), new, RegulatorConfig("full", "bounded")):
        meta = cfg.metadata()
        assert meta["form"] == cfg.form_name and RegulatorConfig(**meta) == cfg
    assert RegulatorConfig(**{"shape": "shared", "scale_invariant": True}).form_name == "scale-invariant"


def test_a_checkpoint_from_before_forms_keeps_its_form_under_the_new_default(tmp_path):
    """The default form is now ``bounded``; a checkpoint whose metadata predates ``form`` used the literal
    form (or the scale-invariant one by its flag) and must be applied as it was trained."""
    from gramprompt.meta.checkpoint import regulator_config

    old = {"shape": "shared", "gamma_init": 0.96, "weight_init_std": 0.0, "scale_invariant": False}
    assert regulator_config(tmp_path, {"regulator": old}).form_name == "literal"
    assert regulator_config(tmp_path, {"regulator": {**old, "scale_invariant": True}}).form_name == "scale-invariant"
    assert regulator_config(tmp_path, {"regulator": RegulatorConfig().metadata()}).form_name == "bounded"


def random_cases(form, n=24):
    """(phi, g) over shapes, saturating, mild and initial phi (where u = g: the bound is tight), and
    gradient scales from 1e-12 to 1e12."""
    gen = torch.Generator().manual_seed(4)
    for i in range(n):
        shape, prompt_shape = SHAPES[i % 3], [(4, 6), (2, 3, 6), (1, 5)][i % 3]
        w_std, b_std = [(3.0, 3.0), (0.5, 0.3), (0.0, 0.0), (0.5, 0.3)][i % 4]
        phi = random_phi(prompt_shape, shape, form, seed=100 + i, w_std=w_std, b_std=b_std)
        scale = 10.0 ** float(torch.randint(-12, 13, (), generator=gen))
        yield RegulatorConfig(shape, form), phi, scale * torch.randn(prompt_shape, generator=gen)


@pytest.mark.parametrize("form", PROMISED)
def test_step_is_never_longer_than_the_raw_gradient_and_is_a_descent_direction(form):
    for cfg, phi, g in random_cases(form):
        out = regulate_one(phi, "ctx", g, cfg)
        norm = float(torch.linalg.vector_norm(g))
        tol = fp32_tol(norm, terms=g.numel(), depth=8)
        assert float(torch.linalg.vector_norm(out)) <= norm + tol
        a = 0.5 * (1 + float(torch.sigmoid(phi["ctx.b_gate"])))  # <R(g), g> >= (2a - 1) ||g||^2
        assert float((out * g).sum()) >= (2 * a - 1) * norm ** 2 - tol * norm


@pytest.mark.parametrize("form", PROMISED)
def test_zero_gradient_gives_zero_step_and_finite_gradients(form):
    for cfg, phi, g in random_cases(form, n=6):
        phi = {k: v.requires_grad_() for k, v in phi.items()}
        zero = torch.zeros_like(g, requires_grad=True)
        out = regulate_one(phi, "ctx", zero, cfg)
        assert torch.equal(out, torch.zeros_like(g))
        grads = torch.autograd.grad((out * g).sum(), [zero, *phi.values()], allow_unused=True)
        assert all(t is None or torch.isfinite(t).all() for t in grads)


def test_scale_invariant_form_has_finite_gradients_at_zero():
    """R(0) = beta * 1e-12 here (no promise of R(0) = 0), but a zero gradient no longer gives a NaN
    second-order gradient through sqrt."""
    for cfg, phi, g in random_cases("scale-invariant", n=3):
        zero = torch.zeros_like(g, requires_grad=True)
        (grad,) = torch.autograd.grad((regulate_one(phi, "ctx", zero, cfg) * g).sum(), [zero])
        assert torch.isfinite(grad).all()


def homogeneity_bound(phi, g, cfg) -> dict:
    """float32 bound for R(c g) vs c R(g): the literal bound on x = g / rms(g), times rms(g); for the
    bounded form divided by rms(h) (u = h * rms(g) / rms(h) amplifies h's rounding by that)."""
    rms = float(g.pow(2).mean().sqrt())
    x = g / rms
    bound = rounding_bound(phi, x, cfg.shape)
    scale = rms * bound["scale"]
    if cfg.form_name == "bounded":
        gamma, beta = numpy_gates({k: v.double().numpy() for k, v in phi.items()}, x.double().numpy(), cfg.shape)
        scale /= float(np.sqrt(np.mean((gamma * x.double().numpy() + beta) ** 2)))
    return dict(terms=max(g.numel(), bound["terms"]), depth=bound["depth"] + 7, scale=scale)


@pytest.mark.parametrize("form", HOMOGENEOUS)
def test_homogeneous_forms_commute_with_gradient_scale(form):
    for cfg, phi, g in random_cases(form):
        if form == "scale-invariant" and float(g.pow(2).mean().sqrt()) < 1e-4:
            continue  # its rms + 1e-12 is scale-free to float32 rounding only for rms >> 1e-12 / u
        out = regulate_one(phi, "ctx", g, cfg)
        if form == "bounded":  # a power of two scales every intermediate exactly
            assert torch.equal(regulate_one(phi, "ctx", 2.0 ** -20 * g, cfg), 2.0 ** -20 * out)
        bound = homogeneity_bound(phi, g, cfg)
        assert_fp32_close(regulate_one(phi, "ctx", 1e3 * g, cfg), 1e3 * out, **{**bound, "scale": 1e3 * bound["scale"]})


@pytest.mark.parametrize("cfg", [RegulatorConfig("shared"), RegulatorConfig("diagonal", "scale-invariant"),
                                 RegulatorConfig("shared", "bounded")], ids=lambda c: f"{c.shape}-{c.form_name}")
def test_a_checkpoint_regulates_with_the_form_it_was_written_with(tmp_path, cfg):
    from gramprompt.meta.checkpoint import regulated_grad_transform, save_gram

    theta = {"text_ctx": torch.randn(4, 8, generator=torch.Generator().manual_seed(5))}
    phi = {k: v + 0.3 for k, v in init_regulator(theta, cfg).items()}  # not the initial map
    path = save_gram(tmp_path / "gram.safetensors", theta, phi, {"method": "coop", "regulator": cfg.metadata()})
    transform = regulated_grad_transform(path)
    assert transform.keywords["regulator"] == cfg
    grads = {"text_ctx": torch.randn(4, 8, generator=torch.Generator().manual_seed(6)) * 1e-2}
    assert torch.equal(transform(grads)["text_ctx"], regulate(phi, grads, cfg)["text_ctx"])


def test_old_checkpoints_load_as_the_form_their_flag_names(tmp_path):
    from gramprompt.errors import GramError
    from gramprompt.meta.checkpoint import regulated_grad_transform, save_gram

    theta = {"text_ctx": torch.zeros(4, 8)}
    for reg, form in [({"shape": "shared", "scale_invariant": True}, "scale-invariant"),
                      ({"shape": "diagonal", "gamma_init": 0.5, "weight_init_std": 0.0, "scale_invariant": False},
                       "literal")]:
        phi = init_regulator(theta, RegulatorConfig(reg["shape"], form=None, scale_invariant=reg["scale_invariant"]))
        path = save_gram(tmp_path / f"{form}.safetensors", theta, phi, {"regulator": reg})
        assert regulated_grad_transform(path).keywords["regulator"].form_name == form
    literal = init_regulator(theta, RegulatorConfig(form="literal"))
    path = save_gram(tmp_path / "mismatch.safetensors", theta, literal, {"regulator": {"form": "bounded"}})
    with pytest.raises(GramError, match="b_gate"):
        regulated_grad_transform(path)
    path = save_gram(tmp_path / "future.safetensors", theta, literal, {"regulator": {"form": "clipped"}})
    with pytest.raises(GramError, match="unreadable regulator settings"):
        regulated_grad_transform(path)
