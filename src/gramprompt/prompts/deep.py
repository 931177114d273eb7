"""Prompts in the first J layers of both towers (MaPLe, PromptSRC's IVLP): what the two share.

Text: layer 0 reads M context vectors after SOS. With a phrase (``text_init``, "a photo of a" in both official
trainers) the prompt is ``"<phrase> <name>."`` with its first M tokens replaced by the context, initialized from
them (MaPLe's M = 2 learns "a photo" and keeps "of a <name>."; PromptSRC's M = 4 learns the whole phrase);
without one the context is N(0, 0.02) before ``<name>.``. Layers 1..J-1 get their own M vectors in those
positions (``backbones.text_prompts``). Vision: J sets of prompt tokens appended after the patch tokens at layer 0
and replacing the previous layer's prompt outputs at layers 1..J-1 (``backbones.visual_prompts``).
J is ``visual_depth`` (9 in both official base-to-new configs), capped at what both towers have when not given.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..backbones.text_prompts import replace_context
from .base import PromptMethod
from .text import splice_context

OFFICIAL_DEPTH = 9


class DeepPrompts(PromptMethod):
    uses_pixels = True

    @property
    def depth(self) -> int:
        bb = self.backbone
        depth = self.config.visual_depth or min(OFFICIAL_DEPTH, bb.text_layers, bb.vision_layers)
        if not 1 <= depth <= min(bb.text_layers, bb.vision_layers):
            raise ValueError(f"{self.name}'s prompt depth {depth} must be between 1 and the layers of both towers "
                             f"({bb.text_layers} text, {bb.vision_layers} vision)")
        return depth

    def _phrase_ctx_init(self, generator: torch.Generator) -> Tensor:
        """The first M token embeddings of the phrase, or N(0, init_std) without one."""
        cfg, bb = self.config, self.backbone
        if not cfg.text_init:
            return self._normal((cfg.text_tokens, bb.text_width), generator)
        phrase = self.text.phrase_embeddings(cfg.text_init).float()
        if len(phrase) < cfg.text_tokens:
            raise ValueError(f"init phrase {cfg.text_init!r} has {len(phrase)} tokens, fewer than the "
                             f"{cfg.text_tokens} text tokens asked for")
        return phrase[:cfg.text_tokens].to(bb.device)

    def _deep_text_init(self, generator: torch.Generator) -> Tensor:
        """(J - 1, M, d): N(0, init_std) vectors for text layers 1..J-1."""
        return self._normal((self.depth - 1, self.config.text_tokens, self.backbone.text_width), generator)

    def text_features(self, params: dict[str, Tensor], classnames: list[str]) -> Tensor:
        embeds, lengths = self._prompt_embeddings(params["text_ctx"], classnames)
        return self.backbone.encode_text_embeddings(embeds, lengths, params["deep_text"])

    def _prompt_embeddings(self, ctx: Tensor, classnames: list[str]) -> tuple[Tensor, Tensor]:
        phrase = self.config.text_init
        if not phrase:
            return splice_context(self.text.class_tokens(classnames), ctx)
        tokens = self.text.class_tokens([f"{phrase} {name}" for name in classnames])
        return replace_context(tokens.embeds, ctx), tokens.lengths

    def _prompt_lengths(self, classnames: list[str]) -> list[int | None]:
        phrase = self.config.text_init
        if not phrase:
            return super()._prompt_lengths(classnames)
        return self.text.token_counts([f"{phrase} {name}." for name in classnames])

    def _prompt_form(self) -> str:
        phrase = self.config.text_init
        return f"'{phrase} <name>.'" if phrase else super()._prompt_form()
