"""Create CLIP checkpoints with random weights, in HF format, on local disk.

No pretrained CLIP can be downloaded in offline environments; tests, benchmarks and the offline
demo still exercise the real loading path (``CLIPModel.from_pretrained`` on a directory) on
checkpoints of real architectures made here. Weights are random, so accuracy is not meaningful.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .bpe import clip_bpe_tokenizer
from ..data.images import CLIP_MEAN, CLIP_STD


@dataclass(frozen=True)
class CLIPShape:
    text_width: int
    text_layers: int
    text_heads: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    image_size: int
    patch_size: int
    embed_dim: int


PRESETS: dict[str, CLIPShape] = {
    "tiny": CLIPShape(32, 2, 4, 32, 2, 4, 32, 8, 32),
    "small": CLIPShape(128, 4, 4, 128, 4, 4, 64, 16, 128),
    "vit-b-32": CLIPShape(512, 12, 8, 768, 12, 12, 224, 32, 512),
    "vit-b-16": CLIPShape(512, 12, 8, 768, 12, 12, 224, 16, 512),
    "vit-l-14": CLIPShape(768, 12, 12, 1024, 24, 16, 224, 14, 768),
}


def clip_config(shape: CLIPShape):
    from transformers import CLIPConfig

    text = dict(hidden_size=shape.text_width, num_hidden_layers=shape.text_layers,
                num_attention_heads=shape.text_heads, intermediate_size=4 * shape.text_width,
                vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                pad_token_id=49407, hidden_act="quick_gelu")
    vision = dict(hidden_size=shape.vision_width, num_hidden_layers=shape.vision_layers,
                  num_attention_heads=shape.vision_heads, intermediate_size=4 * shape.vision_width,
                  image_size=shape.image_size, patch_size=shape.patch_size, hidden_act="quick_gelu")
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=shape.embed_dim)


def build_random_clip(out_dir: str | Path, preset: str = "tiny", seed: int = 0) -> Path:
    """Write a random-weight CLIP (model, tokenizer, preprocessor config) to ``out_dir``."""
    from transformers import CLIPModel

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    shape = PRESETS[preset]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):  # HF initializes from the global RNG; keep ours untouched
        torch.manual_seed(seed)
        model = CLIPModel(clip_config(shape))
    model.save_pretrained(out)
    clip_bpe_tokenizer().save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
        "crop_size": {"height": shape.image_size, "width": shape.image_size},
        "size": {"shortest_edge": shape.image_size}}, indent=2))
    (out / "gramprompt_random.json").write_text(json.dumps({"preset": preset, "seed": seed, **asdict(shape)}, indent=2))
    return out
