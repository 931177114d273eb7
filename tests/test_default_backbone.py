"""The offline default backbone: protocol behaviour, the shipped weights, and a deterministic rebuild."""
from __future__ import annotations

import json

import pytest
import torch

from gramprompt.backbones import load_backbone
from gramprompt.backbones.default.build import REFERENCE_PER_CLASS, REFERENCE_SETS, BuildConfig, build, build_config
from gramprompt.backbones.default.head import HeadConfig, ImageHead, TokenHead
from gramprompt.backbones.default.model import VERSIONS, WEIGHTS, DefaultBackbone, weights_path
from gramprompt.backbones.registry import backbone_name, recorded_backbone
from gramprompt.data.registry import load_dataset
from gramprompt.eval.protocols import zero_shot_all_classes
from gramprompt.prompts import Batch, build_method
from tolerance import assert_fp32_close, transformer_depth

NAMES = ["cat", "ankle boot", "smileys and emotion"]


@pytest.fixture(scope="module")
def default():
    return load_backbone("default")


@pytest.fixture(scope="module")
def v1():
    return load_backbone("default:v1")


@pytest.mark.parametrize("version", VERSIONS)
def test_shipped_weights_match_their_card(version):
    import hashlib

    path = weights_path(version)
    card = json.loads(path.with_suffix(".json").read_text())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == card["sha256"]
    assert path.with_suffix(".log").is_file()
    assert card.get("version", "v1") == version


def test_default_is_v2_and_v1_stays_loadable(default, v1):
    assert WEIGHTS == weights_path("v2")
    assert default.name == backbone_name("default") == "default:v2" and v1.name == backbone_name("default:v1")
    assert isinstance(default.head, TokenHead) and isinstance(v1.head, ImageHead)
    card = json.loads(WEIGHTS.with_suffix(".json").read_text())
    assert default.embed_dim == v1.embed_dim == 384 and default.vision_width == card["head"]["width"]
    assert not any(p.requires_grad for p in default.parameters())
    # runs and hierarchies stored before v2 recorded the bare name, which meant v1
    assert recorded_backbone("default") == "default:v1" and recorded_backbone("default:v2") == "default:v2"


@pytest.mark.parametrize("name", REFERENCE_SETS)
def test_shipped_weights_reproduce_the_reference_zero_shot(default, v1, name):
    for backbone, version in ((default, "v2"), (v1, "v1")):
        card = json.loads(weights_path(version).with_suffix(".json").read_text())
        got = zero_shot_all_classes(backbone, load_dataset(name), max_per_class=REFERENCE_PER_CLASS)["zeroshot"]
        assert got == card["reference_zeroshot"][name], version


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


def _v2_direct(head: TokenHead, fmap, logits, prompts=None):
    """v2 written out from its definition, without the stem or run_with_prompts: base token (linear + ConSE),
    the 49 map tokens, prompts after them (deep: replaced before every layer), readout of the first token."""
    import torch.nn.functional as F

    probs = logits.softmax(-1)
    top, idx = probs.topk(head.cfg.conse_topk, dim=-1)
    conse = F.normalize(((top / top.sum(-1, keepdim=True))[..., None] * head.label_embeddings[idx]).sum(1), dim=-1)
    base = F.normalize(head.linear(fmap.mean((2, 3))), dim=-1) + head.conse_weight * conse
    tokens = [head.base_proj(base)[:, None], head.token_proj(fmap.flatten(2).transpose(1, 2)) + head.pos]
    x = torch.cat(tokens, dim=1)
    for i, layer in enumerate(head.layers):
        if prompts is not None and (i == 0 or prompts.dim() == 3):
            p = prompts[i] if prompts.dim() == 3 else prompts
            x = torch.cat([x[:, :50], p.expand(len(x), -1, -1)], dim=1)
        x = layer(x)
    return head.out(head.norm(x[:, 0]))


@pytest.mark.parametrize("prompts", ["none", "shallow", "deep"])
def test_v2_stem_path_equals_the_direct_path(default, gen, prompts):
    pixels = torch.randn(5, 3, 224, 224, generator=gen)  # more than one CPU trunk chunk
    w, layers = default.vision_width, default.vision_layers
    vp = {"none": None, "shallow": torch.randn(2, w, generator=gen),
          "deep": torch.randn(layers, 2, w, generator=gen)}[prompts]
    with torch.no_grad():
        fmap, logits = default.trunk_outputs(pixels)
        ref = _v2_direct(default.head, fmap, logits, vp)
        got = default.encode_image(pixels, vp)
    assert_fp32_close(got, ref, terms=4 * w, depth=transformer_depth(layers, head=8), scale=float(ref.abs().max()))


def test_v2_embedding_passes_through_the_layers_and_a_zero_prompt_acts(default, gen):
    """v2 has no path around the transformer: changing its last layer changes every embedding; and, as its
    docstring says, a prompt of zeros is not a no-op (the pre-LayerNorm maps it to its bias)."""
    head = default.head
    stem = head.stem(torch.randn(3, 1280, 7, 7, generator=gen), torch.randn(3, 1000, generator=gen))
    ref = head.from_stem(stem)
    assert (head.from_stem(stem, torch.zeros(1, default.vision_width)) - ref).abs().max() > 1e-3
    last = head.layers[-1].linear2
    saved = last.bias.clone()
    try:
        last.bias.add_(torch.randn(last.bias.shape, generator=gen))  # not a constant: the final LayerNorm removes that
        moved = head.from_stem(stem)
    finally:
        last.bias.copy_(saved)
    assert torch.nn.functional.cosine_similarity(moved, ref).max() < 0.999


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


def test_v2_rebuild_on_a_small_subset_is_deterministic_and_starts_from_v1(tmp_path):
    from gramprompt.data.pairs import openclipart_pairs

    pairs = openclipart_pairs()[::100]
    cfg = build_config("v2", seed=3, full_epochs=1, batch_size=16, head=HeadConfig(width=32, heads=2, layers=1))
    a = build(pairs, cfg, out=tmp_path / "a" / "w.safetensors", cache=tmp_path / "cache", reference=False)
    b = build(pairs, cfg, out=tmp_path / "b" / "w.safetensors", cache=tmp_path / "cache", reference=False)
    assert a["sha256"] == b["sha256"]
    assert a["teacher_sha256"] == json.loads(weights_path("v1").with_suffix(".json").read_text())["sha256"]
    built = DefaultBackbone.from_weights(tmp_path / "a" / "w.safetensors")
    assert isinstance(built.head, TokenHead) and built.name == "default:v2" and built.vision_width == 32
