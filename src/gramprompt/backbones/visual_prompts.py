"""Visual prompt tokens inside a transformer, shared by every backbone's image tower (VPT)."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Layer = Callable[[Tensor], Tensor]


def run_with_prompts(x: Tensor, layers: Sequence[Layer], visual_prompts: Tensor | None = None,
                     pre: Layer | None = None, *, per_image: bool = False) -> Tensor:
    """Run ``layers`` over tokens ``x`` (B, N, w) with prompt tokens appended after them.

    Shallow ``(M, w)``: inserted once, before ``pre`` (e.g. CLIP's pre-LayerNorm). Deep
    ``(depth, M, w)``: layer ``i < depth`` sees ``visual_prompts[i]`` in those M slots, replacing
    the previous layer's outputs there. Prompts carry no position embedding. ``per_image``: the
    prompts have a leading batch dimension, one set per image ``(B, M, w)`` or ``(B, depth, M, w)``,
    so that several runs' images, each with its run's prompts, share one forward (the multi-run tuner).
    """
    if visual_prompts is None:
        prompts = None
    elif per_image:
        if len(visual_prompts) != len(x):
            raise ValueError(f"per-image prompts for {len(visual_prompts)} images, the batch has {len(x)}")
        prompts = visual_prompts
    else:
        prompts = visual_prompts.unsqueeze(0)  # one set for every image
    deep = prompts is not None and prompts.dim() == 4
    if deep and prompts.shape[1] > len(layers):
        raise ValueError(f"deep prompt depth {prompts.shape[1]} > {len(layers)} layers")
    n = x.shape[1]
    if prompts is not None:
        first = prompts[:, 0] if deep else prompts
        x = torch.cat([x, first.to(x.dtype).expand(len(x), -1, -1)], dim=1)
    if pre is not None:
        x = pre(x)
    for i, layer in enumerate(layers):
        if deep and 0 < i < prompts.shape[1]:
            x = torch.cat([x[:, :n], prompts[:, i].to(x.dtype).expand(len(x), -1, -1)], dim=1)
        x = layer(x)
    return x
