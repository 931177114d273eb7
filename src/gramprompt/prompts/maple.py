"""MaPLe (Khattak et al., CVPR 2023): coupled text and vision prompts in the first J layers of both towers.

The text side is :mod:`.deep`'s (M = 2 from "a photo of a" officially). The vision side is coupled to it, as
in the official ``trainers/maple.py`` and ``ResidualAttentionBlock_MaPLe``: layer 0's M prompts are
``proj(ctx)`` (a learned text->vision linear map), layer i's are ``proj_i(deep_text[i-1])``; the J-1 deep
projections start as copies of one initialized linear layer. Linear layers start as ``torch.nn.Linear`` does
(uniform in +-1/sqrt(fan_in)), drawn from the run's generator. Official runs use fp16 towers; the arithmetic
here is the backbone's dtype.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Batch
from .deep import DeepPrompts


class MaPLe(DeepPrompts):
    name = "maple"
    groups = {"text_ctx": "text", "deep_text": "text", "proj_w": "coupling", "proj_b": "coupling",
              "deep_proj_w": "coupling", "deep_proj_b": "coupling"}

    def init_params(self, generator: torch.Generator) -> dict[str, Tensor]:
        bb, j = self.backbone, self.depth
        ctx = self._phrase_ctx_init(generator)
        deep_text = self._deep_text_init(generator)
        proj_w, proj_b = self._linear(bb.text_width, bb.vision_width, generator)
        deep_w, deep_b = self._linear(bb.text_width, bb.vision_width, generator)  # one layer, cloned J-1 times
        return {"text_ctx": ctx, "deep_text": deep_text, "proj_w": proj_w, "proj_b": proj_b,
                "deep_proj_w": deep_w.expand(j - 1, -1, -1).clone(), "deep_proj_b": deep_b.expand(j - 1, -1).clone()}

    def _linear(self, fan_in: int, fan_out: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """nn.Linear's default initialization: weight and bias uniform in +-1/sqrt(fan_in)."""
        bound = 1.0 / math.sqrt(fan_in)
        w = (torch.rand((fan_out, fan_in), generator=generator) * 2 - 1) * bound
        b = (torch.rand((fan_out,), generator=generator) * 2 - 1) * bound
        return w.to(self.backbone.device), b.to(self.backbone.device)

    def visual_prompts(self, params: dict[str, Tensor]) -> Tensor:
        """(J, M, d_v): layer 0's from the shared context, the deeper ones from their own text prompts."""
        first = params["text_ctx"] @ params["proj_w"].t() + params["proj_b"]
        deep = torch.einsum("jmd,jvd->jmv", params["deep_text"], params["deep_proj_w"]) + params["deep_proj_b"][:, None]
        return torch.cat([first[None], deep])

    def logits(self, params: dict[str, Tensor], batch: Batch, classnames: list[str]) -> Tensor:
        image = self._image_features(batch, self.visual_prompts(params))
        return self._scores(image, self.text_features(params, classnames))
