"""`gram meta-train` on a small hierarchy, then `gram fewshot --init` from its checkpoint."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from gramprompt.backbones import load_backbone
from gramprompt.chc.hierarchy import Hierarchy, Topic
from gramprompt.chc.synthetic import topic_word, write_mixture
from gramprompt.cli import main
from gramprompt.meta.checkpoint import load_gram
from gramprompt.prompts import PromptConfig, build_method


def small_hierarchy(root, image_dim: int, images: bool = False) -> Hierarchy:
    """A hierarchy straight from the synthetic mixture's ground truth (no clustering needed); with
    ``images``, each row also gets an image file (colour by topic, brightness by domain)."""
    truth = write_mixture(root / "features", 240, topics=6, domains=2, image_dim=image_dim, shard_rows=100)
    sources = [""] * len(truth.topic)
    if images:
        (root / "img").mkdir()
        palette = np.random.default_rng(0).integers(40, 200, (6, 3))
        for i, (t, d) in enumerate(zip(truth.topic, truth.domain)):
            sources[i] = str(root / "img" / f"{i}.png")
            Image.fromarray(np.full((12, 12, 3), palette[t] * (0.6 + 0.4 * d), np.uint8)).save(sources[i])
    topics = [Topic(t, topic_word(t), [(topic_word(t), 1.0)], int((truth.topic == t).sum()),
                    np.bincount(truth.domain[truth.topic == t]).tolist()) for t in range(6)]
    n = len(truth.topic)
    h = Hierarchy([f"{i:09d}" for i in range(n)], np.arange(n), sources, ["kept"] * n, truth.topic, truth.domain,
                  topics, {"features": str((root / "features").resolve())})
    h.save(root / "h")
    return h


def test_meta_train_then_fewshot_from_its_checkpoint(tiny_clip_dir, tmp_path):
    backbone = load_backbone(f"hf:{tiny_clip_dir}")
    small_hierarchy(tmp_path, backbone.embed_dim)
    out = tmp_path / "meta"
    args = ["meta-train", "--hierarchy", str(tmp_path / "h"), "--backbone", f"hf:{tiny_clip_dir}", "--method", "coop",
            "--out", str(out), "--iterations", "4", "--task-batch", "2", "--ways", "3", "--support-shots", "2",
            "--query-shots", "3", "--checkpoint-every", "2", "--stats-every", "2"]
    assert main(args) == 0
    theta, phi, info = load_gram(out / "gram.safetensors")
    # a rerun after a kill between checkpoints: the logs of the redone iterations are not doubled
    ckpt = json.loads((out / "checkpoint" / "config.json").read_text())
    assert ckpt["checkpoint_every"] == 2
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"iteration": 5, "meta_loss": 1.0}) + "\n")  # as if iteration 5 ran, then a kill
    assert main(args) == 0  # resumes at 4 == iterations: nothing to redo
    assert load_gram(out / "gram.safetensors")[0]["text_ctx"].equal(theta["text_ctx"])
    assert theta["text_ctx"].shape == (4, backbone.text_width)
    assert set(phi) == {f"text_ctx.{k}" for k in ("w_gamma", "b_gamma", "w_beta", "b_beta", "b_gate")}
    assert info["method"] == "coop" and info["regulator"]["shape"] == "shared" and info["iterations"] == 4
    assert info["regulator"]["form"] == "bounded"  # the default form
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 3, 4] and "alignment" in records[1]
    assert main(["fewshot", "--backbone", f"hf:{tiny_clip_dir}", "--method", "coop", "--dataset", "digits",
                 "--shots", "2", "--out", str(tmp_path / "fs"), "--epochs", "1", "--batch-size", "4",
                 "--init", str(out / "gram.safetensors")]) == 0
    assert main([*args[:-2], "--no-regulator", "--out", str(tmp_path / "noreg")]) == 0  # ablation: no phi
    assert load_gram(tmp_path / "noreg" / "gram.safetensors")[1] == {}
    assert not torch.equal(theta["text_ctx"], load_gram(tmp_path / "noreg" / "gram.safetensors")[0]["text_ctx"])


def test_meta_train_regulator_forms(tiny_clip_dir, tmp_path, capsys):
    backbone = load_backbone(f"hf:{tiny_clip_dir}")
    small_hierarchy(tmp_path, backbone.embed_dim)
    args = ["meta-train", "--hierarchy", str(tmp_path / "h"), "--backbone", f"hf:{tiny_clip_dir}", "--method", "coop",
            "--iterations", "2", "--task-batch", "2", "--ways", "3", "--support-shots", "2", "--query-shots", "2"]
    for flags, form in [(["--regulator-form", "literal"], "literal"), (["--scale-invariant"], "scale-invariant")]:
        out = tmp_path / form
        assert main([*args, "--out", str(out), *flags]) == 0
        _, phi, info = load_gram(out / "gram.safetensors")
        assert info["regulator"]["form"] == form and ("text_ctx.b_gate" in phi) == (form == "bounded")
    assert main(["fewshot", "--backbone", f"hf:{tiny_clip_dir}", "--method", "coop", "--dataset", "digits",
                 "--shots", "1", "--out", str(tmp_path / "fs"), "--epochs", "1", "--batch-size", "4",
                 "--init", str(tmp_path / "literal" / "gram.safetensors")]) == 0
    with pytest.raises(SystemExit):  # the alias and the option are one setting
        main([*args, "--out", str(tmp_path / "both"), "--scale-invariant", "--regulator-form", "literal"])
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("method,tokens", [("vpt", ["--visual-tokens", "4"]),
                                           ("vpt-deep", ["--visual-tokens", "2", "--visual-depth", "2"]),
                                           ("joint", ["--text-tokens", "2", "--visual-tokens", "2"]),  # UNIGRAM
                                           ("cocoop", ["--text-tokens", "2"])])
def test_meta_train_any_prompt_method(tiny_clip_dir, tmp_path, method, tokens):
    backbone = load_backbone(f"hf:{tiny_clip_dir}")
    small_hierarchy(tmp_path, backbone.embed_dim, images=True)
    out = tmp_path / "meta"
    assert main(["meta-train", "--hierarchy", str(tmp_path / "h"), "--backbone", f"hf:{tiny_clip_dir}",
                 "--method", method, "--out", str(out), "--iterations", "2", "--task-batch", "1", "--ways", "2",
                 "--support-shots", "2", "--query-shots", "2", "--stats-every", "1", *tokens]) == 0
    theta, phi, info = load_gram(out / "gram.safetensors")
    if method == "cocoop":  # context and meta-net, each tensor regulated
        assert theta["text_ctx"].shape == (2, backbone.text_width) and "meta_w1" in theta
    else:
        assert theta["visual_ctx"].shape[-2:] == (int(tokens[3 if method == "joint" else 1]), backbone.vision_width)
    if method == "vpt-deep":
        assert theta["visual_ctx"].shape[0] == 2
    groups = {k.split(".")[0] for k in phi}
    assert groups == set(theta)  # one regulator per prompt tensor: text and visual for UNIGRAM
    fresh = build_method(method, backbone, PromptConfig(text_tokens=2, visual_tokens=int(tokens[1]), visual_depth=(
        2 if method == "vpt-deep" else None))).init_params(torch.Generator().manual_seed(0))
    assert any(not torch.equal(theta[k], fresh[k]) for k in theta)  # meta-training moved theta


def test_supervised_meta_training_ablation(tiny_clip_dir, tmp_path):
    out = tmp_path / "sup"
    assert main(["meta-train", "--supervised", "digits", "--backbone", f"hf:{tiny_clip_dir}", "--method", "coop",
                 "--out", str(out), "--iterations", "2", "--task-batch", "2", "--ways", "3", "--support-shots", "2",
                 "--query-shots", "2"]) == 0
    _, phi, info = load_gram(out / "gram.safetensors")
    assert info["supervised"] == "digits" and info["classes"] == 10 and phi
    assert main(["meta-train", "--supervised", "nowhere", "--backbone", f"hf:{tiny_clip_dir}", "--method", "coop",
                 "--out", str(tmp_path / "x")]) == 2


def test_supervised_meta_training_of_visual_prompts_on_array_images(tiny_clip_dir, tmp_path):
    out = tmp_path / "sup-vpt"  # digits samples hold arrays, not paths
    assert main(["meta-train", "--supervised", "digits", "--backbone", f"hf:{tiny_clip_dir}", "--method", "vpt",
                 "--out", str(out), "--iterations", "1", "--task-batch", "1", "--ways", "2", "--support-shots", "1",
                 "--query-shots", "1"]) == 0
    assert "visual_ctx" in load_gram(out / "gram.safetensors")[0]
