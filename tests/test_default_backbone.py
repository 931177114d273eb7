"""The offline default backbone: protocol behaviour, the shipped weights, and a deterministic rebuild."""
from __future__ import annotations

import json

import pytest
import torch

from gramprompt.backbones import load_backbone
from gramprompt.backbones.default.build import REFERENCE_PER_CLASS, REFERENCE_SETS, BuildConfig, build
from gramprompt.backbones.default.head import HeadConfig, ImageHead
from gramprompt.backbones.default.model import WEIGHTS, DefaultBackbone
from gramprompt.data.registry import load_dataset
from gramprompt.eval.protocols import zero_shot_all_classes
from gramprompt.prompts import Batch, build_method
from tolerance import assert_fp32_close, transformer_depth

NAMES = ["cat", "ankle boot", "smileys and emotion"]


@pytest.fixture(scope="module")
def default():
    return load_backbone("default")


def test_shipped_weights_match_their_card(default):
    card = json.loads(WEIGHTS.with_suffix(".json").read_text())
    import hashlib

    assert hashlib.sha256(WEIGHTS.read_bytes()).hexdigest() == card["sha256"]
    assert WEIGHTS.with_suffix(".log").is_file()
    assert default.embed_dim == 384 and default.vision_width == card["head"]["width"]
    assert not any(p.requires_grad for p in default.parameters())


@pytest.mark.parametrize("name", REFERENCE_SETS)
def test_shipped_weights_reproduce_the_reference_zero_shot(default, name):
    card = json.loads(WEIGHTS.with_suffix(".json").read_text())
    got = zero_shot_all_classes(default, load_dataset(name), max_per_class=REFERENCE_PER_CLASS)["zeroshot"]
    assert got == card["reference_zeroshot"][name]


def test_text_tower_truncation_and_soft_tokens_are_exact(default, gen):
    tok = default.tokenize([f"{n}." for n in NAMES])
    emb = default.token_embeddings(tok.ids)
    short = default.encode_text_embeddings(emb, tok.lengths)
    # reference: the plain MiniLM forward with its own padding mask over the full length
    mask = (torch.arange(tok.ids.shape[1])[None] < tok.lengths[:, None]).float()
    hidden = default.text.bert(input_ids=tok.ids, attention_mask=mask).last_hidden_state
    ref = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    bert = default.text.bert.config  # post-LN BERT: embedding LayerNorm and mean pooling around the blocks
    text = dict(terms=bert.intermediate_size, depth=transformer_depth(bert.num_hidden_layers))
    assert_fp32_close(short, ref, **text)
    # CoOp's context goes right after [CLS]; a phrase init reproduces the hand-crafted prompt
    coop = build_method("coop", default, template="a photo of a {}.")
    from gramprompt.prompts import PromptConfig

    coop.config = PromptConfig(text_init="a photo of a")
    params = coop.init_params(gen)
    feats = torch.randn(2, default.embed_dim, generator=gen)
    zs = build_method("zeroshot", default, template="a photo of a {}.")
    assert_fp32_close(coop.logits(params, Batch(features=feats), NAMES), zs.logits({}, Batch(features=feats), NAMES),
                      terms=text["terms"], depth=text["depth"] + 2, scale=float(default.logit_scale()))  # s * cos


def test_stem_path_equals_the_direct_path_and_prompts_act(default, gen):
    pixels = torch.randn(2, 3, 224, 224, generator=gen)
    stem = default.encode_image_stem(pixels)
    prompts = torch.randn(2, default.vision_width, generator=gen)
    assert torch.allclose(default.encode_image(pixels, prompts), default.encode_image_from_stem(stem, prompts), atol=1e-5)
    assert (default.encode_image_from_stem(stem, prompts) - default.encode_image_from_stem(stem)).abs().max() > 1e-4
    deep = torch.randn(default.vision_layers, 2, default.vision_width, generator=gen, requires_grad=True)
    (grad,) = torch.autograd.grad(default.encode_image_from_stem(stem, deep).sum(), deep)
    assert all(g.abs().sum() > 0 for g in grad)


def test_bf16_runs_the_same_model_as_fp32(default, gen):
    """``--dtype bf16``: the fp32 backbone is the reference; bf16 features point the same way."""
    half = load_backbone("default", dtype=torch.bfloat16)
    pixels = torch.randn(2, 3, 224, 224, generator=gen)
    prompts = torch.randn(2, default.vision_width, generator=gen)

    def features(bb):
        tok = bb.tokenize([f"a photo of a {n}." for n in NAMES])
        return [bb.encode_text_embeddings(bb.token_embeddings(tok.ids), tok.lengths),
                bb.encode_image(pixels), bb.encode_image(pixels, prompts.to(bb.dtype))]

    for ref, low in zip(features(default), features(half)):
        assert low.dtype == torch.bfloat16 and low.shape == ref.shape == (len(ref), default.embed_dim)
        assert torch.nn.functional.cosine_similarity(ref, low.float()).min() > 0.98


def test_untrained_branch_is_a_no_op():
    head = ImageHead(HeadConfig(width=32, heads=2), torch.randn(1000, 384))
    fmap, logits = torch.randn(3, 1280, 7, 7), torch.randn(3, 1000)
    stem = head.stem(fmap, logits)
    assert torch.equal(head.eval().from_stem(stem, torch.randn(2, 32)), head.base(fmap.mean((2, 3)), logits))


def test_rebuild_on_a_small_subset_is_deterministic(tmp_path):
    from gramprompt.data.pairs import openclipart_pairs

    pairs = openclipart_pairs()[::100]
    cfg = BuildConfig(seed=3, base_epochs=2, full_epochs=1, batch_size=16,
                      head=HeadConfig(width=32, heads=2, layers=1))
    a = build(pairs, cfg, out=tmp_path / "a" / "w.safetensors", cache=tmp_path / "cache", reference=False)
    b = build(pairs, cfg, out=tmp_path / "b" / "w.safetensors", cache=tmp_path / "cache", reference=False)
    assert a["sha256"] == b["sha256"]
    assert DefaultBackbone.from_weights(tmp_path / "a" / "w.safetensors").vision_width == 32
