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
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from gramprompt.autocast import autocast
from gramprompt.backbones.base import Backbone, TokenizedText
from gramprompt.chc import reuse
from gramprompt.chc.config import FeatureConfig
from gramprompt.chc.store import shard_counts, shard_paths, write_shard
from gramprompt.data.images import ImageLoadError, ImageTransform, load_image
from gramprompt.data.pairs import ImageTextPair, PairSource
from gramprompt.tuning.features import backbone_fingerprint

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
    return _encode_tokens(backbone, backbone.tokenize(list(texts)), chunk)


def _encode_tokens(backbone: Backbone, tok: TokenizedText, chunk: int) -> torch.Tensor:
    order = torch.argsort(tok.lengths.cpu(), stable=True).to(tok.ids.device)
    out = torch.empty(len(tok.ids), backbone.embed_dim, device=backbone.device)
    for start in range(0, len(tok.ids), chunk):
        idx = order[start:start + chunk]
        lengths = tok.lengths[idx]
        ids = tok.ids[idx, :int(lengths.max())]
        out[idx] = backbone.encode_text_embeddings(backbone.token_embeddings(ids), lengths).float()
    return out


@torch.inference_mode()
def backbone_features(backbone: Backbone, pixels: torch.Tensor, captions: Sequence[str],
                      stems: list[np.ndarray] | None = None,
                      image_autocast: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalized image features (N, D) and the backbone's image-caption cosine similarity (N,);
    with a ``stems`` list, the images' stems are appended to it (float16, flat) on the way. ``image_autocast``
    applies to the image tower only."""
    pixels = pixels.to(backbone.device, backbone.dtype)
    with autocast(backbone.device, image_autocast):
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
    """Holds the frozen models; ``run_shard`` turns one source shard into one store shard.

    ``fast`` (default) computes the same arrays as the reference path (``fast=False``, the original
    per-batch code) up to float32 rounding, faster (``benchmarks/bench_chc_features.py``,
    ``tests/test_chc_features_fast.py``):

    * pixels: each image is decoded and resized as ``transform.eval`` does, kept as uint8, and a batch is
      converted and normalized at once, channels-last (the trunk's layout), by the same float32 operations;
    * images: the backbone's ``inference_stem`` where it has one (the default backbone's trunk as fused
      oneDNN calls on CPU);
    * captions: the shard's distinct captions go through the backbone's text tower once, sorted by length; where the
      caption model is that same tower (the default backbone's frozen MiniLM, mean-pooled and normalized:
      :func:`shares_text_tower` checks weights, tokenizer, pooling and a probe), its output is also the
      stored caption embedding, so MiniLM runs once per caption instead of twice. Captions the tower may
      have truncated go through the caption model itself;
    * cores: on CPU, torch's thread budget runs as that many worker threads, each taking whole image batches
      and caption chunks with single-threaded operations (:func:`run_jobs`), instead of every operation
      split over intra-op threads.
    """

    def __init__(self, backbone: Backbone, text_model, config: FeatureConfig | None = None, *, fast: bool = True):
        self.backbone = backbone
        self.text_model = text_model
        self.config = config or FeatureConfig()
        self.fast = fast
        self._shared: bool | None = None  # shares_text_tower, decided at the first shard
        self._fingerprint: str | None = None  # backbone_fingerprint, for shard reuse

    def run_shard(self, source: PairSource, index: int, out: str | os.PathLike) -> dict[str, int]:
        """Extract shard ``index`` into ``out`` unless it is already there; returns its counts."""
        out = Path(out)
        if shard_paths(out, index)["meta"].exists():
            return {}
        shard = source.read_shard(index)
        counts: Counter[str] = Counter(shard.counts)
        counts.pop("pairs", None)
        digest = reuse.shard_digest(self._reuse_settings(), shard.pairs, dict(counts)) if self.config.reuse else None
        if digest is not None and reuse.fetch(digest, out, index):
            return shard_counts(out, index)
        compute = self.features_fast if self.fast else self.features_reference
        pairs, img, txt, sim, stems = compute(shard.pairs, counts)
        counts["pairs"] = len(pairs)
        dtype = np.dtype(self.config.dtype)
        write_shard(out, index, img.astype(dtype), txt.astype(dtype), _rows(pairs, sim), dict(counts), stems)
        if digest is not None:
            reuse.keep(digest, out, index)
        return dict(counts)

    def _reuse_settings(self) -> dict:
        """What a shard's files depend on besides its pairs (``chc.reuse``)."""
        if self._fingerprint is None:
            self._fingerprint = backbone_fingerprint(self.backbone)
        return {"backbone": self._fingerprint, "features": self.config.recorded(), "fast": self.fast,
                "stems": bool(self.config.stems and self.backbone.cache_stems)}

    def _stem_parts(self) -> list[np.ndarray] | None:
        return [] if self.config.stems and self.backbone.cache_stems else None

    def _empty(self, stem_parts) -> tuple[np.ndarray, ...]:
        stems = None if stem_parts is None else np.zeros((0, 0), np.float16)
        return (np.zeros((0, self.backbone.embed_dim), np.float32),
                np.zeros((0, text_dim(self.text_model)), np.float32), np.zeros(0, np.float32), stems)

    def features_reference(self, shard_pairs: Sequence[ImageTextPair], counts: Counter[str]):
        """The original path: per batch, decode + ``transform.eval`` per image, ``backbone_features``; then the
        caption model on all captions. Returns (pairs kept, img, txt, sim, stems or None); counts bad images."""
        pairs: list[ImageTextPair] = []
        img_parts, sim_parts = [], []
        stem_parts = self._stem_parts()
        bs = self.config.batch_size
        for start in range(0, len(shard_pairs), bs):
            batch, pixels = [], []
            for pair in shard_pairs[start:start + bs]:
                try:  # decode and resize at once: a shard of full-size images would not fit in memory
                    pixels.append(self.backbone.transform.eval(load_image(pair.image)))
                except ImageLoadError as err:
                    counts["corrupt_image"] += 1
                    logger.debug("%s", err)
                    continue
                batch.append(pair)
            if batch:
                img, sim = backbone_features(self.backbone, torch.stack(pixels), [p.caption for p in batch], stem_parts,
                                             self.config.image_autocast)
                img_parts.append(img)
                sim_parts.append(sim)
                pairs.extend(batch)
        if not pairs:
            return (pairs, *self._empty(stem_parts))
        img, sim = np.concatenate(img_parts), np.concatenate(sim_parts)
        txt = embed_captions(self.text_model, [p.caption for p in pairs], bs)
        stems = None if stem_parts is None else np.concatenate(stem_parts)
        return pairs, img, txt, sim, stems

    def features_fast(self, shard_pairs: Sequence[ImageTextPair], counts: Counter[str]):
        """The same arrays as :meth:`features_reference`, up to float32 rounding (see the class docstring)."""
        backbone, bs = self.backbone, self.config.batch_size
        to_pixels = BatchPixels(backbone.transform)
        want_stems = self._stem_parts() is not None
        # every caption of the shard, each distinct one once (a pair whose image fails costs one caption's
        # forward); tokenized here, in this thread: the tokenizer's state is not safe to share between threads
        distinct = list(dict.fromkeys(p.caption for p in shard_pairs))
        tok = backbone.tokenize(distinct) if distinct else None
        order = torch.argsort(tok.lengths.cpu(), stable=True).to(tok.ids.device) if distinct else None
        encoded = torch.empty(len(distinct), backbone.embed_dim, device=backbone.device)

        def image_job(start: int):
            batch, images, errors = [], [], []
            for pair in shard_pairs[start:start + bs]:
                try:
                    images.append(to_pixels.prepare(load_image(pair.image)))
                except ImageLoadError as err:
                    errors.append(err)
                    continue
                batch.append(pair)
            if not batch:
                return batch, None, None, errors
            stems: list[np.ndarray] | None = [] if want_stems else None
            img = image_features(backbone, to_pixels.stack(images), stems, self.config.image_autocast)
            return batch, img, stems[0] if stems else None, errors

        def text_job(start: int):
            idx = order[start:start + TEXT_CHUNK]
            lengths = tok.lengths[idx]
            ids = tok.ids[idx, :int(lengths.max())]
            with torch.inference_mode():
                encoded[idx] = backbone.encode_text_embeddings(backbone.token_embeddings(ids), lengths).float()

        jobs = [partial(image_job, s) for s in range(0, len(shard_pairs), bs)]
        n_image_jobs = len(jobs)
        jobs += [partial(text_job, s) for s in range(0, len(distinct), TEXT_CHUNK)]
        results = run_jobs(jobs, self.workers())[:n_image_jobs]
        pairs: list[ImageTextPair] = []
        img_parts, stem_parts = [], []
        for batch, img, stem, errors in results:
            counts["corrupt_image"] += len(errors)
            for err in errors:
                logger.debug("%s", err)
            if batch:
                pairs.extend(batch)
                img_parts.append(img)
                stem_parts.append(stem)
        if not pairs:
            return (pairs, *self._empty([] if want_stems else None))
        with torch.inference_mode():
            text = torch.nn.functional.normalize(encoded, dim=-1)
            where = {c: i for i, c in enumerate(distinct)}
            rows = torch.as_tensor([where[p.caption] for p in pairs], device=text.device)
            img = torch.cat(img_parts)
            sim = (img * text[rows]).sum(-1)
            txt = self._caption_embeddings(distinct, tok, text)[rows.cpu().numpy()]
        stems = np.concatenate(stem_parts) if want_stems else None
        return pairs, img.cpu().numpy(), txt, sim.cpu().numpy(), stems

    @torch.inference_mode()
    def caption_features(self, captions: Sequence[str]) -> tuple[torch.Tensor, np.ndarray]:
        """The backbone's normalized text features (N, D) and the caption model's embeddings (N, d) of ``captions``,
        as the fast path computes them (in this thread)."""
        tok = self.backbone.tokenize(list(captions))
        text = torch.nn.functional.normalize(_encode_tokens(self.backbone, tok, TEXT_CHUNK), dim=-1)
        return text, self._caption_embeddings(list(captions), tok, text)

    def workers(self) -> int:
        """Worker threads of the fast path on CPU: torch's thread budget, spent on batches instead of inside each
        operation (each worker's operations run single-threaded; see :func:`run_jobs`). 1 on an accelerator."""
        return max(1, torch.get_num_threads()) if self.backbone.device.type == "cpu" else 1

    def _caption_embeddings(self, captions: list[str], tok: TokenizedText, text: torch.Tensor) -> np.ndarray:
        """The caption model's embeddings of ``captions``: the backbone's normalized text features ``text`` where
        the caption model is that tower (:func:`shares_text_tower`), except for captions the tower may have cut."""
        bs = self.config.batch_size
        if self._shared is None:
            self._shared = shares_text_tower(self.backbone, self.text_model)
        if not self._shared:
            return embed_captions(self.text_model, captions, bs)
        txt = text.cpu().numpy().copy()
        # the tower cuts at its context length, the caption model at its own max_seq_length
        limit = min(self.backbone.context_length - 1, int(self.text_model.max_seq_length))
        cut = np.flatnonzero(tok.lengths.cpu().numpy() > limit)
        if len(cut):
            txt[cut] = embed_captions(self.text_model, [captions[i] for i in cut], bs)
        return txt


def run_jobs(jobs: Sequence[Callable[[], object]], workers: int) -> list:
    """``[job() for job in jobs]``, on ``workers`` threads when > 1, with torch's intra-op threads set to 1
    meanwhile (restored after). The jobs are whole batches: running them side by side uses the cores with no
    synchronization inside each operation, which on a shared machine (a preempted thread stalls every
    parallel region of the other) is far faster than intra-op threads (benchmarks/bench_chc_features.py).
    Each job must enter ``torch.inference_mode`` itself (grad mode is per thread)."""
    if workers <= 1 or len(jobs) <= 1:
        return [job() for job in jobs]
    from concurrent.futures import ThreadPoolExecutor

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="chc-features") as pool:
            return list(pool.map(lambda job: job(), jobs))
    finally:
        torch.set_num_threads(threads)


TEXT_CHUNK = 16  # captions per text-tower forward in the fast path (a shard's distinct captions, sorted by length;
# larger chunks pad the long tail further: 64 was 2x slower per caption on openclipart captions, 16-32 best)


@torch.inference_mode()
def image_features(backbone: Backbone, pixels: torch.Tensor, stems: list[np.ndarray] | None = None,
                   image_autocast: str | None = None) -> torch.Tensor:
    """L2-normalized image features (N, D) as ``backbone_features`` computes them, through the backbone's
    ``inference_stem`` where it has one; with a ``stems`` list, the stems are appended (float16, flat). Under
    ``image_autocast`` the plain stem runs instead (the fused trunk holds fp32 weights and ignores autocast)."""
    pixels = pixels.to(backbone.device, backbone.dtype)
    stem_fn = None if image_autocast else getattr(backbone, "inference_stem", None)
    with autocast(backbone.device, image_autocast):
        if stems is not None or stem_fn is not None:
            stem = (stem_fn or backbone.encode_image_stem)(pixels)
            if stems is not None:
                stems.append(stem.reshape(len(stem), -1).to(torch.float16).cpu().numpy())
            img = backbone.encode_image_from_stem(stem)
        else:
            img = backbone.encode_image(pixels)
    return torch.nn.functional.normalize(img.float(), dim=-1)


class BatchPixels:
    """``transform.eval`` for a batch: ``prepare`` resizes and crops each image as ``ImageTransform.eval`` does
    and keeps it as uint8; ``stack`` converts the batch to float32 and normalizes it with the same
    operations, in one pass and channels-last. Equal to ``torch.stack([transform.eval(img) ...])`` bit for
    bit (``tests/test_chc_features_fast.py``). A transform of another type is applied per image."""

    def __init__(self, transform):
        self.transform = transform
        self.exact = type(transform) is ImageTransform
        if self.exact:
            self.mean = torch.tensor(transform.mean, dtype=torch.float32).view(1, 3, 1, 1)
            self.std = torch.tensor(transform.std, dtype=torch.float32).view(1, 3, 1, 1)

    def prepare(self, img: Image.Image) -> np.ndarray | torch.Tensor:
        if not self.exact:
            return self.transform.eval(img)
        size = self.transform.size
        w, h = img.size  # ImageTransform.eval: bicubic resize of the shorter side, centre crop
        if w <= h:
            new_w, new_h = size, int(size * h / w)
        else:
            new_w, new_h = int(size * w / h), size
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
        top = int(round((new_h - size) / 2.0))
        left = int(round((new_w - size) / 2.0))
        if (left, top, new_w, new_h) != (0, 0, size, size):
            img = img.crop((left, top, left + size, top + size))
        if img.mode != "RGB":
            img = img.convert("RGB")
        return np.asarray(img, dtype=np.uint8)

    def stack(self, images: list) -> torch.Tensor:
        if not self.exact:
            return torch.stack(images)
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(torch.float32)  # (B, 3, H, W) channels-last
        return x.div_(255.0).sub_(self.mean).div_(self.std)


def shares_text_tower(backbone: Backbone, text_model) -> bool:
    """True when ``text_model`` (sentence-transformers) computes the backbone's own text features, normalized:
    the default backbone's frozen MiniLM tower (``[CLS] tokens [SEP]``, mean-pooled over the mask) against a
    model made only of that transformer with the same weights and tokenizer, mean pooling and normalization,
    and no prompt. Then one forward gives both the caption embedding and the text side of the image-caption
    similarity. The structure is checked, then a probe of captions through both within float32 rounding."""
    try:
        from gramprompt.backbones.default.model import MiniLMText
    except ImportError:
        return False
    tower = getattr(backbone, "text", None)
    if not isinstance(tower, MiniLMText) or backbone.dtype != torch.float32:
        return False
    try:
        modules = list(text_model)
        transformer, pooling, norm = modules
        pool = pooling.get_config_dict()
        if "pooling_mode" in pool:  # sentence-transformers >= 5
            mean_only = pool["pooling_mode"] == "mean"
        else:  # one flag per mode
            modes = {k for k, v in pool.items() if k.startswith("pooling_mode_") and v}
            mean_only = modes == {"pooling_mode_mean_tokens"}
        if not (mean_only and type(norm).__name__ == "Normalize" and type(pooling).__name__ == "Pooling"
                and type(transformer).__name__ == "Transformer"):
            return False
        if getattr(text_model, "default_prompt_name", None) or getattr(text_model, "truncate_dim", None) \
                or getattr(transformer, "do_lower_case", False) or getattr(transformer, "processing_kwargs", None):
            return False
        bert = transformer.auto_model
        tokenizer = getattr(transformer, "tokenizer", None) or getattr(transformer, "processor", None)
    except (TypeError, ValueError, AttributeError):
        return False
    if type(bert) is not type(tower.bert) or type(tokenizer) is not type(tower.tokenizer):
        return False
    if next(bert.parameters()).device != backbone.device or next(bert.parameters()).dtype != torch.float32:
        return False
    mine, theirs = tower.bert.state_dict(), bert.state_dict()
    if mine.keys() != theirs.keys() or any(mine[k].shape != theirs[k].shape or not torch.equal(mine[k], theirs[k])
                                           for k in mine):
        return False
    if _tokenizer_spec(tokenizer) != _tokenizer_spec(tower.tokenizer):
        return False
    with torch.inference_mode():
        ours = torch.nn.functional.normalize(encode_texts(backbone, PROBE), dim=-1).cpu().numpy()
    theirs_emb = embed_captions(text_model, PROBE)
    # float32 rounding of two 6-layer MiniLM forwards of different batch shapes: EPS32 * sqrt(1536) * 70 (~3e-4;
    # tests/tolerance.py); a different model or tokenization moves a unit vector by O(0.1)
    cfg = bert.config
    tol = float(np.finfo(np.float32).eps) * np.sqrt(cfg.intermediate_size) * (11 * cfg.num_hidden_layers + 4)
    return bool(np.abs(ours - theirs_emb).max() <= tol)


def _tokenizer_spec(tokenizer) -> object:
    """What decides a tokenizer's ids: the Rust tokenizer's full definition (vocabulary, normalizer, pre-tokenizer,
    post-processor) without the padding and truncation state the last call left in it; else its vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return type(tokenizer).__name__, tokenizer.get_vocab()
    spec = json.loads(backend.to_str())
    spec.pop("padding", None)
    spec.pop("truncation", None)
    return spec


PROBE = ["a red apple", "Green leaf, plant!", "cat", "two dogs playing fetch in the park at dusk",
         "arrow-left icon", "ÉMOJI: smiling face with heart-eyes", "x" * 40]


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
