"""Any CLIP checkpoint in Hugging Face format (local directory or hub id), frozen.

We run the towers with our own forward over HF's modules rather than calling ``CLIPModel``'s
methods, because prompt tuning needs what those methods hide: text encoded from (soft) token
embeddings, sequences truncated at the longest EOT, and visual prompt tokens inside the ViT.
Weights and tokenizer come from the checkpoint unchanged, and tests check the result against
``get_text_features`` / ``get_image_features``.
"""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import Tensor, nn

from ..data.images import CLIP_MEAN, CLIP_STD, ImageTransform
from ..errors import GramError
from .base import TokenizedText
from .text_prompts import check_deep_text, replace_context
from .visual_prompts import run_with_prompts

log = logging.getLogger(__name__)
LISTED = 5  # weight names quoted in an error; the count says how many more


class BackboneError(GramError):
    """A backbone spec that cannot be loaded (wrong path, unreachable hub id, bad files)."""


def listing(names: Iterable[str]) -> str:
    """The first few of ``names`` (sorted, so messages are stable) and how many there are in all."""
    names = sorted(names)
    more = f", ... ({len(names)} in all)" if len(names) > LISTED else ""
    return ", ".join(names[:LISTED]) + more


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence HF's load report: :func:`_check_loading_info` turns its content into one error."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _check_loading_info(name: str, info: dict) -> None:
    """HF initializes missing or misshapen weights randomly and only warns; such a backbone would
    run as noise (a BERT directory, a damaged file), so they are an error here."""
    missing = list(info["missing_keys"])
    mismatched = [f"{key} (checkpoint {list(got)}, config {list(want)})" for key, got, want in info["mismatched_keys"]]
    unexpected = list(info["unexpected_keys"])
    problems = [f"missing weights: {listing(missing)}"] if missing else []
    if mismatched:
        problems.append(f"weights of the wrong shape: {listing(mismatched)}")
    if unexpected and problems:
        problems.append(f"weights a CLIPModel does not have: {listing(unexpected)}")
    if problems:
        raise BackboneError(f"{name!r} is not a complete CLIP checkpoint ({'; '.join(problems)}); "
                            "pass a full CLIPModel checkpoint in Hugging Face format")
    if unexpected:
        log.warning("CLIP checkpoint %r: ignored %d weights a CLIPModel does not have: %s",
                    name, len(unexpected), listing(unexpected))


def _load_clip(source: str, name: str, where: str) -> nn.Module:
    """``CLIPModel`` from ``source`` with every weight from the checkpoint, or a :class:`BackboneError`."""
    from transformers import AutoConfig, CLIPModel

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise BackboneError(f"could not load CLIP checkpoint {name!r} as a {where}: {err}") from err
    if config.model_type != "clip":
        raise BackboneError(f"{name!r} is a {config.model_type!r} checkpoint, not CLIP (its config.json has "
                            f"model_type {config.model_type!r}, a CLIP one has 'clip')")
    try:
        with _quiet_transformers():
            model, info = CLIPModel.from_pretrained(source, config=config, output_loading_info=True,
                                                    ignore_mismatched_sizes=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise BackboneError(f"could not load the weights of CLIP checkpoint {name!r}: {err}") from err
    _check_loading_info(name, info)
    return model


def _block(layer: nn.Module, x: Tensor, causal: bool) -> Tensor:
    """One pre-LN CLIP transformer layer (HF ``CLIPEncoderLayer`` weights), SDPA attention."""
    attn = layer.self_attn
    b, n, width = x.shape
    h = layer.layer_norm1(x)
    q, k, v = (proj(h).view(b, n, attn.num_heads, attn.head_dim).transpose(1, 2)
               for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=attn.scale)
    x = x + attn.out_proj(o.transpose(1, 2).reshape(b, n, width))
    return x + layer.mlp(layer.layer_norm2(x))


def _transform_from_checkpoint(path: Path | None, image_size: int) -> ImageTransform:
    mean, std, size = CLIP_MEAN, CLIP_STD, image_size
    cfg_file = path / "preprocessor_config.json" if path is not None else None
    if cfg_file is not None and cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text())
        mean = tuple(cfg.get("image_mean", mean))
        std = tuple(cfg.get("image_std", std))
        crop = cfg.get("crop_size", size)
        size = crop.get("height", size) if isinstance(crop, dict) else int(crop)
    return ImageTransform(size=size, mean=mean, std=std)


class HFCLIPBackbone(nn.Module):
    """Frozen ``transformers.CLIPModel`` behind the :class:`~gramprompt.backbones.base.Backbone` protocol."""

    def __init__(self, model: nn.Module, tokenizer, *, name: str, transform: ImageTransform,
                 truncate: bool = True):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.transform = transform
        self.truncate = truncate  # exact speed-up, see encode_text_embeddings
        self.cache_stems = False  # the ViT stem (patch + position embedding) is cheap and large
        cfg = model.config
        self.embed_dim = cfg.projection_dim
        self.text_width = cfg.text_config.hidden_size
        self.vision_width = cfg.vision_config.hidden_size
        self.vision_layers = cfg.vision_config.num_hidden_layers
        self.text_layers = cfg.text_config.num_hidden_layers
        self.context_length = cfg.text_config.max_position_embeddings

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, device: torch.device | str | None = None,
                        dtype: torch.dtype | None = None) -> "HFCLIPBackbone":
        """Load from a local HF directory, or download a hub id (needs a network)."""
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        local = Path(name_or_path).expanduser()
        is_local = local.is_dir()
        if not is_local and (local.exists() or name_or_path.startswith((".", "/", "~"))):
            raise BackboneError(f"backbone path {name_or_path!r} is not a directory with a CLIP checkpoint")
        source = str(local) if is_local else name_or_path
        where = "local directory" if is_local else "hub id (is there a network?)"
        model = _load_clip(source, name_or_path, where)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as err:
            raise BackboneError(f"could not load the tokenizer of CLIP checkpoint {name_or_path!r}: {err}") from err
        transform = _transform_from_checkpoint(local if is_local else None, model.config.vision_config.image_size)
        if not is_local:
            try:  # the hub checkpoint's own preprocessing file, already in the local cache
                from huggingface_hub import hf_hub_download

                pre = Path(hf_hub_download(name_or_path, "preprocessor_config.json"))
                transform = _transform_from_checkpoint(pre.parent, model.config.vision_config.image_size)
            except Exception:  # noqa: BLE001 - keep the OpenAI defaults
                pass
        backbone = cls(model, tokenizer, name=f"hf:{name_or_path}", transform=transform)
        return backbone.to(device=device or "cpu", dtype=dtype or torch.float32)

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.logit_scale.dtype

    def tokenize(self, texts: list[str]) -> TokenizedText:
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True,
                             max_length=self.context_length, return_tensors="pt")
        ids = enc["input_ids"].to(self.device)
        return TokenizedText(ids=ids, lengths=enc["attention_mask"].sum(1).to(self.device))

    def token_embeddings(self, ids: Tensor) -> Tensor:
        return self.model.text_model.embeddings.token_embedding(ids)

    def encode_text_embeddings(self, embeds: Tensor, lengths: Tensor, deep_prompts: Tensor | None = None) -> Tensor:
        """Causal transformer, pooled at the EOT token (position ``length - 1``); ``deep_prompts`` (J, M, w)
        overwrite the M context positions after SOS before layers 1..J (``backbones.text_prompts``).

        The mask is causal and pooling reads position ``length - 1``, so positions after the
        longest sequence's EOT cannot change any output: cutting them off is exact. Embeddings already shorter than
        the context length were cut by the caller (the prompt methods cut at the longest EOT) and are used as they
        are, without reading ``lengths`` on the host (no device round-trip in a training step).
        """
        tm = self.model.text_model
        check_deep_text(deep_prompts, self.text_layers)
        n = embeds.shape[1] if embeds.shape[1] < self.context_length or not self.truncate else int(lengths.max())
        if n > self.context_length:
            raise ValueError(f"text sequence of {n} tokens exceeds the context length {self.context_length}")
        x = embeds[:, :n] + tm.embeddings.position_embedding.weight[:n]
        for i, layer in enumerate(tm.encoder.layers):
            if deep_prompts is not None and 0 < i <= len(deep_prompts):
                x = replace_context(x, deep_prompts[i - 1])
            x = _block(layer, x, causal=True)
        x = tm.final_layer_norm(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), lengths - 1]
        return self.model.text_projection(pooled)

    def encode_image(self, pixels: Tensor, visual_prompts: Tensor | None = None) -> Tensor:
        """ViT with optional prompt tokens appended after the patch tokens.

        Shallow ``(M, d_v)``: inserted once, before the pre-LayerNorm (as in VPT / MaPLe for CLIP).
        Deep ``(depth, M, d_v)``: layer ``i < depth`` sees ``visual_prompts[i]`` in those slots.
        Prompts carry no position embedding; pooling reads the CLS token as CLIP does.
        """
        return self.encode_image_from_stem(self.encode_image_stem(pixels), visual_prompts)

    def encode_image_stem(self, pixels: Tensor) -> Tensor:
        return self.model.vision_model.embeddings(pixels.to(self.device, self.dtype))

    def encode_image_from_stem(self, stem: Tensor, visual_prompts: Tensor | None = None, *,
                               per_image: bool = False) -> Tensor:
        vm = self.model.vision_model
        layers = [partial(_block, layer, causal=False) for layer in vm.encoder.layers]
        x = run_with_prompts(stem.to(self.dtype), layers, visual_prompts, pre=vm.pre_layrnorm, per_image=per_image)
        return self.model.visual_projection(vm.post_layernorm(x[:, 0]))

    def logit_scale(self) -> Tensor:
        return self.model.logit_scale.exp()
