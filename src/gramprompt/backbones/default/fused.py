"""A faster, numerically equivalent EfficientNet-Lite0 trunk for inference.

The trunk is frozen and in eval mode, so every BatchNorm is a fixed per-channel affine map that
folds into the convolution before it (W' = W s, b' = beta - mu s, s = gamma / sqrt(var + eps)),
and a symmetric "same" padding folds into the convolution's own ``padding``. With the activations
in channels-last layout, oneDNN then runs every convolution without the separate BatchNorm,
padding and layout passes that cost most of the library model's time on CPU (about 2.5x on one
core: ``benchmarks/bench_trunk.py``). The output equals the library model's up to float32 rounding
(``tests/test_trunk_fusion.py``). Asymmetric paddings (the stride-2 convolutions at 224 px) stay.

:class:`OneDNNTrunk` runs the folded trunk for frozen CPU inference as oneDNN convolutions with their
pointwise epilogue fused in (ReLU6 as a clip, the residual add as a binary post-op), so no separate
elementwise pass over the activations remains (the out-of-place ReLU6s were a fifth of the trunk's time).
The clip is exact and the add rounds once as before, so the output equals the module's up to float32
rounding (``tests/test_chc_features_fast.py``; speed: ``benchmarks/bench_chc_features.py``).
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


class _Conv:
    """One folded convolution of the trunk as a oneDNN primitive call; its weights are read from the module
    at call time, so a trunk moved with ``.to()`` is still the one that runs."""

    def __init__(self, conv: nn.Conv2d, activation: bool):
        pad = getattr(conv, "static_padding", None)
        self.extra_pad: tuple[int, int, int, int] | None = None
        padding = tuple(conv.padding)
        if isinstance(pad, nn.ZeroPad2d):  # asymmetric "same": the symmetric part in the conv, the rest padded
            left, right, top, bottom = pad.padding
            if right < left or bottom < top or padding != (0, 0):
                raise TypeError(f"unexpected padding {pad.padding} of {conv}")
            padding = (top, left)
            if (right, bottom) != (left, top):
                self.extra_pad = (0, right - left, 0, bottom - top)
        elif pad is not None and type(pad).__name__ != "Identity":  # nn.Identity or the library's own
            raise TypeError(f"unexpected padding module {pad} of {conv}")
        if conv.bias is None or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
            raise TypeError(f"not a folded convolution: {conv}")
        self.conv, self.activation = conv, activation
        self.padding, self.stride, self.groups = list(padding), list(conv.stride), conv.groups

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.extra_pad is not None:
            x = torch.nn.functional.pad(x, self.extra_pad)
        w, b = self.conv.weight, self.conv.bias
        if residual is not None:
            return _POINTWISE.binary(x, residual, w, b, self.padding, self.stride, [1, 1], self.groups,
                                     "add", None, None, [], None)
        attr, scalars = ("hardtanh", [0.0, 6.0]) if self.activation else ("none", [])
        return _POINTWISE(x, w, b, self.padding, self.stride, [1, 1], self.groups, attr, scalars, "")


_POINTWISE = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)


class OneDNNTrunk:
    """``extract_features`` of a trunk made by :func:`fuse_for_inference`, for frozen inference on CPU in float32
    (no autograd): every convolution with its ReLU6 or residual add as one oneDNN call. Raises ``TypeError``
    for a trunk it does not know (unfolded BatchNorms, other activations) and ``RuntimeError`` where this
    torch has no oneDNN; the caller then keeps the module."""

    def __init__(self, fused: nn.Module):
        if _POINTWISE is None or not torch.backends.mkldnn.is_available():
            raise RuntimeError("this torch build has no oneDNN fused convolutions")
        relu6 = fused._swish
        if not isinstance(relu6, nn.ReLU6):
            raise TypeError(f"expected ReLU6 activations, got {relu6}")
        if any(isinstance(module, nn.BatchNorm2d) for module in fused.modules()):
            raise TypeError("the trunk's BatchNorms are not folded (use fuse_for_inference)")
        if fused.training or any(block.training for block in fused._blocks):  # drop-connect would be on
            raise TypeError("the trunk is in training mode")
        self.stem = _Conv(fused._conv_stem, True)
        self.blocks = []
        for block in fused._blocks:
            args = block._block_args
            if block.has_se or not isinstance(block._swish, nn.ReLU6):
                raise TypeError("expected MBConv blocks without squeeze-excitation and with ReLU6")
            # the library's own test, verbatim: a stride given as a list ([1]) is not == 1, so no skip
            skip = bool(block.id_skip and args.stride == 1 and args.input_filters == args.output_filters)
            expand = _Conv(block._expand_conv, True) if args.expand_ratio != 1 else None
            self.blocks.append((expand, _Conv(block._depthwise_conv, True), _Conv(block._project_conv, False), skip))
        self.head = _Conv(fused._conv_head, True)

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float32 CPU pixels -> (B, 1280, H/32, W/32) feature map, as the module computes it."""
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        for expand, depthwise, project, skip in self.blocks:
            inputs = x
            if expand is not None:
                x = expand(x)
            x = project(depthwise(x), inputs if skip else None)
        return self.head(x)


__all__ = ["OneDNNTrunk", "fuse_for_inference"]
