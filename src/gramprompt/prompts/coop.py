"""CoOp (Zhou et al., IJCV 2022): M learned context vectors shared by all classes, class token at the end."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Batch, PromptMethod, plain_objective


class CoOp(PromptMethod):
    name = "coop"
    groups = {"text_ctx": "text"}

    def init_params(self, generator: torch.Generator) -> dict[str, Tensor]:
        return {"text_ctx": self._text_ctx_init(generator)}

    def logits(self, params: dict[str, Tensor], batch: Batch, classnames: list[str]) -> Tensor:
        return self._scores(self._image_features(batch), self._context_text_features(params["text_ctx"], classnames))


def coop_like(method: PromptMethod | type[PromptMethod]) -> bool:
    """True for CoOp and subclasses that keep its ``logits``: frozen image features scored against the text
    features of ``[SOS] text_ctx <name>. [EOT]``, trained on their cross-entropy alone (:func:`plain_objective`), so
    several contexts (tasks, runs) can share one text-encoder forward (the batched meta-step, the multi-run tuner).
    Takes a method or its class."""
    cls = method if isinstance(method, type) else type(method)
    return (issubclass(cls, CoOp) and cls.logits is CoOp.logits and not cls.uses_pixels and not cls.text_per_image
            and plain_objective(cls))
