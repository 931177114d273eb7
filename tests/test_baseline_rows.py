"""Baseline rows start as their official configs do: CoCoOp's base-to-new config
(``vit_b16_c4_ep10_batch1_ctxv1``) starts its 4 context tokens from the words "a photo of a"."""
from __future__ import annotations

import pytest
import torch

from gramprompt.backbones import load_backbone
from gramprompt.experiments.config import load_experiment
from gramprompt.prompts import PromptConfig, build_method


@pytest.fixture(scope="module")
def default():
    return load_backbone("default")


def _row(config: str, label: str):
    return next(r for r in load_experiment(config).rows if r.label == label)


@pytest.mark.parametrize("config", ["offline/base2new", "vit_b16/base2new", "offline/cross_domain_16shot",
                                    "vit_b16/cross_dataset_4shot"])
def test_cocoop_rows_start_from_a_photo_of_a_and_the_others_from_noise(config, monkeypatch):
    monkeypatch.setenv("GRAM_DATA", "/nowhere")  # the ViT-B/16 configs name datasets under it; none is loaded
    row = _row(config, "cocoop")
    assert row.method == "cocoop" and row.prompt.text_init == "a photo of a" and row.prompt.text_tokens == 4
    for label in ("coop", "vpt"):  # their official base-to-new runs are not clearly phrase-initialized (README)
        assert _row(config, label).prompt.text_init is None


def test_the_packaged_cocoop_row_starts_from_the_word_embeddings_of_the_phrase(default):
    row = _row("offline/base2new", "cocoop")
    cocoop = build_method(row.method, default, row.prompt)
    params = cocoop.init_params(torch.Generator().manual_seed(1))
    # independent truth: MiniLM's WordPiece ids of the four words, looked up in its word-embedding table
    ids = default.text.tokenizer.convert_tokens_to_ids(["a", "photo", "of", "a"])
    words = default.text.bert.embeddings.word_embeddings.weight[ids].float()
    assert params["text_ctx"].shape == (4, default.text_width)
    assert torch.equal(params["text_ctx"], words)
    # the seed still draws the meta-net (PyTorch's Linear init), not the context
    other = cocoop.init_params(torch.Generator().manual_seed(2))
    assert torch.equal(other["text_ctx"], words) and not torch.equal(other["meta_w1"], params["meta_w1"])


def test_the_phrase_must_have_as_many_tokens_as_text_tokens(default):
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="has 4 tokens, but 2 text tokens"):
        build_method("cocoop", default, PromptConfig(text_tokens=2, text_init="a photo of a")).init_params(gen)
    # text_tokens 0: the phrase sets the length (CoOp's N_CTX = len(CTX_INIT.split()))
    free = build_method("cocoop", default, PromptConfig(text_tokens=0, text_init="a photo of")).init_params(gen)
    assert free["text_ctx"].shape == (3, default.text_width)
