"""PromptSRC (Khattak et al., ICCV 2023): deep independent text and vision prompts (IVLP), self-regulated.

Prompts are :mod:`.deep`'s: M_t = 4 text vectors from "a photo of a" with their own vectors in text layers 1..J-1,
and J sets of M_v = 4 vision prompt tokens, N(0, 0.02) (the official IVLP blocks). The objective of the official
``trainers/promptsrc.py``::

    CE(logits) + KL(zero-shot || prompted logits, summed, / (B * C))
               + 25 * L1(text features, frozen prompt-ensemble text features)
               + 10 * L1(image features, frozen image features)

with every feature normalized, the zero-shot logits from the frozen image features and the mean of the frozen
text features over the 60 ensemble templates (``templates.ENSEMBLE_TEMPLATES``), both at CLIP's logit scale. Its
Gaussian prompt aggregation over epochs is the tuner's ``TuneConfig.gpa`` (``tuning.gpa``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Batch
from .deep import DeepPrompts
from .templates import ENSEMBLE_TEMPLATES


class PromptSRC(DeepPrompts):
    name = "promptsrc"
    groups = {"text_ctx": "text", "deep_text": "text", "visual_ctx": "visual"}

    def init_params(self, generator: torch.Generator) -> dict[str, Tensor]:
        visual = self._normal((self.depth, self.config.visual_tokens, self.backbone.vision_width), generator)
        return {"text_ctx": self._phrase_ctx_init(generator), "deep_text": self._deep_text_init(generator),
                "visual_ctx": visual}

    def logits(self, params: dict[str, Tensor], batch: Batch, classnames: list[str]) -> Tensor:
        return self._scores(self._image_features(batch, params["visual_ctx"]), self.text_features(params, classnames))

    def loss(self, params: dict[str, Tensor], batch: Batch, classnames: list[str], labels: Tensor) -> tuple[Tensor, Tensor]:
        image = F.normalize(self._image_features(batch, params["visual_ctx"]).float(), dim=-1)
        text = F.normalize(self.text_features(params, classnames).float(), dim=-1)
        scale = self.backbone.logit_scale().float()
        logits = scale * image @ text.t()
        with torch.no_grad():
            frozen_image = F.normalize(self._image_features(batch).float(), dim=-1)
            frozen_text = self.text.ensemble_features(classnames, ENSEMBLE_TEMPLATES)
            zero_shot = scale * frozen_image @ frozen_text.t()
        kl = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(zero_shot, -1), reduction="sum",
                      log_target=True) / logits.numel()
        cfg = self.config
        consistency = (cfg.text_consistency * F.l1_loss(text, frozen_text)
                       + cfg.image_consistency * F.l1_loss(image, frozen_image))
        return F.cross_entropy(logits, labels) + kl + consistency, logits
