"""The gradient regulating function R_phi (paper Sec. 3.3), one per prompt parameter tensor.

    gamma = tanh(W_gamma g + b_gamma),  beta = tanh(W_beta g + b_beta),  g_hat = gamma * g + beta

Shapes of W (DESIGN section 1; the paper writes W in R^{d x d} for g in R^{d x M}):

* ``shared``   W in R^{d x d} acts on the last (embedding) axis, shared by the M tokens (and by the
               layers of a deep visual prompt); b in R^d. The literal reading, and the default.
* ``diagonal`` W and b have g's shape and act elementwise: gamma_i = tanh(w_i g_i + b_i).
* ``full``     W in R^{n x n} on the flattened gradient (n = numel); only for small prompts.

Initialization (tested): W = 0, b_gamma = atanh(gamma_init), b_beta = 0, so R_phi starts as
g_hat = gamma_init * g whatever g is: a plain (slightly damped) SGD step that meta-training then
reshapes. gamma_init = 1 cannot be reached by tanh; 0.96 (b = 2) keeps tanh out of saturation
so b_gamma still learns.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

SHAPES = ("shared", "diagonal", "full")
FULL_MAX_NUMEL = 8192  # a full W is numel^2 parameters: 8192 -> 67M per W


@dataclass
class RegulatorConfig:
    shape: str = "shared"
    gamma_init: float = math.tanh(2.0)  # ~0.964
    weight_init_std: float = 0.0  # > 0 breaks the g-independence of the start (ablations)
    # Departure from the paper (off by default): feed g / rms(g) to the affine maps and scale beta
    # by rms(g), so R(c g) = c R(g). Prompt gradients are ~1e-2, where W g barely moves tanh and a
    # beta of 0.1 swamps g; this makes R_phi independent of the loss scale and learning rate.
    scale_invariant: bool = False

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"regulator shape must be one of {SHAPES}, got {self.shape!r}")
        if not 0.0 < self.gamma_init < 1.0:
            raise ValueError(f"gamma_init must be in (0, 1) (tanh's range), got {self.gamma_init}")


def _weight_shape(shape: str, p: Tensor) -> tuple[int, ...]:
    if shape == "shared":
        return (p.shape[-1], p.shape[-1])
    if shape == "diagonal":
        return tuple(p.shape)
    if p.numel() > FULL_MAX_NUMEL:
        raise ValueError(f"a full regulator on {p.numel()} prompt values needs a {p.numel()}^2 matrix; "
                         f"use shape 'shared' or 'diagonal' (full allows numel <= {FULL_MAX_NUMEL})")
    return (p.numel(), p.numel())


def _bias_shape(shape: str, p: Tensor) -> tuple[int, ...]:
    return {"shared": (p.shape[-1],), "diagonal": tuple(p.shape), "full": (p.numel(),)}[shape]


def init_regulator(params: dict[str, Tensor], cfg: RegulatorConfig | None = None,
                   generator: torch.Generator | None = None, names: list[str] | None = None) -> dict[str, Tensor]:
    """phi for the prompt tensors ``names`` (default all): ``NAME.w_gamma``, ``NAME.b_gamma``,
    ``NAME.w_beta``, ``NAME.b_beta``, fp32 on the prompts' device."""
    cfg = cfg or RegulatorConfig()
    phi = {}
    for name in names if names is not None else list(params):
        p = params[name]
        ws, bs = _weight_shape(cfg.shape, p), _bias_shape(cfg.shape, p)
        for kind in ("gamma", "beta"):
            w = torch.zeros(ws, dtype=torch.float32)
            if cfg.weight_init_std > 0:
                w = torch.randn(ws, generator=generator, dtype=torch.float32) * cfg.weight_init_std
            b = torch.full(bs, math.atanh(cfg.gamma_init) if kind == "gamma" else 0.0, dtype=torch.float32)
            phi[f"{name}.w_{kind}"] = w.to(p.device)
            phi[f"{name}.b_{kind}"] = b.to(p.device)
    return phi


def _affine(w: Tensor, b: Tensor, g: Tensor, shape: str) -> Tensor:
    if shape == "shared":
        return g @ w.T + b
    if shape == "diagonal":
        return w * g + b
    return (w @ g.reshape(-1) + b).reshape(g.shape)


def regulate_one(phi: dict[str, Tensor], name: str, g: Tensor, shape: str, scale_invariant: bool = False) -> Tensor:
    """g_hat = gamma * g + beta for one prompt tensor's gradient ``g``."""
    scale = g.pow(2).mean().sqrt() + 1e-12 if scale_invariant else None
    x = g / scale if scale_invariant else g
    gamma = torch.tanh(_affine(phi[f"{name}.w_gamma"], phi[f"{name}.b_gamma"], x, shape))
    beta = torch.tanh(_affine(phi[f"{name}.w_beta"], phi[f"{name}.b_beta"], x, shape))
    return gamma * g + (beta * scale if scale_invariant else beta)


def regulate(phi: dict[str, Tensor], grads: dict[str, Tensor], shape: str,
             scale_invariant: bool = False) -> dict[str, Tensor]:
    """R_phi applied to every gradient that has a regulator in ``phi``; the others pass unchanged."""
    return {name: regulate_one(phi, name, g, shape, scale_invariant) if f"{name}.w_gamma" in phi else g
            for name, g in grads.items()}
