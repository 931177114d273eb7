"""Zero-shot CLIP: hand-crafted prompts, nothing learned."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Batch, PromptMethod


class ZeroShot(PromptMethod):
    name = "zeroshot"
    groups: dict[str, str] = {}

    def init_params(self, generator: torch.Generator) -> dict[str, Tensor]:
        return {}

    def logits(self, params: dict[str, Tensor], batch: Batch, classnames: list[str]) -> Tensor:
        return self._scores(self._image_features(batch), self.text.template_features(classnames, self.template))
