"""The small trained image-side parts of the default backbone (LiT-style: both towers stay frozen).

Image embedding = base + branch:
- base: a linear map of the pooled EfficientNet feature into MiniLM's space, plus the ConSE route
  (the probability-weighted MiniLM embedding of the frozen ImageNet classifier's top-k label names),
  each L2-normalized, mixed by a learned weight;
- branch: a residual transformer over the 7x7 feature map as 49 tokens and a readout token, into
  which VPT prompt tokens go (shallow: after the map tokens; deep: replaced at every layer). Its
  output projection starts at zero, so an untrained branch is a no-op and the base is the floor.
The frozen-at-prompt-time computation up to the branch's input is the "stem" (cacheable).
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


class ImageHead(nn.Module):
    def __init__(self, cfg: HeadConfig, label_embeddings: Tensor):
        super().__init__()
        self.cfg = cfg
        d, w = cfg.embed_dim, cfg.width
        self.linear = nn.Linear(FEATURE_DIM, d)
        self.register_buffer("label_embeddings", F.normalize(label_embeddings.float(), dim=-1))
        self.conse_weight = nn.Parameter(torch.tensor(1.0))
        self.token_proj = nn.Linear(FEATURE_DIM, w)
        self.pos = nn.Parameter(torch.randn(MAP_TOKENS, w) * 0.02)
        self.readout = nn.Parameter(torch.randn(w) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(w, cfg.heads, 4 * w, dropout=cfg.dropout, activation="gelu",
                                       batch_first=True, norm_first=True) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(w)
        self.out = nn.Linear(w, d)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @property
    def stem_dim(self) -> int:
        return self.cfg.embed_dim + MAP_TOKENS * self.cfg.width

    def conse(self, imagenet_logits: Tensor) -> Tensor:
        """ConSE: sum of the top-k label-name embeddings weighted by their renormalized probability."""
        top, idx = imagenet_logits.float().softmax(-1).topk(self.cfg.conse_topk, dim=-1)
        weights = (top / top.sum(-1, keepdim=True)).to(self.label_embeddings.dtype)  # softmax in fp32, mix in ours
        return F.normalize(torch.einsum("bk,bkd->bd", weights, self.label_embeddings[idx]), dim=-1)

    def base(self, pooled: Tensor, imagenet_logits: Tensor) -> Tensor:
        return F.normalize(self.linear(pooled), dim=-1) + self.conse_weight * self.conse(imagenet_logits)

    def stem(self, fmap: Tensor, imagenet_logits: Tensor) -> Tensor:
        """(B, 1280, 7, 7) map + (B, 1000) ImageNet logits -> (B, embed_dim + 49 * width), flat."""
        base = self.base(fmap.mean((2, 3)), imagenet_logits)
        tokens = self.token_proj(fmap.flatten(2).transpose(1, 2)) + self.pos
        return torch.cat([base, tokens.flatten(1)], dim=1)

    def from_stem(self, stem: Tensor, visual_prompts: Tensor | None = None, *, per_image: bool = False) -> Tensor:
        d, w = self.cfg.embed_dim, self.cfg.width
        base, tokens = stem[:, :d], stem[:, d:].view(len(stem), MAP_TOKENS, w)
        x = torch.cat([self.readout.expand(len(stem), 1, w).to(tokens.dtype), tokens], dim=1)
        x = run_with_prompts(x, self.layers, visual_prompts, per_image=per_image)
        return base + self.out(self.norm(x[:, 0]))
