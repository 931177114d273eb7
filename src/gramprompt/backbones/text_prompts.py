"""Deep text prompts inside a text transformer, shared by every backbone's text tower (MaPLe, PromptSRC).

Layer 0 reads the learned context as token embeddings, spliced after the first token (SOS / [CLS]) like CoOp's;
each deeper layer ``i <= J`` of a ``(J, M, w)`` stack has its M context positions overwritten with the stack's
``i - 1``-th set, replacing what the previous layer computed there (the official MaPLe and IVLP text blocks).
"""
from __future__ import annotations

import torch
from torch import Tensor


def replace_context(x: Tensor, prompts: Tensor, start: int = 1) -> Tensor:
    """``x`` (N, L, w) with positions ``start .. start + M - 1`` set to ``prompts`` (M, w), for every sequence."""
    m = prompts.shape[0]
    return torch.cat([x[:, :start], prompts.to(x.dtype).expand(len(x), -1, -1), x[:, start + m:]], dim=1)


def check_deep_text(deep_prompts: Tensor | None, layers: int) -> None:
    """A stack must leave layer 0 to the spliced context and fit in the tower: J <= layers - 1."""
    if deep_prompts is None:
        return
    if deep_prompts.dim() != 3:
        raise ValueError(f"deep text prompts must be (J, M, width), got shape {tuple(deep_prompts.shape)}")
    if len(deep_prompts) > layers - 1:
        raise ValueError(f"{len(deep_prompts)} deep text prompt sets for a text tower of {layers} layers "
                         f"(at most {layers - 1}: layer 0 reads the spliced context)")
