"""Mixed precision for the forward passes of tuning and meta-training: bf16 autocast, fp32 parameters.

Under ``torch.autocast(bfloat16)`` the matmuls of the frozen towers run in bf16 (on a GPU about twice the fp32
rate) while the learned prompts, the regulator, the optimizer state and the loss reduction stay fp32: the
"fp32 master weights" of mixed-precision training, without a loss scale (bf16 has fp32's exponent range).
"""
from __future__ import annotations

import contextlib

import torch

AUTOCAST = {"none": None, "bf16": torch.bfloat16}


def check_autocast(name: str | None) -> None:
    """A clear error for an unknown precision name (None means "none": fp32)."""
    if name is not None and name not in AUTOCAST:
        raise ValueError(f"autocast must be one of {sorted(AUTOCAST)}, got {name!r}")


def autocast(device: torch.device, name: str | None) -> contextlib.AbstractContextManager:
    """The autocast context of ``name`` on ``device``'s type (a no-op for None and "none"); the configs check the
    name once (:func:`check_autocast`), so a training step only looks it up."""
    dtype = AUTOCAST[name or "none"]
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)
