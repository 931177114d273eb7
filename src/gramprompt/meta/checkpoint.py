"""GRAM checkpoints: theta* and phi* in one prompts file, usable as ``gram fewshot --init``.

Prompt tensors keep their method names (``text_ctx``, ``visual_ctx``), so any run can start from
theta* as from stored prompts; the regulator's tensors are stored as ``phi.<prompt>.<w|b>_<gamma|beta>``
and its shape in the metadata under ``"regulator"``.
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from torch import Tensor

from gramprompt.finite import check_finite
from gramprompt.meta.regulator import regulate
from gramprompt.runs import load_prompts, save_prompts

PHI = "phi."


def save_gram(path: str | os.PathLike, theta: dict[str, Tensor], phi: dict[str, Tensor], info: dict) -> Path:
    """``info`` should name the method, backbone, token counts and the regulator shape."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save_prompts(path, {**theta, **{PHI + k: v for k, v in phi.items()}}, info)


def load_gram(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Tensor], dict]:
    """(theta, phi, metadata); phi is empty for plain prompt files."""
    tensors, info = load_prompts(path)
    theta = {k: v for k, v in tensors.items() if not k.startswith(PHI)}
    phi = {k[len(PHI):]: v for k, v in tensors.items() if k.startswith(PHI)}
    return theta, phi, info


def regulated_grad_transform(path: str | os.PathLike, device=None):
    """The frozen R_phi* of a GRAM checkpoint as a ``train_prompts`` gradient transform, or None
    when the file holds no regulator."""
    _, phi, info = load_gram(path)
    if not phi:
        return None
    check_finite(phi, f"the regulator R_phi* in {path}")
    phi = {k: v.to(device) for k, v in phi.items()} if device is not None else phi
    reg = info.get("regulator") or {}
    return partial(regulate, phi, shape=reg.get("shape", "shared"),
                   scale_invariant=bool(reg.get("scale_invariant", False)))
