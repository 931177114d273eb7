"""The fused EfficientNet-Lite0 trunk against the library model it was made from."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from gramprompt.backbones.default.fused import fuse_for_inference
from gramprompt.backbones.default.towers import load_efficientnet_lite0
from tolerance import assert_fp32_close

# ~50 chained convolutions (16 MBConv blocks x 3, stem, head); the longest reduction is a 1x1
# projection over 1152 channels; ReLU6 bounds the activations, so the feature map's scale is 6
FMAP = dict(terms=1152, depth=50)


@pytest.fixture(scope="module")
def trunks():
    library = load_efficientnet_lite0()
    return library, fuse_for_inference(library)


def test_fused_trunk_equals_the_library_model(trunks, gen):
    library, fused = trunks
    x = torch.randn(3, 3, 224, 224, generator=gen)
    with torch.no_grad():
        ref = library.extract_features(x)
        got = fused.extract_features(x.contiguous(memory_format=torch.channels_last))
        assert_fp32_close(got, ref, **FMAP, scale=6.0)
        logits_ref, logits = library._fc(ref.mean((2, 3))), fused._fc(got.mean((2, 3)))
        assert_fp32_close(logits, logits_ref, terms=1280, depth=FMAP["depth"] + 1, scale=float(logits_ref.abs().max()))
    assert logits.argmax(1).tolist() == logits_ref.argmax(1).tolist()


def test_the_backbone_runs_the_trunk_in_chunks_with_the_same_result(trunks, gen):
    from gramprompt.backbones import load_backbone
    from gramprompt.backbones.default.model import CPU_TRUNK_CHUNK

    library, _ = trunks
    backbone = load_backbone("default")
    chunks = []
    hook = backbone.trunk._conv_stem.register_forward_pre_hook(lambda m, args: chunks.append(len(args[0])))
    x = torch.randn(CPU_TRUNK_CHUNK * 2 + 1, 3, 224, 224, generator=gen)
    try:
        with torch.no_grad():
            fmap, logits = backbone.trunk_outputs(x)
            ref = library.extract_features(x)
    finally:
        hook.remove()
    assert chunks == [CPU_TRUNK_CHUNK, CPU_TRUNK_CHUNK, 1]
    assert_fp32_close(fmap, ref, **FMAP, scale=6.0)
    assert logits.shape == (len(x), 1000)


def test_fusion_removes_every_batchnorm_and_leaves_the_original(trunks):
    library, fused = trunks
    assert any(isinstance(m, nn.BatchNorm2d) for m in library.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    convs = lambda m: [c for c in m.modules() if isinstance(c, nn.Conv2d)]  # noqa: E731
    assert len(convs(fused)) == len(convs(library))
    # the library model is untouched (a copy was fused): its convolutions still have no bias
    assert all(c.bias is None for c in convs(library)) and all(c.bias is not None for c in convs(fused))
    assert not any(p.requires_grad for p in fused.parameters()) and not fused.training
    # stride-1 "same" paddings are symmetric and now inside the convolution; stride-2 ones stay
    strided = [c for c in convs(fused) if tuple(c.stride) == (2, 2)]
    assert len(strided) == 5 and all(isinstance(c.static_padding, nn.ZeroPad2d) for c in strided)
    assert all(c.padding == (c.kernel_size[0] // 2,) * 2 for c in convs(fused) if tuple(c.stride) == (1, 1))
