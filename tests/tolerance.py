"""Tolerances for comparing two float32 computations of the same quantity, derived from float32
arithmetic and the computation instead of from one machine's observed difference.

Error model (standard rounding-error analysis; Higham, *Accuracy and Stability of Numerical
Algorithms*, 2nd ed., sections 2.8, 3.1 and 4.2):

* float32 has unit roundoff ``u = EPS32 / 2 = 2**-24``; one operation (an add, a multiply, or an
  elementwise ``exp``/``tanh`` of a vectorized math library, which is accurate to about an ulp)
  errs by about ``u`` relative to its result.
* A sum or dot product of ``n`` terms, in any order, errs by at most ``(n - 1) u sum|x_i|``. That
  worst case needs every rounding error to have the same sign; they are in practice independent
  and of either sign, so the error grows like ``sqrt(n) u`` rather than ``n u`` (Higham's rule of
  thumb, sec. 2.8), and blocked or pairwise summation, which BLAS kernels use, only lowers it.
* Two computations that differ only in reduction order (kernel blocking, vector width, thread
  count, a batched forward vs a per-item loop, a truncated vs full sequence) each have such an
  error, so they differ by up to twice it: ``2 u = EPS32`` per reduction. Against an exact (or
  float64) reference only the float32 side errs: half that.
* A computation that chains ``depth`` reductions (layers; a backward pass repeats its forward's
  depth) passes each stage's error on through the later stages. If no stage amplifies errors by
  more than the magnitude ``scale`` of the values (LayerNorm renormalizes, softmax and tanh are
  1-Lipschitz, the inputs are O(1)), the errors add: the worst case is linear in ``depth``,
  which is what we take, not ``sqrt(depth)``.

So ``|a - b| <= EPS32 * sqrt(terms) * depth * scale``, where ``terms`` is the longest reduction
(e.g. the MLP width 4 d of a transformer block) and ``scale`` the magnitude of the values. Use a
tensor's largest entry, or a known bound (CLIP logits are ``logit_scale * cos``, so their scale is
``logit_scale``), not each entry: an entry that is small by cancellation still carries the
rounding of terms as large as the tensor's largest, so elementwise relative tolerances are wrong
and only an absolute tolerance at the tensor's scale is justified.

Checked when this was introduced (issue 13): with 1 and 2 threads and ``ATEN_CPU_CAPABILITY``
``default`` and ``avx2``, every difference in the tests that use it stayed at or below 0.18 of
this bound (the 2.66e-6 of the issue's failure, at 2 threads: 0.07), while changing one task's
inner step in the batched meta-step by 0.1% exceeds it; real mistakes (a wrong task, a dropped
term, a misplaced token) change values by O(scale).
"""
from __future__ import annotations

import math

import numpy as np
import torch

EPS32 = float(torch.finfo(torch.float32).eps)  # 2**-23 = 2 u

# chained reductions in one pass (forward, or backward) of a pre-LN transformer block: LayerNorm
# (mean, then variance: 2), QKV projection, q.k scores, softmax's sum, attention-weighted sum of v,
# output projection, LayerNorm (2), MLP up, MLP down
BLOCK_DEPTH = 11


def transformer_depth(layers: int, head: int = 3) -> int:
    """Chained reductions in one pass of a ``layers``-block encoder plus ``head`` more (by default
    the final LayerNorm's 2 and a projection or pooling)."""
    return BLOCK_DEPTH * layers + head


def fp32_tol(scale: float, *, terms: int, depth: int, reference_exact: bool = False) -> float:
    """Absolute tolerance for two float32 computations of one quantity of magnitude ``scale`` that
    chain ``depth`` reductions of at most ``terms`` terms (``reference_exact``: the reference is
    exact or float64, so only one side rounds). See the module docstring for the error model."""
    if terms < 1 or depth < 1 or not scale > 0:
        raise ValueError(f"need terms >= 1, depth >= 1, scale > 0; got {terms}, {depth}, {scale}")
    return (0.5 if reference_exact else 1.0) * EPS32 * math.sqrt(terms) * depth * float(scale)


def _f64(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double()
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def assert_fp32_close(actual, expected, *, terms: int, depth: int, scale: float | None = None,
                      reference_exact: bool = False, msg: str = "") -> None:
    """``|actual - expected| <= fp32_tol(scale, ...)`` elementwise; ``scale`` defaults to the
    largest ``|expected|``. Accepts tensors, arrays and floats."""
    a, e = _f64(actual), _f64(expected)
    assert a.shape == e.shape, f"{msg} shapes differ: {tuple(a.shape)} vs {tuple(e.shape)}"
    scale = float(e.abs().max()) if scale is None else float(scale)
    tol = fp32_tol(scale, terms=terms, depth=depth, reference_exact=reference_exact)
    diff = float((a - e).abs().max()) if a.numel() else 0.0
    assert diff <= tol, (f"{msg} max |difference| {diff:.3g} > {tol:.3g} = EPS32 * sqrt({terms}) * {depth} * "
                         f"{scale:.3g}{' / 2' if reference_exact else ''} (ratio {diff / tol:.2f})")


def hf_clip_tower(backbone, tower: str = "text", extra_depth: int = 0) -> dict:
    """``terms`` and ``depth`` of one forward pass of an HF CLIP backbone's ``text`` or ``vision``
    tower (plus ``extra_depth``): the MLP's inner width, the blocks and the head; the vision tower
    adds its patch embedding (a conv over 3 p^2 inputs) and its pre-LayerNorm."""
    cfg = getattr(backbone.model.config, f"{tower}_config")
    terms, depth = cfg.intermediate_size, transformer_depth(cfg.num_hidden_layers)
    if tower == "vision":
        terms, depth = max(terms, 3 * cfg.patch_size ** 2), depth + 3
    return dict(terms=terms, depth=depth + extra_depth)


def clip_logits(backbone, towers: tuple[str, ...] = ("text",), extra_depth: int = 0) -> dict:
    """``terms``, ``depth`` and ``scale`` of CLIP logits ``logit_scale * cos`` recomputed through
    ``towers``: the deepest tower, then the features' norms and the dot products (2 more). The
    scale is ``logit_scale``, not the logits' size: a cosine is rounded relative to 1."""
    passes = [hf_clip_tower(backbone, t) for t in towers]
    return dict(terms=max(p["terms"] for p in passes), depth=max(p["depth"] for p in passes) + 2 + extra_depth,
                scale=float(backbone.logit_scale()))


def meta_gradient(backbone, steps: int = 1, second_order: bool = False) -> dict:
    """``terms`` and ``depth`` behind a GRAM meta-step on an HF CLIP's text tower (CoOp): one pass
    is the tower, the features' norms, the logits' dot products, the cross-entropy and the task
    mean; every inner step and the query loss run a pass forward and backward, the second order
    differentiates the inner backward passes once more, and every inner step adds R_phi's affine
    map. The meta-loss and the logged statistics are computed along the way: it bounds them too."""
    one = hf_clip_tower(backbone, "text", extra_depth=4)
    passes = 2 * steps + 2 + (2 * steps if second_order else 0)
    return dict(terms=one["terms"], depth=passes * one["depth"] + steps)
