"""Text-side building blocks shared by the prompt methods: cached class-name tokens and soft context.

A CoOp prompt is ``[SOS] ctx_1 .. ctx_M <class name> . [EOT]``. We tokenize ``"<name>."`` once per
class set, keep its token embeddings (frozen, so computed once) truncated at the longest EOT, and
splice the context vectors in after SOS. This is tokenizer-agnostic: nothing depends on how a
placeholder word like "X" happens to be tokenized.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

from ..backbones.base import Backbone


@dataclass
class ClassNameTokens:
    embeds: Tensor  # (C, n, d): [SOS] name tokens "." [EOT] (+ pads), n = longest sequence
    lengths: Tensor  # (C,) tokens up to and including EOT


def splice_context(tokens: ClassNameTokens, ctx: Tensor) -> tuple[Tensor, Tensor]:
    """Insert context vectors after SOS.

    ``ctx`` (M, d) gives embeds (C, n + M, d); per-image ``ctx`` (B, M, d) gives (B * C, n + M, d),
    image-major. Lengths grow by M.
    """
    c = tokens.embeds.shape[0]
    if ctx.dim() == 2:
        return splice_rows(tokens, ctx.expand(c, -1, -1))
    b, m, d = ctx.shape
    per_image = ClassNameTokens(tokens.embeds.repeat(b, 1, 1), tokens.lengths.repeat(b))
    return splice_rows(per_image, ctx[:, None].expand(-1, c, -1, -1).reshape(b * c, m, d))


def splice_rows(tokens: ClassNameTokens, ctx: Tensor) -> tuple[Tensor, Tensor]:
    """Insert one context per sequence, ``ctx`` (C, M, d) for the C rows of ``tokens``, after SOS."""
    emb = tokens.embeds
    out = torch.cat([emb[:, :1], ctx.to(emb.dtype), emb[:, 1:]], dim=1)
    return out, tokens.lengths + ctx.shape[1]


class TextCache:
    """Per-backbone caches of everything on the text side that does not depend on learned params."""

    # class sets kept (least recently used dropped): meta-training draws a new set for almost every
    # task, and tokens are cheap to recompute, so an unbounded cache would only grow
    MAX_CLASS_SETS = 256

    def __init__(self, backbone: Backbone):
        self.backbone = backbone
        self._tokens: OrderedDict[tuple[str, ...], ClassNameTokens] = OrderedDict()
        self._features: dict[tuple[str, tuple[str, ...]], Tensor] = {}

    def class_tokens(self, classnames: list[str]) -> ClassNameTokens:
        key = tuple(classnames)
        if key in self._tokens:
            self._tokens.move_to_end(key)
            return self._tokens[key]
        tok = self.backbone.tokenize([f"{name}." for name in classnames])
        n = int(tok.lengths.max())
        with torch.no_grad():
            emb = self.backbone.token_embeddings(tok.ids[:, :n])
        self._tokens[key] = ClassNameTokens(emb, tok.lengths)
        if len(self._tokens) > self.MAX_CLASS_SETS:
            self._tokens.popitem(last=False)
        return self._tokens[key]

    def token_counts(self, texts: list[str]) -> list[int | None]:
        """Tokens of each text, SOS and EOT included, also past the context length (``None``: longer
        than the context length by an unknown amount).

        ``Backbone.tokenize`` truncates at the context length, so a text that reaches it is recounted
        word by word, which is exact for tokenizers that split at whitespace first (CLIP's BPE, BERT's
        WordPiece); a single word that reaches the context length on its own leaves the count unknown.
        """
        if not texts:
            return []
        limit = self.backbone.context_length
        counts = [int(n) for n in self.backbone.tokenize(texts).lengths]
        return [n if n < limit else self._count_by_word(text) for n, text in zip(counts, texts)]

    def _count_by_word(self, text: str) -> int | None:
        counts = [int(n) for n in self.backbone.tokenize(text.split()).lengths]
        if max(counts) >= self.backbone.context_length:
            return None
        return 2 + sum(n - 2 for n in counts)

    def template_features(self, classnames: list[str], template: str) -> Tensor:
        """Text features of hand-crafted prompts ``template.format(name)``, (C, D), no grad."""
        key = (template, tuple(classnames))
        if key not in self._features:
            tok = self.backbone.tokenize([template.format(name) for name in classnames])
            with torch.no_grad():
                feats = self.backbone.encode_text_embeddings(self.backbone.token_embeddings(tok.ids), tok.lengths)
            self._features[key] = feats
        return self._features[key]

    def ensemble_features(self, classnames: list[str], templates: tuple[str, ...]) -> Tensor:
        """The mean over ``templates`` of each class's hand-crafted text features, normalized after averaging, (C, D),
        no grad: CLIP's prompt ensemble. One forward per template (C prompts each), cached per class set."""
        key = (templates, tuple(classnames))
        if key not in self._features:
            total = None
            for template in templates:
                tok = self.backbone.tokenize([template.format(name) for name in classnames])
                with torch.no_grad():
                    feats = self.backbone.encode_text_embeddings(self.backbone.token_embeddings(tok.ids), tok.lengths)
                total = feats.float() if total is None else total + feats.float()
            self._features[key] = torch.nn.functional.normalize(total / len(templates), dim=-1)
        return self._features[key]

    def phrase_embeddings(self, phrase: str) -> Tensor:
        """Token embeddings of a phrase without SOS/EOT, (M, d): CoOp's phrase initialization."""
        tok = self.backbone.tokenize([phrase])
        n = int(tok.lengths[0])
        with torch.no_grad():
            return self.backbone.token_embeddings(tok.ids[:, 1:n - 1])[0].clone()
