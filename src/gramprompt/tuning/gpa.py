"""Gaussian prompt aggregation (PromptSRC): the returned prompts are a weighted mean of each epoch's, the weight of
epoch e (1-based) proportional to the normal density N(e; mean, std), normalized over the epochs.

The official trainer averages its whole state dict (the frozen towers too, whose average is themselves); here only
the prompt parameters are averaged, which is the same model. Official settings: mean 15, std 1 over 20 epochs
(base-to-new), mean 6, std 10 (cross-dataset).
"""
from __future__ import annotations

import math

from torch import Tensor


def gpa_weights(epochs: int, mean: float, std: float) -> list[float]:
    """The weight of each of ``epochs`` epochs, summing to 1 (the density's constant cancels)."""
    if not std > 0:
        raise ValueError(f"the GPA std must be > 0, got {std}")
    logs = [-0.5 * ((e - mean) / std) ** 2 for e in range(1, epochs + 1)]
    top = max(logs)  # in log space: a mean far from every epoch must not underflow to 0 / 0
    dens = [math.exp(v - top) for v in logs]
    total = sum(dens)
    return [d / total for d in dens]


class EpochAverage:
    """Accumulates ``sum_e w_e * params_e`` as epochs end (detached copies)."""

    def __init__(self, epochs: int, mean: float, std: float):
        self.weights = gpa_weights(epochs, mean, std)
        self.total: dict[str, Tensor] | None = None

    def add(self, epoch: int, params: dict[str, Tensor]) -> None:
        """Epoch ``epoch`` (0-based) ended with ``params``."""
        w = self.weights[epoch]
        part = {k: v.detach() * w for k, v in params.items()}
        self.total = part if self.total is None else {k: self.total[k] + part[k] for k in part}

    def result(self) -> dict[str, Tensor]:
        if self.total is None:
            raise ValueError("no epoch was averaged")
        return {k: v.clone() for k, v in self.total.items()}
