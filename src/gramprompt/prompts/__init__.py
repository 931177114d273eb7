"""Prompt methods: named parameter tensors + a pure ``logits(params, batch, classnames)``."""
from __future__ import annotations

from ..backbones.base import Backbone
from .base import Batch, PromptConfig, PromptMethod
from .cocoop import CoCoOp
from .coop import CoOp
from .joint import Joint
from .kgcoop import KgCoOp
from .maple import MaPLe
from .prograd import ProGrad
from .promptsrc import PromptSRC
from .templates import DEFAULT_TEMPLATE, template_for
from .vpt import VPT, VPTDeep
from .zeroshot import ZeroShot

METHODS: dict[str, type[PromptMethod]] = {m.name: m for m in (ZeroShot, CoOp, CoCoOp, VPT, VPTDeep, Joint, KgCoOp, ProGrad, MaPLe, PromptSRC)}


def build_method(name: str, backbone: Backbone, config: PromptConfig | None = None, *,
                 template: str = DEFAULT_TEMPLATE) -> PromptMethod:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    return METHODS[name](backbone, config, template=template)


__all__ = ["METHODS", "Batch", "PromptConfig", "PromptMethod", "build_method", "template_for"]
