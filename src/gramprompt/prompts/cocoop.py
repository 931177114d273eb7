"""CoCoOp (Zhou et al., CVPR 2022): CoOp's context plus an image-conditioned bias from a small meta-net.

meta-net: Linear(D, D // 16) -> ReLU -> Linear(D // 16, d) on the normalized image feature; its
output is added to every context vector, so each image gets its own prompts (B * C text sequences).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Batch, PromptMethod, plain_objective


def _linear_init(fan_in: int, fan_out: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """PyTorch's nn.Linear default init (uniform in +-1/sqrt(fan_in)), from our generator."""
    bound = 1.0 / math.sqrt(fan_in)
    w = (torch.rand((fan_out, fan_in), generator=generator) * 2 - 1) * bound
    b = (torch.rand((fan_out,), generator=generator) * 2 - 1) * bound
    return w, b


def meta_net(params: dict[str, Tensor], image_features: Tensor) -> Tensor:
    """(B, D) image features -> (B, d) context bias."""
    x = F.normalize(image_features.float(), dim=-1)
    h = F.relu(F.linear(x, params["meta_w1"], params["meta_b1"]))
    return F.linear(h, params["meta_w2"], params["meta_b2"])


class CoCoOp(PromptMethod):
    name = "cocoop"
    text_per_image = True
    groups = {"text_ctx": "text", "meta_w1": "meta_net", "meta_b1": "meta_net",
              "meta_w2": "meta_net", "meta_b2": "meta_net"}

    def init_params(self, generator: torch.Generator) -> dict[str, Tensor]:
        bb = self.backbone
        hidden = max(bb.embed_dim // 16, 1)
        w1, b1 = _linear_init(bb.embed_dim, hidden, generator)
        w2, b2 = _linear_init(hidden, bb.text_width, generator)
        params = {"text_ctx": self._text_ctx_init(generator), "meta_w1": w1, "meta_b1": b1, "meta_w2": w2, "meta_b2": b2}
        return {k: v.to(bb.device) for k, v in params.items()}

    def logits(self, params: dict[str, Tensor], batch: Batch, classnames: list[str]) -> Tensor:
        img = self._image_features(batch)
        return self._scores(img, self._context_text_features(self.contexts(params, img), classnames))

    @staticmethod
    def contexts(params: dict[str, Tensor], image_features: Tensor) -> Tensor:
        """Each image's context (B, M, d): the learned one plus the meta-net's bias for that image."""
        return params["text_ctx"][None] + meta_net(params, image_features)[:, None]


def cocoop_like(method: PromptMethod | type[PromptMethod]) -> bool:
    """True for CoCoOp and subclasses that keep its ``logits`` (frozen image features, per-image contexts):
    the contexts of several runs' images can share one text-encoder forward. Takes a method or its class."""
    cls = method if isinstance(method, type) else type(method)
    return issubclass(cls, CoCoOp) and cls.logits is CoCoOp.logits and not cls.uses_pixels and plain_objective(cls)
