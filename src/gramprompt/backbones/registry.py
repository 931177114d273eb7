"""Backbone specs on the command line -> loaded frozen backbones."""
from __future__ import annotations

import torch

from .base import Backbone
from .hf_clip import BackboneError, HFCLIPBackbone

SPEC_FORMS = ("default", "default:v1", "default:v2", "default:WEIGHTS.safetensors", "hf:PATH_OR_HUB_ID")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEVICE_FORMS = ("cpu", "cuda", "cuda:N", "mps")


def _available(device: torch.device) -> str | None:
    """Why ``device`` cannot be used on this machine, or None when it can."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available here (no GPU, or a CPU-only torch build)"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"this machine has {torch.cuda.device_count()} CUDA device(s)"
    if device.type == "mps" and not torch.backends.mps.is_available():
        return "MPS (Apple GPU) is not available here"
    return None


def resolve_device(name: str | None) -> str:
    """``name``, or where it is unset the GPU when there is one: the commands must not fall back to CPU on a GPU machine.

    A name torch cannot parse, or a device this machine lacks, is a :class:`BackboneError` here, before any
    work, rather than a traceback from the first tensor moved there.
    """
    if not name:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None  # e.g. "gpu"
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise BackboneError(f"unknown device {name!r}; valid forms: {', '.join(DEVICE_FORMS)}")
    if (why := _available(device)) is not None:
        raise BackboneError(f"device {name!r} was requested but {why}; use --device cpu")
    return name


def backbone_name(spec: str) -> str:
    """The ``name`` the backbone loaded from ``spec`` will have (recorded in every run), without loading it:
    ``default`` -> ``default:v2`` (the newest shipped version), so runs made on another version go stale."""
    from .default.model import DEFAULT_VERSION

    return f"default:{DEFAULT_VERSION}" if spec == "default" else spec


def recorded_backbone(name: str) -> str:
    """The backbone a stored run or hierarchy names: before v2 existed they recorded the bare ``default``, v1."""
    return "default:v1" if name == "default" else backbone_name(name)


def load_backbone(spec: str, *, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> Backbone:
    """``default`` (offline, shipped), ``hf:openai/clip-vit-base-patch16`` (hub) or ``hf:/path/to/checkpoint``."""
    kind, _, rest = spec.partition(":")
    if kind == "hf" and rest:
        return HFCLIPBackbone.from_pretrained(rest, device=device, dtype=dtype)
    if kind == "default":
        from .default.model import DEFAULT_VERSION, VERSIONS, DefaultBackbone, weights_path

        path = weights_path(rest or DEFAULT_VERSION) if (rest or DEFAULT_VERSION) in VERSIONS else rest
        return DefaultBackbone.from_weights(path, device=device, dtype=dtype, name=backbone_name(spec))
    raise BackboneError(f"unknown backbone {spec!r}; valid forms: {', '.join(SPEC_FORMS)}")
