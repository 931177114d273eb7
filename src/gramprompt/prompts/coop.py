"""CoOp (Zhou et al., IJCV 2022): M learned context vectors shared by all classes, class token at the end."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Batch, PromptMethod


class CoOp(PromptMethod):
    name = "coop"
    groups = {"text_ctx": "text"}

    def init_params(self, generator: torch.Generator) -> dict[str, Tensor]:
        return {"text_ctx": self._text_ctx_init(generator)}

    def logits(self, params: dict[str, Tensor], batch: Batch, classnames: list[str]) -> Tensor:
        return self._scores(self._image_features(batch), self._context_text_features(params["text_ctx"], classnames))
