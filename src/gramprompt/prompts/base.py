"""The prompt-method protocol: named parameter tensors and a pure forward.

A method owns no learnable state. Its parameters live in a plain ``dict[str, Tensor]`` that the
caller creates with :meth:`PromptMethod.init_params` and passes to :meth:`PromptMethod.logits`;
that is what lets GRAM meta-learn the initialization and regulate the updates of *any* method
(``theta`` is just this dict, and ``theta'`` is another dict).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backbones.base import Backbone
from ..errors import GramError
from .templates import DEFAULT_TEMPLATE
from .text import TextCache, splice_context


@dataclass
class Batch:
    """Images for one forward: frozen ``features`` (B, D) when the method leaves the image
    encoder untouched (they can be cached); else cached ``stems`` (see ``Backbone.cache_stems``)
    or ``pixels`` (B, 3, H, W)."""

    features: Tensor | None = None
    pixels: Tensor | None = None
    stems: Tensor | None = None


@dataclass
class PromptConfig:
    """Prompt sizes and initialization. The paper uses 4 tokens (2 + 2 for UNIGRAM)."""

    text_tokens: int = 4
    text_init: str | None = None  # a phrase such as "a photo of a"; None: N(0, init_std)
    visual_tokens: int = 4
    visual_depth: int | None = None  # deep VPT: layers that get their own prompts (None: all)
    init_std: float = 0.02
    # the objectives of the methods that have their own (the others ignore them); defaults are the official ones
    text_guidance: float = 8.0  # KgCoOp's lambda: weight of 1 - mean cos(learned, hand-crafted class text features)
    projection: float = 1.0  # ProGrad's lambda: the share of a conflicting CE gradient's zero-shot component removed
    distill_temperature: float = 1.0  # ProGrad's T: temperature of its zero-shot distillation loss
    text_consistency: float = 25.0  # PromptSRC: weight of L1(text features, frozen prompt-ensemble features)
    image_consistency: float = 10.0  # PromptSRC: weight of L1(image features, frozen image features)

    def __post_init__(self) -> None:
        weights = {"text_guidance": self.text_guidance, "projection": self.projection,
                   "text_consistency": self.text_consistency, "image_consistency": self.image_consistency}
        bad = {k: v for k, v in weights.items() if not v >= 0}
        if not self.distill_temperature > 0:
            bad["distill_temperature"] = self.distill_temperature
        if bad:
            raise ValueError(f"objective weights must be >= 0 and distill_temperature > 0, got {bad}")


class PromptMethod:
    """Base class; subclasses set ``name``, ``groups`` and implement ``init_params``/``logits``."""

    name: ClassVar[str]
    uses_pixels: ClassVar[bool] = False  # True: the image encoder sees the prompts (no feature cache)
    text_per_image: ClassVar[bool] = False  # True: B * C text sequences per batch (evaluate in small chunks)
    groups: ClassVar[dict[str, str]] = {}  # parameter name -> group ("text", "visual", "meta_net")

    def __init__(self, backbone: Backbone, config: PromptConfig | None = None, *,
                 template: str = DEFAULT_TEMPLATE, text_cache: TextCache | None = None):
        self.backbone = backbone
        self.config = config or PromptConfig()
        self.template = template
        self.text = text_cache or TextCache(backbone)

    def with_template(self, template: str) -> "PromptMethod":
        """The same method (and caches) for another dataset's hand-crafted template."""
        other = copy.copy(self)
        other.template = template
        return other

    def init_params(self, generator: torch.Generator) -> dict[str, Tensor]:
        raise NotImplementedError

    def logits(self, params: dict[str, Tensor], batch: Batch, classnames: list[str]) -> Tensor:
        raise NotImplementedError

    def loss(self, params: dict[str, Tensor], batch: Batch, classnames: list[str], labels: Tensor) -> tuple[Tensor, Tensor]:
        """The training objective on one batch, and the logits: cross-entropy, unless the method adds its own
        terms (KgCoOp). Few-shot tuning, GRAM's inner and outer loops all minimize this."""
        logits = self.logits(params, batch, classnames)
        return F.cross_entropy(logits, labels), logits

    def gradients(self, params: dict[str, Tensor], batch: Batch, classnames: list[str], labels: Tensor, *,
                  create_graph: bool = False) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The loss, the logits and the gradients an update follows, for the parameters that require grad:
        those of :meth:`loss`, unless the method reshapes them (ProGrad)."""
        loss, logits = self.loss(params, batch, classnames, labels)
        names = [k for k, v in params.items() if v.requires_grad]
        grads = torch.autograd.grad(loss, [params[k] for k in names], create_graph=create_graph)
        return loss, logits, dict(zip(names, grads))

    def check_classnames(self, classnames: Sequence[str]) -> None:
        """Refuse class names whose prompt does not fit the text encoder's context length.

        Call it before training, with every class the prompts will meet (new classes, transfer
        targets): the backbone's tokenizer would cut such a prompt silently (hand-crafted
        templates), or the first forward on it would fail (learned context), maybe only after
        training.
        """
        limit = self.backbone.context_length
        lengths = self._prompt_lengths(list(classnames))
        too_long = [(name, n) for name, n in zip(classnames, lengths) if n is None or n > limit]
        if not too_long:
            return
        listed = ", ".join(f"{_short(name)!r} ({'over ' + str(limit) if n is None else n} tokens)"
                           for name, n in too_long[:3])
        more = f" and {len(too_long) - 3} more" if len(too_long) > 3 else ""
        raise GramError(f"class name(s) {listed}{more} too long for {self.name}: its prompt "
                        f"({self._prompt_form()}) must fit the text encoder's context length of {limit} "
                        "tokens; shorten the class name")

    def _prompt_lengths(self, classnames: list[str]) -> list[int | None]:
        """Tokens of each class's prompt: SOS, any learned context, the text, EOT (``None``: unknown,
        over the context length)."""
        if "text_ctx" not in self.groups:
            return self.text.token_counts([self.template.format(name) for name in classnames])
        context = self._text_context_tokens()
        counts = self.text.token_counts([f"{name}." for name in classnames])
        return [None if n is None else n + context for n in counts]

    def _prompt_form(self) -> str:
        if "text_ctx" not in self.groups:
            return f"template {self.template!r}"
        return f"{self._text_context_tokens()} context tokens + '<name>.'"

    def _text_context_tokens(self) -> int:
        """M, the learned vectors before the class name (the init phrase's length when text_tokens is 0)."""
        cfg = self.config
        if cfg.text_init and not cfg.text_tokens:
            return self.text.phrase_embeddings(cfg.text_init).shape[0]
        return cfg.text_tokens

    # -- helpers shared by the methods -------------------------------------------------------
    def _normal(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        t = torch.randn(shape, generator=generator, dtype=torch.float32) * self.config.init_std
        return t.to(self.backbone.device)

    def _image_features(self, batch: Batch, visual_prompts: Tensor | None = None, per_image: bool = False) -> Tensor:
        """The batch's image features through ``visual_prompts`` (``per_image``: one set per image)."""
        if visual_prompts is None and batch.features is not None:
            return batch.features
        if batch.stems is not None:
            return self.backbone.encode_image_from_stem(batch.stems, visual_prompts, per_image=per_image)
        if batch.pixels is None:
            raise ValueError(f"{self.name} needs pixels or stems in the batch (its prompts enter the image encoder)")
        if per_image:
            stems = self.backbone.encode_image_stem(batch.pixels)
            return self.backbone.encode_image_from_stem(stems, visual_prompts, per_image=True)
        return self.backbone.encode_image(batch.pixels, visual_prompts)

    def _scores(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        """Cosine similarity times CLIP's learned temperature, in float32. Text (C, D) or (B, C, D)."""
        img = F.normalize(image_features.float(), dim=-1)
        txt = F.normalize(text_features.float(), dim=-1)
        scale = self.backbone.logit_scale().float()
        if txt.dim() == 3:
            return scale * torch.einsum("bd,bcd->bc", img, txt)
        return scale * img @ txt.t()

    def _text_ctx_init(self, generator: torch.Generator) -> Tensor:
        cfg = self.config
        if cfg.text_init:
            ctx = self.text.phrase_embeddings(cfg.text_init).float()
            if cfg.text_tokens and ctx.shape[0] != cfg.text_tokens:
                raise ValueError(f"init phrase {cfg.text_init!r} has {ctx.shape[0]} tokens, "
                                 f"but {cfg.text_tokens} text tokens were asked for")
            return ctx
        return self._normal((cfg.text_tokens, self.backbone.text_width), generator)

    def _visual_ctx_init(self, generator: torch.Generator, deep: bool) -> Tensor:
        cfg, bb = self.config, self.backbone
        if not deep:
            return self._normal((cfg.visual_tokens, bb.vision_width), generator)
        depth = cfg.visual_depth or bb.vision_layers
        return self._normal((depth, cfg.visual_tokens, bb.vision_width), generator)

    def _context_text_features(self, ctx: Tensor, classnames: list[str]) -> Tensor:
        """Text features of ``[SOS] ctx <name>. [EOT]``: (C, D), or (B, C, D) for per-image ctx."""
        embeds, lengths = splice_context(self.text.class_tokens(classnames), ctx)
        feats = self.backbone.encode_text_embeddings(embeds, lengths)
        return feats if ctx.dim() == 2 else feats.view(ctx.shape[0], len(classnames), -1)


def plain_objective(method: PromptMethod | type[PromptMethod]) -> bool:
    """True when the method trains on the cross-entropy of its logits alone (no own :meth:`PromptMethod.loss` or
    :meth:`PromptMethod.gradients`): what the batched tuner and meta-step assume. Takes a method or its class."""
    cls = method if isinstance(method, type) else type(method)
    return cls.loss is PromptMethod.loss and cls.gradients is PromptMethod.gradients


def _short(name: str, limit: int = 60) -> str:
    """A long class name cut for an error message that stays one readable line."""
    return name if len(name) <= limit else name[:limit] + "..."
