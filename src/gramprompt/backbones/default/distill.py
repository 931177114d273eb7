"""Training the v2 token head: v1's embedding distilled into the token transformer, plus the contrastive loss.

v1's visual prompts barely act because its transformer is a side branch with a near-zero output. v2 reads
the embedding from the transformer itself (:class:`.head.TokenHead`); to keep v1's zero-shot quality it
starts from v1's linear + ConSE base and learns, on the openclipart images only (never a downstream set),

    loss = InfoNCE(v2(image), caption) + distill_weight * (1 - cos(v2(image), v1(image)))

with v1 (the shipped ``default-v1`` weights) as the frozen teacher. The epoch is chosen on the held-out
pairs by the same sum.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .head import ImageHead, TokenHead

SHARED = ("linear.weight", "linear.bias", "conse_weight", "label_embeddings", "logit_scale")  # v1's base


@torch.no_grad()
def teacher_embeddings(teacher: ImageHead, fmap: Tensor, logits: Tensor, batch: int = 256) -> Tensor:
    teacher.eval()
    return torch.cat([teacher.from_stem(teacher.stem(fmap[i:i + batch].float(), logits[i:i + batch]))
                      for i in range(0, len(fmap), batch)])


def init_from_teacher(student: TokenHead, teacher: ImageHead, targets: Tensor, map_tokens: Tensor) -> None:
    """Start from v1: its base and temperature, and its map tokens when the widths agree (v1's layers are not
    reused: trained to write into a near-zero readout, they swamp the base token). The base token enters along
    the top principal axes of v1's embeddings ``targets``, scaled to the norm of the map tokens (a sample,
    ``map_tokens``), and leaves along the same axes: without the layers, the embedding would be about v1's
    projected on those axes (cosine 0.95 to v1 on openclipart; 0.64 with the fresh layers)."""
    state, own = teacher.state_dict(), student.state_dict()
    same = {k: v for k, v in state.items() if k in SHARED + ("token_proj.weight", "token_proj.bias", "pos")
            and own[k].shape == v.shape}
    student.load_state_dict(same, strict=False)
    with torch.no_grad():
        mean = targets.mean(0)
        axes = torch.linalg.svd(targets - mean, full_matrices=False).Vh[:student.cfg.width]  # (width, embed_dim)
        coords = (targets - mean) @ axes.t()
        scale = map_tokens.norm(dim=-1).mean() / coords.norm(dim=-1).mean()
        student.base_proj.weight.copy_(axes * scale)
        student.base_proj.bias.copy_(-(axes @ mean) * scale)
        student.out.weight.copy_(axes.t() * coords.std())
        student.out.bias.copy_(mean)


def start_from_teacher(head: TokenHead, teacher: ImageHead, fmap: Tensor, logits: Tensor, train: Tensor) -> Tensor:
    """v1's embeddings of every image (the distillation targets), after starting ``head`` from ``teacher``."""
    targets = teacher_embeddings(teacher, fmap, logits)
    with torch.no_grad():
        init_from_teacher(head, teacher, targets[train], teacher.map_tokens(fmap[train[:512]].float()))
    return targets


def param_groups(head: TokenHead, base_lr: float, lr: float) -> list[dict]:
    """v1's base parts at a lower rate than the new token-side parts."""
    return [{"params": [p for n, p in head.named_parameters() if n in SHARED], "lr": base_lr},
            {"params": [p for n, p in head.named_parameters() if n not in SHARED], "lr": lr}]


def distill_loss(student: Tensor, teacher: Tensor) -> Tensor:
    return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()


def objective(head: TokenHead, fmap: Tensor, logits: Tensor, captions: Tensor, targets: Tensor, weight: float,
              clip_loss: Callable) -> Tensor:
    img = head.from_stem(head.stem(fmap.float(), logits))
    return clip_loss(img, captions, head.logit_scale) + weight * distill_loss(img, targets)
