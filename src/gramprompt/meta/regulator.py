"""The gradient regulating function R_phi (paper Sec. 3.3), one per prompt parameter tensor.

Forms (``RegulatorConfig.form``), with gamma(x) = tanh(W_gamma x + b_gamma), beta(x) = tanh(W_beta x + b_beta):

* ``literal``          the paper's formula: g_hat = gamma(g) * g + beta(g).
* ``scale-invariant``  the affine maps see x = g / rms(g), beta is scaled by rms(g):
                       g_hat = gamma(x) * g + beta(x) * rms(g), so R(c g) = c R(g) for c > 0.
* ``bounded``          the scale-invariant map's direction at the raw gradient's length, mixed with
                       the raw gradient by a learned gate:
                           h = gamma(x) * x + beta(x),  u = h * ||g|| / ||h||,
                           a = (1 + sigmoid(b_gate)) / 2 in (1/2, 1),  g_hat = a g + (1 - a) u
                       (0/0 := 0 in both divisions, so R(0) = 0 with finite gradients).

Why ``bounded`` cannot drift over the 5,000-160,000 batch-1 steps of test-time tuning, which
meta-training (one or a few inner steps) never sees (DESIGN "The regulator at long horizons"):

* R(0) = 0. The literal beta is close to the constant tanh(b_beta) for prompt gradients of ~1e-2,
  so it is a push added at every step, also where the loss is flat: at lr 0.002 and momentum 0.9,
  ~0.02 beta per step, ~50 over 80,000 steps at |beta| = 0.03, against prompt coordinates of ~0.02.
  With R(0) = 0 the stationary points of plain SGD stay fixed points of the regulated update.
* ||g_hat|| <= ||g||: ||u|| = ||g||, and g_hat is a convex combination of g and u. No step is longer
  than plain SGD's at the same learning rate, whatever phi* learned, so the tuned prompt moves from
  theta* no further than plain SGD's path length allows.
* <g_hat, g> >= (2a - 1) ||g||^2 > 0 because a > 1/2: every regulated step is a descent direction
  of the batch loss. The regulator can turn the gradient (by less than 90 degrees), never against
  it, so a long run still decreases the training loss instead of wandering.
* R(c g) = c R(g) for c > 0: the map does not depend on the loss scale, the learning rate or how
  far tuning has gone (gradients shrink as the loss falls), so what phi* learned on meta-training's
  gradients applies unchanged to test time's.

Shapes of W (DESIGN section 1; the paper writes W in R^{d x d} for g in R^{d x M}):

* ``shared``   W in R^{d x d} acts on the last (embedding) axis, shared by the M tokens (and by the
               layers of a deep visual prompt); b in R^d. The literal reading, and the default.
* ``diagonal`` W and b have g's shape and act elementwise: gamma_i = tanh(w_i g_i + b_i).
* ``full``     W in R^{n x n} on the flattened gradient (n = numel); only for small prompts.

Initialization (tested): W = 0, b_gamma = atanh(gamma_init), b_beta = 0, so the literal and
scale-invariant forms start as g_hat = gamma_init * g whatever g is: a plain (slightly damped) SGD
step that meta-training then reshapes. gamma_init = 1 cannot be reached by tanh; 0.96 (b = 2) keeps
tanh out of saturation so b_gamma still learns. The bounded form starts as exactly g_hat = g (h is
parallel to g, so u = g); its gate starts at ``GATE_INIT`` = 0.75 (the regulated direction gets a
quarter of the weight, enough for W to receive a gradient).

Backward compatibility: configs, run folders and checkpoints made before ``form`` existed say
``scale_invariant: true/false``. That spelling stays the canonical one for those two forms
(``form`` is None after ``__post_init__``), so their settings compare equal to the new spelling.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

SHAPES = ("shared", "diagonal", "full")
FORMS = ("literal", "scale-invariant", "bounded")
LEGACY_FORMS = ("literal", "scale-invariant")  # spelled with ``scale_invariant`` (canonical)
# The default, chosen by measurement (README "How the settings were chosen"): at the library's default
# test-time schedule (batch 1, 10 epochs: 800-160,000 steps) only this form kept Base within a point of
# theta* alone in the long-horizon check; the literal form lost 39 points and drifted 15x as far.
DEFAULT_FORM = "bounded"
# what a stored regulator setting without ``form`` (written before forms existed) meant: the literal
# form, or the scale-invariant one with ``scale_invariant: true``; compare old settings against this
FORM_BEFORE_FORMS = None
# the bounded form's initial gate a (weight of the raw gradient): a module constant, not a setting, so
# run folders made before the bounded form existed still match their settings
GATE_INIT = 0.75
FULL_MAX_NUMEL = 8192  # a full W is numel^2 parameters: 8192 -> 67M per W


@dataclass
class RegulatorConfig:
    shape: str = "shared"
    # one of FORMS; None (how old settings spell it) means "literal", or "scale-invariant" with scale_invariant
    form: str | None = DEFAULT_FORM
    gamma_init: float = math.tanh(2.0)  # ~0.964
    weight_init_std: float = 0.0  # > 0 breaks the g-independence of the start (ablations)
    # the pre-``form`` spelling of form "scale-invariant" (a departure from the paper: prompt gradients
    # are ~1e-2, where W g barely moves tanh and a beta of 0.1 swamps g); kept canonical for that form,
    # and it selects that form over the default one (so old configs saying only this still read)
    scale_invariant: bool = False

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"regulator shape must be one of {SHAPES}, got {self.shape!r}")
        if self.form is not None and self.form not in FORMS:
            raise ValueError(f"regulator form must be one of {FORMS}, got {self.form!r}")
        if self.scale_invariant and self.form == DEFAULT_FORM:
            self.form = None  # the old spelling, read before forms existed: the scale-invariant form
        if self.scale_invariant and self.form not in (None, "scale-invariant"):
            raise ValueError(f"regulator form {self.form!r} contradicts scale_invariant: true "
                             "(the old spelling of form 'scale-invariant'); give one of them")
        if not 0.0 < self.gamma_init < 1.0:
            raise ValueError(f"gamma_init must be in (0, 1) (tanh's range), got {self.gamma_init}")
        if self.form in LEGACY_FORMS:
            self.scale_invariant, self.form = self.form == "scale-invariant", None

    @property
    def form_name(self) -> str:
        """The form in effect, whichever way it was spelled."""
        return self.form or ("scale-invariant" if self.scale_invariant else "literal")

    def metadata(self) -> dict:
        """The settings with the form named explicitly (for checkpoints; reads back with ``cls(**...)``)."""
        return {**asdict(self), "form": self.form_name}


def as_regulator(regulator: RegulatorConfig | str) -> RegulatorConfig:
    """A RegulatorConfig; a shape name alone means that shape in the default form."""
    return regulator if isinstance(regulator, RegulatorConfig) else RegulatorConfig(regulator)


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
    ``NAME.w_beta``, ``NAME.b_beta`` (and the bounded form's scalar ``NAME.b_gate``), fp32 on the
    prompts' device."""
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
        if cfg.form_name == "bounded":  # a = (1 + sigmoid(b)) / 2 = GATE_INIT
            q = 2.0 * GATE_INIT - 1.0
            phi[f"{name}.b_gate"] = torch.tensor(math.log(q / (1.0 - q)), dtype=torch.float32, device=p.device)
    return phi


def check_phi(phi: dict[str, Tensor], cfg: RegulatorConfig, where: str) -> None:
    """Every regulated tensor of ``phi`` has the parameters ``cfg``'s form needs (a checkpoint's
    metadata and tensors must agree)."""
    need = ("w_gamma", "b_gamma", "w_beta", "b_beta") + (("b_gate",) if cfg.form_name == "bounded" else ())
    for name in sorted({k.rsplit(".", 1)[0] for k in phi}):
        missing = [p for p in need if f"{name}.{p}" not in phi]
        if missing:
            raise ValueError(f"{where}: the {cfg.form_name} regulator of {name!r} lacks {missing}")


def _affine(w: Tensor, b: Tensor, g: Tensor, shape: str) -> Tensor:
    if shape == "shared":
        return g @ w.T + b
    if shape == "diagonal":
        return w * g + b
    return (w @ g.reshape(-1) + b).reshape(g.shape)


def _gamma_beta(phi: dict[str, Tensor], name: str, x: Tensor, shape: str) -> tuple[Tensor, Tensor]:
    return (torch.tanh(_affine(phi[f"{name}.w_gamma"], phi[f"{name}.b_gamma"], x, shape)),
            torch.tanh(_affine(phi[f"{name}.w_beta"], phi[f"{name}.b_beta"], x, shape)))


def _rms(t: Tensor) -> Tensor:
    """sqrt(mean(t^2)), with gradient 0 instead of NaN at t = 0 (sqrt's derivative is infinite there)."""
    ms = t.pow(2).mean()
    positive = ms > 0
    return torch.where(positive, torch.where(positive, ms, 1.0).sqrt(), 0.0)


def _div(num: Tensor, den: Tensor) -> Tensor:
    """num / den for den >= 0, with 0/0 := 0 and finite gradients at den = 0."""
    positive = den > 0
    return num / torch.where(positive, den, 1.0) * positive


def regulate_one(phi: dict[str, Tensor], name: str, g: Tensor, regulator: RegulatorConfig | str) -> Tensor:
    """g_hat = R_phi(g) for one prompt tensor's gradient ``g`` (formulas: module docstring)."""
    cfg = as_regulator(regulator)
    form = cfg.form_name
    if form == "literal":
        gamma, beta = _gamma_beta(phi, name, g, cfg.shape)
        return gamma * g + beta
    if form == "scale-invariant":  # + 1e-12: the operations of the pre-``form`` code, bit for bit
        scale = _rms(g) + 1e-12
        gamma, beta = _gamma_beta(phi, name, g / scale, cfg.shape)
        return gamma * g + beta * scale
    rms = _rms(g)
    x = _div(g, rms)  # exactly scale-free: R(2^k g) = 2^k R(g) bit for bit
    gamma, beta = _gamma_beta(phi, name, x, cfg.shape)
    h = gamma * x + beta
    u = h * _div(rms, _rms(h))  # ||u|| = ||g||
    a = 0.5 * (1.0 + torch.sigmoid(phi[f"{name}.b_gate"]))
    return a * g + (1.0 - a) * u


def regulate(phi: dict[str, Tensor], grads: dict[str, Tensor], regulator: RegulatorConfig | str) -> dict[str, Tensor]:
    """R_phi applied to every gradient that has a regulator in ``phi``; the others pass unchanged."""
    cfg = as_regulator(regulator)
    return {name: regulate_one(phi, name, g, cfg) if f"{name}.w_gamma" in phi else g
            for name, g in grads.items()}
