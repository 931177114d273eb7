"""Visual prompt tokens inside a transformer, shared by every backbone's image tower (VPT)."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Layer = Callable[[Tensor], Tensor]


def run_with_prompts(x: Tensor, layers: Sequence[Layer], visual_prompts: Tensor | None = None,
                     pre: Layer | None = None) -> Tensor:
    """Run ``layers`` over tokens ``x`` (B, N, w) with prompt tokens appended after them.

    Shallow ``(M, w)``: inserted once, before ``pre`` (e.g. CLIP's pre-LayerNorm). Deep
    ``(depth, M, w)``: layer ``i < depth`` sees ``visual_prompts[i]`` in those M slots, replacing
    the previous layer's outputs there. Prompts carry no position embedding.
    """
    deep = visual_prompts is not None and visual_prompts.dim() == 3
    if deep and visual_prompts.shape[0] > len(layers):
        raise ValueError(f"deep prompt depth {visual_prompts.shape[0]} > {len(layers)} layers")
    n = x.shape[1]
    if visual_prompts is not None:
        first = visual_prompts[0] if deep else visual_prompts
        x = torch.cat([x, first.to(x.dtype).expand(len(x), -1, -1)], dim=1)
    if pre is not None:
        x = pre(x)
    for i, layer in enumerate(layers):
        if deep and 0 < i < visual_prompts.shape[0]:
            x = torch.cat([x[:, :n], visual_prompts[i].to(x.dtype).expand(len(x), -1, -1)], dim=1)
        x = layer(x)
    return x
