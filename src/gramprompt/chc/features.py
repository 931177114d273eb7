"""Stage 1: caption embeddings (Sentence-BERT) and frozen image features, one shard at a time.

Each shard is read from its pair source, its images decoded (corrupt ones skipped and counted),
and written to the feature store only when complete, so extraction resumes after a kill at the
first unfinished shard and can be split over processes, Ray workers or scheduler jobs.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from gramprompt.backbones.base import Backbone
from gramprompt.chc.config import FeatureConfig
from gramprompt.chc.store import shard_paths, write_shard
from gramprompt.data.images import ImageLoadError, load_image
from gramprompt.data.pairs import ImageTextPair, PairSource

logger = logging.getLogger(__name__)


def load_text_model(name: str = "default", device: str | torch.device = "cpu"):
    """A sentence-transformers model: ``default`` is the offline all-MiniLM-L6-v2 (the paper's
    Sentence-BERT role); otherwise any name (hub, needs a network) or local path."""
    from sentence_transformers import SentenceTransformer

    if name == "default":
        from gramprompt.backbones.default.towers import minilm_path

        name = minilm_path()
    return SentenceTransformer(name, device=str(device))


def embed_captions(model, captions: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """(N, d) L2-normalized float32 sentence embeddings."""
    out = model.encode(list(captions), batch_size=batch_size, normalize_embeddings=True,
                       convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(out, dtype=np.float32).reshape(len(captions), -1)


def text_dim(model) -> int:
    """Embedding width (sentence-transformers renamed the getter in 5.x)."""
    get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(get())


@torch.inference_mode()
def encode_texts(backbone: Backbone, texts: Sequence[str], chunk: int = 16) -> torch.Tensor:
    """The backbone's text features of ``texts`` (N, D), in their order. They are encoded shortest
    first, ``chunk`` at a time, so that each forward is cut at a length close to its texts' own
    instead of the longest caption's (captions vary from a few tokens to the context length)."""
    tok = backbone.tokenize(list(texts))
    order = torch.argsort(tok.lengths.cpu(), stable=True).to(tok.ids.device)
    out = torch.empty(len(texts), backbone.embed_dim, device=backbone.device)
    for start in range(0, len(texts), chunk):
        idx = order[start:start + chunk]
        lengths = tok.lengths[idx]
        ids = tok.ids[idx, :int(lengths.max())]
        out[idx] = backbone.encode_text_embeddings(backbone.token_embeddings(ids), lengths).float()
    return out


@torch.inference_mode()
def backbone_features(backbone: Backbone, pixels: torch.Tensor, captions: Sequence[str],
                      stems: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalized image features (N, D) and the backbone's image-caption cosine similarity (N,);
    with a ``stems`` list, the images' stems are appended to it (float16, flat) on the way."""
    pixels = pixels.to(backbone.device, backbone.dtype)
    if stems is not None:
        stem = backbone.encode_image_stem(pixels)
        stems.append(stem.reshape(len(stem), -1).to(torch.float16).cpu().numpy())
        img = backbone.encode_image_from_stem(stem)
    else:
        img = backbone.encode_image(pixels)
    img = torch.nn.functional.normalize(img.float(), dim=-1)
    txt = torch.nn.functional.normalize(encode_texts(backbone, captions), dim=-1)
    return img.cpu().numpy(), (img * txt).sum(-1).cpu().numpy()


class FeatureExtractor:
    """Holds the frozen models; ``run_shard`` turns one source shard into one store shard."""

    def __init__(self, backbone: Backbone, text_model, config: FeatureConfig | None = None):
        self.backbone = backbone
        self.text_model = text_model
        self.config = config or FeatureConfig()

    def run_shard(self, source: PairSource, index: int, out: str | os.PathLike) -> dict[str, int]:
        """Extract shard ``index`` into ``out`` unless it is already there; returns its counts."""
        out = Path(out)
        if shard_paths(out, index)["meta"].exists():
            return {}
        shard = source.read_shard(index)
        counts: Counter[str] = Counter(shard.counts)
        counts.pop("pairs", None)
        pairs: list[ImageTextPair] = []
        img_parts, sim_parts = [], []
        stem_parts: list[np.ndarray] | None = [] if self.config.stems and self.backbone.cache_stems else None
        bs = self.config.batch_size
        for start in range(0, len(shard.pairs), bs):
            batch, pixels = [], []
            for pair in shard.pairs[start:start + bs]:
                try:  # decode and resize at once: a shard of full-size images would not fit in memory
                    pixels.append(self.backbone.transform.eval(load_image(pair.image)))
                except ImageLoadError as err:
                    counts["corrupt_image"] += 1
                    logger.debug("%s", err)
                    continue
                batch.append(pair)
            if batch:
                img, sim = backbone_features(self.backbone, torch.stack(pixels), [p.caption for p in batch], stem_parts)
                img_parts.append(img)
                sim_parts.append(sim)
                pairs.extend(batch)
        dim_txt = text_dim(self.text_model)
        img = np.concatenate(img_parts) if pairs else np.zeros((0, self.backbone.embed_dim), np.float32)
        sim = np.concatenate(sim_parts) if pairs else np.zeros(0, np.float32)
        txt = embed_captions(self.text_model, [p.caption for p in pairs], bs) if pairs else \
            np.zeros((0, dim_txt), np.float32)
        counts["pairs"] = len(pairs)
        dtype = np.dtype(self.config.dtype)
        stems = None
        if stem_parts is not None:
            stems = np.concatenate(stem_parts) if stem_parts else np.zeros((0, 0), np.float16)
        write_shard(out, index, img.astype(dtype), txt.astype(dtype), _rows(pairs, sim), dict(counts), stems)
        return dict(counts)


def _rows(pairs: Sequence[ImageTextPair], sim: np.ndarray) -> dict[str, list]:
    return {"key": [p.key for p in pairs], "caption": [p.caption for p in pairs],
            "source": [p.source for p in pairs], "sim": sim.tolist(),
            "meta": [json.dumps(p.meta, sort_keys=True, default=str) for p in pairs]}


def my_shards(num_shards: int, shard_index: int = 0, num_jobs: int = 1) -> list[int]:
    """The shards job ``shard_index`` of ``num_jobs`` owns (round robin), for schedulers like SLURM."""
    if not 0 <= shard_index < num_jobs:
        raise ValueError(f"shard index {shard_index} not in 0..{num_jobs - 1}")
    return list(range(shard_index, num_shards, num_jobs))


def extract(extractor: FeatureExtractor, source: PairSource, out: str | os.PathLike,
            shards: Sequence[int] | None = None,
            on_shard: Callable[[int, dict[str, int]], None] | None = None) -> None:
    """Extract ``shards`` (default: all) in order, in this process; finished shards are skipped."""
    shards = range(source.num_shards()) if shards is None else shards
    for i in tqdm(shards, desc=f"features {source.name}", unit="shard"):
        counts = extractor.run_shard(source, i, out)
        if on_shard is not None:
            on_shard(i, counts)


# --------------------------------------------------------------------------- worker side
# Process and Ray workers get specs (strings), load the models once per process and keep them.


@lru_cache(maxsize=2)
def _worker_extractor(backbone_spec: str, device: str | None, text_model: str, config_json: str) -> FeatureExtractor:
    from gramprompt.backbones import load_backbone

    backbone = load_backbone(backbone_spec, device=device)
    return FeatureExtractor(backbone, load_text_model(text_model, backbone.device),
                            FeatureConfig(**json.loads(config_json)))


@lru_cache(maxsize=2)
def _worker_source(spec: str, shard_size: int) -> PairSource:
    from gramprompt.data.pairs import open_pair_source

    return open_pair_source(spec, shard_size)


def extract_shard_job(job: tuple[str, int, int, str, str, str | None, str]) -> dict[str, int]:
    """One shard from specs only: (pairs spec, shard size, shard, out dir, backbone spec, device,
    FeatureConfig as JSON). Picklable, for process pools and Ray."""
    pairs_spec, shard_size, index, out, backbone_spec, device, config_json = job
    if device is None or device == "cpu":
        torch.set_num_threads(1)  # one shard per core; the executor decides the parallelism
    text_model = json.loads(config_json)["text_model"]
    extractor = _worker_extractor(backbone_spec, device, text_model, config_json)
    return extractor.run_shard(_worker_source(pairs_spec, shard_size), index, out)
