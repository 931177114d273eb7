"""One finite-check for prompt tuning and meta-training.

A NaN or infinite parameter must never reach a saved file or a reported accuracy: argmax of NaN
logits is class 0, which scores like a real (bad) model. Tuning and meta-training check their
parameters after every update and after loading, and say so when most of their steps were skipped.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from .errors import NonFiniteError


def nonfinite(tensors: Mapping[str, Tensor]) -> list[str]:
    """Names of the tensors holding a NaN or an infinity."""
    return [k for k, v in tensors.items() if not bool(torch.isfinite(v).all())]


def check_finite(tensors: Mapping[str, Tensor], where: str) -> None:
    """Raise :class:`NonFiniteError` naming the non-finite tensors and ``where`` they were found."""
    bad = nonfinite(tensors)
    if bad:
        raise NonFiniteError(f"{where}: {', '.join(bad)} holds NaN or infinite values")


def check_rate(name: str, value: float) -> None:
    """Learning rates and step sizes must be finite and >= 0 (a NaN rate makes every parameter NaN; 0
    freezes a parameter group, e.g. theta while only phi learns)."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise NonFiniteError(f"{name} must be a finite number >= 0, got {value!r}")


def check_skipped(skipped: int, total: int, limit: float, what: str, hint: str) -> None:
    """Fail when more than ``limit`` (a fraction) of ``total`` steps were skipped as non-finite: the
    result would come from a handful of updates, or none, while looking like a normal run."""
    if total and skipped > limit * total:
        raise NonFiniteError(f"{what}: {skipped} of {total} steps had a non-finite loss or gradient and were "
                             f"skipped (more than {limit:.0%}); no result was written. {hint}")
