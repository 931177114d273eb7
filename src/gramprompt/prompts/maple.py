"""MaPLe (Khattak et al., CVPR 2023): coupled text and vision prompts in the first J layers of both towers.

What the official ``trainers/maple.py`` and its ``ResidualAttentionBlock_MaPLe`` do, and this module does:

* text, layer 0: M context vectors after SOS. With a phrase (``text_init``, "a photo of a" officially) the
  prompt is ``"<phrase> <name>."`` with its first M phrase tokens replaced by the context, initialized from
  them (M = 2: "a photo" is learned, "of a <name>." stays); without one the context is N(0, 0.02) before
  ``<name>.``;
* text, layers 1..J-1: their own M vectors (N(0, 0.02)) overwrite the context positions;
* vision: layer 0's M prompts are ``proj(ctx)`` (a learned text->vision linear map), appended after the patch
  tokens before the pre-LayerNorm; layer i's are ``proj_i(deep_text[i-1])``, replacing the previous layer's
  prompt outputs; the J-1 deep projections start as copies of one initialized linear layer;
* depth J = ``visual_depth`` (9 officially: layers 0-8), capped at what both towers have when not given.

Linear layers start as ``torch.nn.Linear`` does (uniform in +-1/sqrt(fan_in)), drawn from the run's generator.
Official runs use fp16 towers; the arithmetic here is the backbone's dtype.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..backbones.text_prompts import replace_context
from .base import Batch, PromptMethod
from .text import splice_context

OFFICIAL_DEPTH = 9


class MaPLe(PromptMethod):
    name = "maple"
    uses_pixels = True
    groups = {"text_ctx": "text", "deep_text": "text", "proj_w": "coupling", "proj_b": "coupling",
              "deep_proj_w": "coupling", "deep_proj_b": "coupling"}

    @property
    def depth(self) -> int:
        bb = self.backbone
        depth = self.config.visual_depth or min(OFFICIAL_DEPTH, bb.text_layers, bb.vision_layers)
        if not 1 <= depth <= min(bb.text_layers, bb.vision_layers):
            raise ValueError(f"MaPLe's prompt depth {depth} must be between 1 and the layers of both towers "
                             f"({bb.text_layers} text, {bb.vision_layers} vision)")
        return depth

    def init_params(self, generator: torch.Generator) -> dict[str, Tensor]:
        cfg, bb, j = self.config, self.backbone, self.depth
        if cfg.text_init:
            phrase = self.text.phrase_embeddings(cfg.text_init).float()
            if len(phrase) < cfg.text_tokens:
                raise ValueError(f"init phrase {cfg.text_init!r} has {len(phrase)} tokens, fewer than the "
                                 f"{cfg.text_tokens} text tokens asked for")
            ctx = phrase[:cfg.text_tokens].to(bb.device)
        else:
            ctx = self._normal((cfg.text_tokens, bb.text_width), generator)
        proj_w, proj_b = self._linear(bb.text_width, bb.vision_width, generator)
        deep_w, deep_b = self._linear(bb.text_width, bb.vision_width, generator)  # one layer, cloned J-1 times
        return {"text_ctx": ctx,
                "deep_text": self._normal((j - 1, cfg.text_tokens, bb.text_width), generator),
                "proj_w": proj_w, "proj_b": proj_b,
                "deep_proj_w": deep_w.expand(j - 1, -1, -1).clone(), "deep_proj_b": deep_b.expand(j - 1, -1).clone()}

    def _linear(self, fan_in: int, fan_out: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """nn.Linear's default initialization: weight and bias uniform in +-1/sqrt(fan_in)."""
        bound = 1.0 / math.sqrt(fan_in)
        w = (torch.rand((fan_out, fan_in), generator=generator) * 2 - 1) * bound
        b = (torch.rand((fan_out,), generator=generator) * 2 - 1) * bound
        return w.to(self.backbone.device), b.to(self.backbone.device)

    def visual_prompts(self, params: dict[str, Tensor]) -> Tensor:
        """(J, M, d_v): layer 0's from the shared context, the deeper ones from their own text prompts."""
        first = params["text_ctx"] @ params["proj_w"].t() + params["proj_b"]
        deep = torch.einsum("jmd,jvd->jmv", params["deep_text"], params["deep_proj_w"]) + params["deep_proj_b"][:, None]
        return torch.cat([first[None], deep])

    def text_features(self, params: dict[str, Tensor], classnames: list[str]) -> Tensor:
        embeds, lengths = self._prompt_embeddings(params["text_ctx"], classnames)
        return self.backbone.encode_text_embeddings(embeds, lengths, params["deep_text"])

    def _prompt_embeddings(self, ctx: Tensor, classnames: list[str]) -> tuple[Tensor, Tensor]:
        """``[SOS] ctx <rest of the phrase> <name>. [EOT]`` (the phrase's first M tokens replaced by ``ctx``), or
        ``[SOS] ctx <name>. [EOT]`` without a phrase."""
        phrase = self.config.text_init
        if not phrase:
            return splice_context(self.text.class_tokens(classnames), ctx)
        tokens = self.text.class_tokens([f"{phrase} {name}" for name in classnames])
        return replace_context(tokens.embeds, ctx), tokens.lengths

    def logits(self, params: dict[str, Tensor], batch: Batch, classnames: list[str]) -> Tensor:
        image = self._image_features(batch, self.visual_prompts(params))
        return self._scores(image, self.text_features(params, classnames))

    def _prompt_lengths(self, classnames: list[str]) -> list[int | None]:
        phrase = self.config.text_init
        if not phrase:
            return super()._prompt_lengths(classnames)
        return self.text.token_counts([f"{phrase} {name}." for name in classnames])

    def _prompt_form(self) -> str:
        phrase = self.config.text_init
        return f"'{phrase} <name>.'" if phrase else super()._prompt_form()
