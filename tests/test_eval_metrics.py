import math

import numpy as np
import pytest
import torch

from gramprompt.eval.metrics import accuracy, harmonic_mean, mean_std

# GRAM paper (ICCV 2023), Table 1 "Average over 11 datasets" rows: (Base, New, H).
PAPER_TABLE1_AVERAGE = {
    "CLIP": (69.34, 74.22, 71.70),
    "CoCoOp": (80.47, 71.69, 75.83),
    "CoOp": (77.58, 73.11, 75.28),
    "CoOp+GRAM": (78.74, 74.93, 76.79),
    "VPT": (72.53, 72.34, 72.43),
    "VPT+GRAM": (74.04, 74.21, 74.12),
    "UNIGRAM": (80.34, 75.92, 78.07),
}


@pytest.mark.parametrize("method", list(PAPER_TABLE1_AVERAGE))
def test_harmonic_mean_reproduces_paper_table1(method):
    base, new, h = PAPER_TABLE1_AVERAGE[method]
    assert round(harmonic_mean(base, new), 2) == h


def test_harmonic_mean_edge_cases():
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(50.0, 0.0) == 0.0
    assert harmonic_mean(40.0, 40.0) == pytest.approx(40.0)


def test_accuracy_from_logits_and_preds():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [9.0, 0.0, 1.0]])
    labels = torch.tensor([0, 1, 1, 2])
    assert accuracy(logits, labels) == pytest.approx(50.0)
    assert accuracy(torch.tensor([0, 1, 1, 2]), labels) == pytest.approx(100.0)
    assert accuracy(np.array([0, 0, 0]), [0, 1, 2]) == pytest.approx(100.0 / 3)


def test_accuracy_rejects_bad_shapes():
    with pytest.raises(ValueError):
        accuracy(torch.zeros(3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError):
        accuracy(torch.zeros(2, 2, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError):
        accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


def test_mean_std_sample_std():
    # Hand-computed: mean 82, deviations -2,0,2 -> sum sq 8, /(3-1) = 4 -> std 2.
    assert mean_std([80.0, 82.0, 84.0]) == pytest.approx((82.0, 2.0))
    m, s = mean_std([1.0, 2.0])
    assert m == pytest.approx(1.5) and s == pytest.approx(math.sqrt(0.5))
    assert mean_std([71.3]) == (71.3, 0.0)
    with pytest.raises(ValueError):
        mean_std([])
