"""GRAM checkpoints: theta* and phi* in one prompts file, usable as ``gram fewshot --init``.

Prompt tensors keep their method names (``text_ctx``, ``visual_ctx``), so any run can start from
theta* as from stored prompts; the regulator's tensors are stored as ``phi.<prompt>.<w|b>_<gamma|beta>``
and its settings (shape, form; ``RegulatorConfig.metadata``) in the metadata under ``"regulator"``.
Checkpoints written before the form existed say ``{"shape": ..., "scale_invariant": ...}``; they
load as the form that flag names.
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from torch import Tensor

from gramprompt.errors import GramError
from gramprompt.finite import check_finite
from gramprompt.meta.regulator import FORM_BEFORE_FORMS, RegulatorConfig, check_phi, regulate
from gramprompt.runs import load_prompts, save_prompts

PHI = "phi."


def save_gram(path: str | os.PathLike, theta: dict[str, Tensor], phi: dict[str, Tensor], info: dict) -> Path:
    """``info`` should name the method, backbone, token counts and the regulator's settings."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save_prompts(path, {**theta, **{PHI + k: v for k, v in phi.items()}}, info)


def load_gram(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Tensor], dict]:
    """(theta, phi, metadata); phi is empty for plain prompt files."""
    tensors, info = load_prompts(path)
    theta = {k: v for k, v in tensors.items() if not k.startswith(PHI)}
    phi = {k[len(PHI):]: v for k, v in tensors.items() if k.startswith(PHI)}
    return theta, phi, info


def regulator_config(path: str | os.PathLike, info: dict) -> RegulatorConfig:
    """The RegulatorConfig recorded in a checkpoint's metadata (defaults for what an older file lacks)."""
    try:
        # a file written before forms existed has no "form": its form is the one it names by scale_invariant
        return RegulatorConfig(**{"form": FORM_BEFORE_FORMS, **(info.get("regulator") or {})})
    except (TypeError, ValueError) as err:
        raise GramError(f"{path}: unreadable regulator settings {info.get('regulator')!r} ({err})") from err


def regulated_grad_transform(path: str | os.PathLike, device=None):
    """The frozen R_phi* of a GRAM checkpoint as a ``train_prompts`` gradient transform, or None
    when the file holds no regulator."""
    _, phi, info = load_gram(path)
    if not phi:
        return None
    check_finite(phi, f"the regulator R_phi* in {path}")
    cfg = regulator_config(path, info)
    try:
        check_phi(phi, cfg, str(path))
    except ValueError as err:
        raise GramError(str(err)) from err
    phi = {k: v.to(device) for k, v in phi.items()} if device is not None else phi
    return partial(regulate, phi, regulator=cfg)
