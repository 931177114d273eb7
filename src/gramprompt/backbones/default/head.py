"""The small trained image-side parts of the default backbone (LiT-style: both towers stay frozen).

Both versions start from the "base" embedding: a linear map of the pooled EfficientNet feature into
MiniLM's space, plus the ConSE route (the probability-weighted MiniLM embedding of the frozen ImageNet
classifier's top-k label names), each L2-normalized, mixed by a learned weight.

- v1 (:class:`ImageHead`): embedding = base + branch, the branch a residual transformer over the 7x7
  feature map as 49 tokens and a readout token, into which VPT prompt tokens go. Its output projection
  starts at zero and training left it near zero, so visual prompts barely move the embedding.
- v2 (:class:`TokenHead`): the base enters the transformer as its first token, beside the 49 map
  tokens, and the embedding is read from that token after every layer: the whole embedding passes
  through the layers that visual prompts enter, so prompts can steer it.

The frozen-at-prompt-time computation up to the transformer's input is the "stem" (cacheable).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..visual_prompts import run_with_prompts

FEATURE_DIM = 1280  # EfficientNet-Lite0's last feature map channels
MAP_TOKENS = 49  # its 7x7 grid at 224 px
IMAGENET_CLASSES = 1000  # rows of the ConSE label embeddings: the frozen classifier's labels


@dataclass(frozen=True)
class HeadConfig:
    embed_dim: int = 384  # MiniLM's width: the joint space
    width: int = 256  # branch token width (= visual prompt width)
    layers: int = 2
    heads: int = 4
    conse_topk: int = 5
    dropout: float = 0.1  # only active while the head itself trains

    def to_dict(self) -> dict:
        return asdict(self)


class _BaseEmbedding(nn.Module):
    """The parts both versions share: the linear + ConSE base, the map tokens, the layers, the temperature."""

    def __init__(self, cfg: HeadConfig, label_embeddings: Tensor):
        super().__init__()
        self.cfg = cfg
        d, w = cfg.embed_dim, cfg.width
        self.linear = nn.Linear(FEATURE_DIM, d)
        self.register_buffer("label_embeddings", F.normalize(label_embeddings.float(), dim=-1))
        self.conse_weight = nn.Parameter(torch.tensor(1.0))
        self.token_proj = nn.Linear(FEATURE_DIM, w)
        self.pos = nn.Parameter(torch.randn(MAP_TOKENS, w) * 0.02)
        self._token_parameters()  # here, so that each version's parameters draw the global RNG in a fixed order
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(w, cfg.heads, 4 * w, dropout=cfg.dropout, activation="gelu",
                                       batch_first=True, norm_first=True) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(w)
        self.out = nn.Linear(w, d)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def _token_parameters(self) -> None:
        raise NotImplementedError

    def map_tokens(self, fmap: Tensor) -> Tensor:
        return self.token_proj(fmap.flatten(2).transpose(1, 2)) + self.pos

    def conse(self, imagenet_logits: Tensor) -> Tensor:
        """ConSE: sum of the top-k label-name embeddings weighted by their renormalized probability."""
        top, idx = imagenet_logits.float().softmax(-1).topk(self.cfg.conse_topk, dim=-1)
        weights = (top / top.sum(-1, keepdim=True)).to(self.label_embeddings.dtype)  # softmax in fp32, mix in ours
        return F.normalize(torch.einsum("bk,bkd->bd", weights, self.label_embeddings[idx]), dim=-1)

    def base(self, pooled: Tensor, imagenet_logits: Tensor) -> Tensor:
        return F.normalize(self.linear(pooled), dim=-1) + self.conse_weight * self.conse(imagenet_logits)

class ImageHead(_BaseEmbedding):
    """v1: base + a residual branch whose output projection starts at zero (an untrained branch is a no-op)."""

    version = "v1"

    def __init__(self, cfg: HeadConfig, label_embeddings: Tensor):
        super().__init__(cfg, label_embeddings)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _token_parameters(self) -> None:
        self.readout = nn.Parameter(torch.randn(self.cfg.width) * 0.02)

    @property
    def stem_dim(self) -> int:
        return self.cfg.embed_dim + MAP_TOKENS * self.cfg.width

    def stem(self, fmap: Tensor, imagenet_logits: Tensor) -> Tensor:
        """(B, 1280, 7, 7) map + (B, 1000) ImageNet logits -> (B, embed_dim + 49 * width), flat."""
        base = self.base(fmap.mean((2, 3)), imagenet_logits)
        return torch.cat([base, self.map_tokens(fmap).flatten(1)], dim=1)

    def from_stem(self, stem: Tensor, visual_prompts: Tensor | None = None, *, per_image: bool = False) -> Tensor:
        d, w = self.cfg.embed_dim, self.cfg.width
        base, tokens = stem[:, :d], stem[:, d:].view(len(stem), MAP_TOKENS, w)
        x = torch.cat([self.readout.expand(len(stem), 1, w).to(tokens.dtype), tokens], dim=1)
        x = run_with_prompts(x, self.layers, visual_prompts, per_image=per_image)
        return base + self.out(self.norm(x[:, 0]))


class TokenHead(_BaseEmbedding):
    """v2: the base, projected to the token width, is the transformer's first token; the embedding is that
    token's output. Nothing bypasses the layers, so visual prompts (appended after the 50 tokens) can move
    the whole embedding. A prompt of zeros is not a no-op: the layers' pre-LayerNorm maps it to its bias,
    which the other tokens attend to, as in CLIP's ViT."""

    version = "v2"

    def _token_parameters(self) -> None:
        self.base_proj = nn.Linear(self.cfg.embed_dim, self.cfg.width)

    @property
    def stem_dim(self) -> int:
        return (1 + MAP_TOKENS) * self.cfg.width

    def stem(self, fmap: Tensor, imagenet_logits: Tensor) -> Tensor:
        """(B, 1280, 7, 7) map + (B, 1000) ImageNet logits -> (B, 50 * width): the base token, then the map's."""
        base = self.base_proj(self.base(fmap.mean((2, 3)), imagenet_logits))
        return torch.cat([base[:, None], self.map_tokens(fmap)], dim=1).flatten(1)

    def from_stem(self, stem: Tensor, visual_prompts: Tensor | None = None, *, per_image: bool = False) -> Tensor:
        x = run_with_prompts(stem.view(len(stem), 1 + MAP_TOKENS, self.cfg.width), self.layers, visual_prompts,
                             per_image=per_image)
        return self.out(self.norm(x[:, 0]))


HEADS: dict[str, type[_BaseEmbedding]] = {"v1": ImageHead, "v2": TokenHead}
