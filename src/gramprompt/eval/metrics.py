"""Scalar metrics used to report few-shot runs: accuracy, harmonic mean, seed statistics."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray | Sequence[int]


def _as_tensor(x: ArrayLike) -> torch.Tensor:
    return x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def correct(logits_or_preds: ArrayLike, labels: ArrayLike) -> torch.Tensor:
    """Whether each prediction is right (bool, in order): what paired tests compare image by image.

    Accepts (N, C) logits, reduced with argmax over the last dim, or (N,) predicted labels.
    """
    scores, target = _as_tensor(logits_or_preds), _as_tensor(labels).reshape(-1)
    if scores.ndim == 2:
        preds = scores.argmax(dim=-1)
    elif scores.ndim == 1:
        preds = scores
    else:
        raise ValueError(f"expected (N, C) logits or (N,) predictions, got shape {tuple(scores.shape)}")
    if preds.shape[0] != target.shape[0]:
        raise ValueError(f"{preds.shape[0]} predictions but {target.shape[0]} labels")
    return preds.long() == target.long()


def accuracy_of(ok: torch.Tensor) -> float:
    """Accuracy in percent of a correctness vector (see :func:`correct`)."""
    if ok.numel() == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return 100.0 * ok.sum().item() / ok.numel()


def accuracy(logits_or_preds: ArrayLike, labels: ArrayLike) -> float:
    """Top-1 accuracy in percent (the unit the GRAM tables use); logits or predicted labels as :func:`correct`."""
    return accuracy_of(correct(logits_or_preds, labels))


def harmonic_mean(base: float, new: float) -> float:
    """H = 2·b·n / (b + n), the base-to-new trade-off score; 0 when both are 0."""
    total = base + new
    return 0.0 if total == 0 else 2.0 * base * new / total


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and *sample* standard deviation (ddof=1) over seeds.

    Sample std is the unbiased-variance estimate appropriate for a handful of seeds drawn
    from a larger population of possible seeds; a single value has no spread, so std is 0.
    """
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_std of no values")
    mean = math.fsum(xs) / len(xs)
    if len(xs) == 1:
        return mean, 0.0
    var = math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    return mean, math.sqrt(var)
