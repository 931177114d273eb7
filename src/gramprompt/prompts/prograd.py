"""ProGrad (Zhu et al., ICCV 2023): CoOp updated only along directions that do not fight zero-shot CLIP.

Per parameter tensor, g_ce is the gradient of the cross-entropy and g_kd that of the distillation loss
T^2 * mean_b sum_c -p_zs log softmax(logits / T), with p_zs the zero-shot prediction (the dataset's hand-crafted
template on the same images). Where the two conflict (cos(g_ce, g_kd) < 0) the update is
g_ce - lambda (g_ce . u) u with u = g_kd / |g_kd|; elsewhere it is g_ce. The distillation gradient itself is never
added (the official ``prograd_backward_and_update`` of Dassl.ProGrad; lambda is ``LOSS.LAMBDA``, 1.0, 0.8 for
some 8/16-shot runs). The forward, and so inference, is CoOp's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Batch
from .coop import CoOp


class ProGrad(CoOp):
    name = "prograd"

    def _text_ctx_init(self, generator: torch.Generator) -> Tensor:
        """The official initialization: with a phrase shorter than the context, zero vectors and then the phrase
        (M = 16 and "a photo of a": 12 zeros, then its 4 token embeddings); otherwise CoOp's."""
        cfg = self.config
        if cfg.text_init and cfg.text_tokens:
            phrase = self.text.phrase_embeddings(cfg.text_init).float()
            if len(phrase) < cfg.text_tokens:
                pad = torch.zeros(cfg.text_tokens - len(phrase), phrase.shape[1], dtype=phrase.dtype, device=phrase.device)
                return torch.cat([pad, phrase])
        return super()._text_ctx_init(generator)

    def losses(self, params: dict[str, Tensor], batch: Batch, classnames: list[str],
               labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The cross-entropy, the distillation loss from zero-shot CLIP, and the logits."""
        image = self._image_features(batch)
        logits = self._scores(image, self._context_text_features(params["text_ctx"], classnames))
        with torch.no_grad():
            teacher = self._scores(image, self.text.template_features(classnames, self.template))
        t = self.config.distill_temperature
        kd = -(F.softmax(teacher / t, dim=-1) * F.log_softmax(logits / t, dim=-1)).sum(-1).mean() * t * t
        return F.cross_entropy(logits, labels), kd, logits

    def gradients(self, params: dict[str, Tensor], batch: Batch, classnames: list[str], labels: Tensor, *,
                  create_graph: bool = False) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        ce, kd, logits = self.losses(params, batch, classnames, labels)
        names = [k for k, v in params.items() if v.requires_grad]
        tensors = [params[k] for k in names]
        g_kd = torch.autograd.grad(kd, tensors, retain_graph=True, create_graph=create_graph)
        g_ce = torch.autograd.grad(ce, tensors, create_graph=create_graph)
        return ce, logits, {k: project(a, b, self.config.projection) for k, a, b in zip(names, g_ce, g_kd)}


def project(g: Tensor, g_kd: Tensor, strength: float = 1.0) -> Tensor:
    """``g`` less ``strength`` times its component along ``g_kd`` when the two point apart (negative dot product),
    else ``g``. A zero ``g_kd`` has no direction and leaves ``g`` as it is (the official code would divide by 0).
    Decided on the device (no host round-trip), with no NaN in either branch (their gradients meet in ``where``)."""
    norm = torch.linalg.vector_norm(g_kd)
    u = g_kd / torch.where(norm > 0, norm, torch.ones_like(norm))
    along = (g * u).sum()
    return torch.where(along < 0, g - strength * along * u, g)
