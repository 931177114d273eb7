"""KgCoOp (Yao et al., CVPR 2023): CoOp whose learned class text features are kept close to the hand-crafted ones.

The objective is CE + lambda * (1 - mean over the batch's classes of cos(w_c, w_c^clip)), where w_c are the text
features of ``[SOS] ctx <name>. [EOT]`` and w_c^clip those of the dataset's hand-crafted template, both normalized
(the official ``trainers/kgcoop.py``: lambda is ``TRAINER.COOP.W``, 8.0 in its base-to-new runs). The forward, and
so inference, is CoOp's.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import Batch
from .coop import CoOp


class KgCoOp(CoOp):
    name = "kgcoop"

    def loss(self, params: dict[str, Tensor], batch: Batch, classnames: list[str], labels: Tensor) -> tuple[Tensor, Tensor]:
        text = self._context_text_features(params["text_ctx"], classnames)
        logits = self._scores(self._image_features(batch), text)
        return F.cross_entropy(logits, labels) + self.config.text_guidance * self.guidance(text, classnames), logits

    def guidance(self, text_features: Tensor, classnames: list[str]) -> Tensor:
        """1 - the mean cosine between the learned and the hand-crafted text features of ``classnames``."""
        frozen = self.text.template_features(classnames, self.template).float()
        learned = F.normalize(text_features.float(), dim=-1)
        return 1.0 - F.cosine_similarity(learned, F.normalize(frozen, dim=-1), dim=-1, eps=1e-7).mean()
