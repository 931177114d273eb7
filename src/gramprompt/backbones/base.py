"""The frozen dual-encoder protocol that every prompt method is written against.

A backbone never trains: prompt methods pass soft tokens *into* it (text context vectors as token
embeddings, visual prompt tokens into the vision transformer) and differentiate through it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ..data.images import ImageTransform


@dataclass
class TokenizedText:
    """Token ids padded to the context length, and each sequence's length including SOS and EOT."""

    ids: Tensor  # (N, L) long
    lengths: Tensor  # (N,) long


@runtime_checkable
class Backbone(Protocol):
    """A frozen image encoder + text encoder sharing an embedding space."""

    name: str
    # joint embedding width D: the last dimension of every text and image feature; a stored feature
    # file or checkpoint made with another width does not fit this backbone
    embed_dim: int
    text_width: int  # token embedding width d of the text tower
    vision_width: int  # token width d_v of the vision transformer
    vision_layers: int  # number of transformer layers a deep visual prompt can reach
    text_layers: int  # number of text transformer layers (deep text prompts reach layers 1 .. text_layers - 1)
    context_length: int  # maximum text sequence length (position embeddings)
    transform: ImageTransform  # preprocessing for this backbone's image encoder
    # True when the image "stem" (the frozen part before any visual prompt enters) is costly and
    # small enough to cache per image, so visual-prompt methods train on cached stems.
    cache_stems: bool

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def tokenize(self, texts: list[str]) -> TokenizedText: ...

    def token_embeddings(self, ids: Tensor) -> Tensor:
        """(N, L) ids -> (N, L, d) input embeddings, no position embedding."""

    def encode_text_embeddings(self, embeds: Tensor, lengths: Tensor, deep_prompts: Tensor | None = None) -> Tensor:
        """(N, L, d) token embeddings (soft tokens allowed) -> (N, D) text features (unnormalized).
        ``deep_prompts`` (J, M, d): the context after the first token is overwritten before layers 1..J
        (``backbones.text_prompts``)."""

    def encode_image(self, pixels: Tensor, visual_prompts: Tensor | None = None) -> Tensor:
        """(B, 3, H, W) -> (B, D). ``visual_prompts``: (M, d_v) shallow or (depth, M, d_v) deep.

        Always equal to ``encode_image_from_stem(encode_image_stem(pixels), visual_prompts)``."""

    def encode_image_stem(self, pixels: Tensor) -> Tensor:
        """The frozen computation before visual prompts enter, (B, ...)."""

    def encode_image_from_stem(self, stem: Tensor, visual_prompts: Tensor | None = None, *,
                               per_image: bool = False) -> Tensor:
        """The rest of the image encoder, (B, D). ``per_image``: one prompt set per image, (B, ...)."""

    def logit_scale(self) -> Tensor: ...
