"""Backbone specs on the command line -> loaded frozen backbones."""
from __future__ import annotations

import torch

from .base import Backbone
from .hf_clip import BackboneError, HFCLIPBackbone

SPEC_FORMS = ("default", "default:WEIGHTS.safetensors", "hf:PATH_OR_HUB_ID")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def resolve_device(name: str | None) -> str:
    """``name``, or where it is unset the GPU when there is one: the commands must not fall back to CPU on a GPU machine."""
    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def backbone_name(spec: str) -> str:
    """The ``name`` the backbone loaded from ``spec`` will have (recorded in every run), without loading it."""
    return "default" if spec.partition(":")[0] == "default" else spec


def load_backbone(spec: str, *, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> Backbone:
    """``default`` (offline, shipped), ``hf:openai/clip-vit-base-patch16`` (hub) or ``hf:/path/to/checkpoint``."""
    kind, _, rest = spec.partition(":")
    if kind == "hf" and rest:
        return HFCLIPBackbone.from_pretrained(rest, device=device, dtype=dtype)
    if kind == "default":
        from .default.model import WEIGHTS, DefaultBackbone

        return DefaultBackbone.from_weights(rest or WEIGHTS, device=device, dtype=dtype)
    raise BackboneError(f"unknown backbone {spec!r}; valid forms: {', '.join(SPEC_FORMS)}")
