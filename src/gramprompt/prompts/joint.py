"""Joint textual + visual prompt tuning (the paper's Table 6 row 5; UNIGRAM's architecture).

CoOp context vectors in the text encoder and VPT tokens in the image encoder, trained together.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Batch, PromptMethod


class Joint(PromptMethod):
    name = "joint"
    uses_pixels = True
    groups = {"text_ctx": "text", "visual_ctx": "visual"}
    deep = False

    def init_params(self, generator: torch.Generator) -> dict[str, Tensor]:
        return {"text_ctx": self._text_ctx_init(generator), "visual_ctx": self._visual_ctx_init(generator, self.deep)}

    def logits(self, params: dict[str, Tensor], batch: Batch, classnames: list[str]) -> Tensor:
        img = self._image_features(batch, params["visual_ctx"])
        return self._scores(img, self._context_text_features(params["text_ctx"], classnames))
