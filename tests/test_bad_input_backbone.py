"""Bad backbone input (wrong checkpoints, devices, damaged weight files) is one clear error, not a traceback
or a silently random model."""
from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from gramprompt.backbones import BackboneError, load_backbone
from gramprompt.backbones.default.model import WEIGHTS
from gramprompt.backbones.registry import resolve_device
from gramprompt.cli import main


# --- hf: checkpoints that are not (complete) CLIP ---------------------------------------------------------

def _clip_copy(src, dst, edit) -> str:
    """A copy of the tiny CLIP checkpoint whose weights went through ``edit`` (a dict -> dict)."""
    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    save_file(edit(load_file(weights)), weights, metadata={"format": "pt"})
    return f"hf:{dst}"


def test_a_bert_checkpoint_is_not_a_clip_backbone(tmp_path):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32)).save_pretrained(tmp_path / "bert")
    with pytest.raises(BackboneError, match="'bert' checkpoint, not CLIP"):
        load_backbone(f"hf:{tmp_path / 'bert'}")


def test_a_clip_checkpoint_missing_a_weight_names_it(tiny_clip_dir, tmp_path):
    spec = _clip_copy(tiny_clip_dir, tmp_path / "clip", lambda sd: {k: v for k, v in sd.items() if k != "logit_scale"})
    with pytest.raises(BackboneError, match=r"not a complete CLIP checkpoint \(missing weights: logit_scale\)"):
        load_backbone(spec)


def test_many_missing_weights_are_listed_first_few_and_counted(tiny_clip_dir, tmp_path):
    removed = sorted(k for k in load_file(tiny_clip_dir / "model.safetensors") if k.startswith("text_model."))
    spec = _clip_copy(tiny_clip_dir, tmp_path / "clip", lambda sd: {k: v for k, v in sd.items() if k not in removed})
    with pytest.raises(BackboneError) as err:
        load_backbone(spec)
    assert f"missing weights: {', '.join(removed[:5])}, ... ({len(removed)} in all)" in str(err.value)


def test_a_weight_of_the_wrong_shape_is_an_error(tiny_clip_dir, tmp_path):
    spec = _clip_copy(tiny_clip_dir, tmp_path / "clip", lambda sd: {**sd, "text_projection.weight": torch.zeros(16, 32)})
    with pytest.raises(BackboneError, match=re.escape("text_projection.weight (checkpoint [16, 32], config [32, 32])")):
        load_backbone(spec)


def test_a_truncated_clip_weights_file_is_an_error(tiny_clip_dir, tmp_path):
    shutil.copytree(tiny_clip_dir, tmp_path / "clip")
    weights = tmp_path / "clip" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(BackboneError, match="could not load the weights of CLIP checkpoint"):
        load_backbone(f"hf:{tmp_path / 'clip'}")


# --- devices ---------------------------------------------------------------------------------------------

def test_an_unknown_device_name_lists_the_valid_forms():
    for name in ("gpu", "cuda:x", "meta"):
        with pytest.raises(BackboneError, match=rf"unknown device '{re.escape(name)}'; valid forms: cpu, cuda, cuda:N, mps"):
            resolve_device(name)


def test_cuda_without_cuda_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackboneError, match="'cuda' was requested but CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device(None) == "cpu" and resolve_device("cpu") == "cpu"


def test_a_cuda_index_beyond_the_devices_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == "cuda:0" and resolve_device(None) == "cuda"
    with pytest.raises(BackboneError, match="has 1 CUDA device"):
        resolve_device("cuda:1")


def test_mps_without_mps_says_so(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(BackboneError, match="MPS .* is not available"):
        resolve_device("mps")


def test_gram_reports_a_bad_device_as_one_error_line(capsys):
    assert main(["zeroshot", "--backbone", "default", "--device", "gpu", "--datasets", "digits"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gram: error: unknown device 'gpu'") and "\n" not in err


# --- default:PATH weight files ---------------------------------------------------------------------------

@pytest.fixture
def weights_copy(tmp_path):
    """The shipped default weights and their card, copied where a test may damage them."""
    path = tmp_path / "w.safetensors"
    shutil.copy(WEIGHTS, path)
    shutil.copy(WEIGHTS.with_suffix(".json"), path.with_suffix(".json"))
    return path


def _load_default(path):
    return load_backbone(f"default:{path}")


def test_missing_default_weights_name_the_file(tmp_path):
    with pytest.raises(BackboneError, match=re.escape(f"not found at {tmp_path / 'none.safetensors'}")):
        _load_default(tmp_path / "none.safetensors")


def test_truncated_default_weights_name_the_file(weights_copy):
    weights_copy.write_bytes(weights_copy.read_bytes()[:5000])
    with pytest.raises(BackboneError, match=re.escape(f"{weights_copy} are damaged or not a safetensors file")):
        _load_default(weights_copy)


def test_default_weights_without_a_key_name_it(weights_copy):
    state = load_file(weights_copy)
    del state["label_embeddings"]
    save_file(state, weights_copy)
    with pytest.raises(BackboneError, match=re.escape(f"{weights_copy} do not fit their card") +
                       ".*missing weights: label_embeddings"):
        _load_default(weights_copy)


def test_a_default_weight_of_the_wrong_shape_names_it(weights_copy):
    save_file({**load_file(weights_copy), "pos": torch.zeros(49, 128)}, weights_copy)  # the card says width 256
    with pytest.raises(BackboneError, match=re.escape("(weights of the wrong shape: pos ([49, 128], card says [49, 256]))")):
        _load_default(weights_copy)


def test_a_card_of_another_width_is_an_error(weights_copy):
    card = json.loads(weights_copy.with_suffix(".json").read_text())
    card["head"]["width"] = 128
    weights_copy.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(BackboneError, match=re.escape(f"{weights_copy} do not fit their card") + ".*wrong shape"):
        _load_default(weights_copy)


@pytest.mark.parametrize("card", [None, "{not json", '{"build": {}}', '{"head": {"depth": 3}}'])
def test_a_missing_or_damaged_card_names_it(weights_copy, card):
    path = weights_copy.with_suffix(".json")
    path.unlink() if card is None else path.write_text(card)
    with pytest.raises(BackboneError, match=re.escape(f"the card {path} of the default backbone weights")):
        _load_default(weights_copy)
