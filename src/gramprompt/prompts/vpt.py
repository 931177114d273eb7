"""VPT (Jia et al., ECCV 2022) for CLIP's image encoder, hand-crafted prompts on the text side.

Shallow: M prompt tokens after the patch tokens at the input. Deep: a new set at every layer
(``visual_depth`` layers), replacing the previous layer's outputs in those slots.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Batch, PromptMethod, plain_objective
from .joint import Joint


class VPT(PromptMethod):
    name = "vpt"
    uses_pixels = True
    groups = {"visual_ctx": "visual"}
    deep = False

    def init_params(self, generator: torch.Generator) -> dict[str, Tensor]:
        return {"visual_ctx": self._visual_ctx_init(generator, self.deep)}

    def logits(self, params: dict[str, Tensor], batch: Batch, classnames: list[str]) -> Tensor:
        img = self._image_features(batch, params["visual_ctx"])
        return self._scores(img, self.text.template_features(classnames, self.template))


class VPTDeep(VPT):
    name = "vpt-deep"
    deep = True


def vpt_like(method: PromptMethod | type[PromptMethod]) -> bool:
    """True for VPT, VPT-deep and joint tuning (and subclasses that keep their ``logits``): one visual prompt set
    per run, and text features from the template (VPT) or from one context per run (joint), so several runs'
    images can share one image-tower forward with per-image prompts (the multi-run tuner). Takes a method or
    its class."""
    cls = method if isinstance(method, type) else type(method)
    return plain_objective(cls) and ((issubclass(cls, VPT) and cls.logits is VPT.logits)
                                     or (issubclass(cls, Joint) and cls.logits is Joint.logits))
