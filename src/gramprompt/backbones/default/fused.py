"""A faster, numerically equivalent EfficientNet-Lite0 trunk for inference.

The trunk is frozen and in eval mode, so every BatchNorm is a fixed per-channel affine map that
folds into the convolution before it (W' = W s, b' = beta - mu s, s = gamma / sqrt(var + eps)),
and a symmetric "same" padding folds into the convolution's own ``padding``. With the activations
in channels-last layout, oneDNN then runs every convolution without the separate BatchNorm,
padding and layout passes that cost most of the library model's time on CPU (about 2.5x on one
core: ``benchmarks/bench_trunk.py``). The output equals the library model's up to float32 rounding
(``tests/test_trunk_fusion.py``). Asymmetric paddings (the stride-2 convolutions at 224 px) stay.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

# (convolution, BatchNorm) attribute pairs of efficientnet_lite_pytorch's model and its MBConv blocks
MODEL_PAIRS = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"))
BLOCK_PAIRS = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))


def _fold(owner: nn.Module, conv_name: str, bn_name: str) -> None:
    conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d) or bn.running_var is None:
        raise TypeError(f"cannot fold {type(bn).__name__} {bn_name} into {type(conv).__name__} {conv_name}")
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = bn.bias - bn.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
        conv.bias = nn.Parameter(bias, requires_grad=False)
    setattr(owner, bn_name, nn.Identity())
    pad = getattr(conv, "static_padding", None)
    if isinstance(pad, nn.ZeroPad2d):
        left, right, top, bottom = pad.padding
        if left == right and top == bottom:
            conv.padding = (top, left)
            conv.static_padding = nn.Identity()


def fuse_for_inference(trunk: nn.Module) -> nn.Module:
    """A frozen, eval-mode copy of an efficientnet_lite_pytorch model with its BatchNorms folded into
    the convolutions and its weights in channels-last layout; ``trunk`` itself is left unchanged."""
    fused = copy.deepcopy(trunk).eval()
    for conv_name, bn_name in MODEL_PAIRS:
        _fold(fused, conv_name, bn_name)
    for block in fused._blocks:
        for conv_name, bn_name in BLOCK_PAIRS:
            if hasattr(block, conv_name):  # expansion-ratio-1 blocks have no expand conv
                _fold(block, conv_name, bn_name)
    return fused.to(memory_format=torch.channels_last).requires_grad_(False)


__all__ = ["fuse_for_inference"]
