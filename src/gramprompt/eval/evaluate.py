"""Top-1 accuracy of a prompt method with given parameters on a list of samples."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..data.dataset import Sample
from ..data.images import load_batch
from ..errors import NonFiniteError
from ..prompts.base import Batch, PromptMethod
from ..tuning.features import FeatureCache, encode_images, input_kind
from .metrics import accuracy_of, correct

def _predict(logits: Tensor) -> Tensor:
    """argmax of the logits; NaN logits would all be 'class 0' and score like a real model."""
    if not bool(torch.isfinite(logits).all()):
        raise NonFiniteError("the prompts give non-finite logits (NaN or infinite prompt values?): no accuracy")
    return logits.argmax(-1)


# CoCoOp-style methods encode (images x classes) prompts per batch: cap that product.
MAX_TEXT_SEQUENCES = 4096


@torch.no_grad()
def correctness(method: PromptMethod, params: dict[str, Tensor], samples: Sequence[Sample], classnames: list[str],
                *, batch_size: int = 64, cache: FeatureCache | None = None,
                cache_key: tuple | None = None) -> Tensor:
    """Whether each readable sample is classified correctly (bool, in sample order), so that paired tests can
    match the same test image across runs; unreadable images are skipped (and logged), not counted."""
    bb = method.backbone
    kind = input_kind(method)
    if kind == "pixels":
        preds, labels = [], []
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            pixels, kept = load_batch([s.source for s in chunk], bb.transform.eval)
            if pixels is None:
                continue
            preds.append(_predict(method.logits(params, Batch(pixels=pixels.to(bb.device)), classnames)).cpu())
            labels.extend(chunk[i].label for i in kept)
        if not preds:
            raise ValueError("no readable test image")
        return correct(torch.cat(preds), torch.tensor(labels))
    if cache is not None and cache_key is not None:
        feats, labels = cache.get((*cache_key, "eval"), samples, bb.transform.eval, batch_size, kind=kind)
    else:
        feats, labels = encode_images(bb, samples, bb.transform.eval, batch_size, kind=kind)
    if kind == "stems":
        step = batch_size
    elif method.text_per_image:
        step = max(1, MAX_TEXT_SEQUENCES // len(classnames))
    else:
        step = len(feats)
    preds = torch.cat([_predict(method.logits(params, Batch(**{kind: feats[i:i + step]}), classnames))
                       for i in range(0, len(feats), step)])
    return correct(preds.cpu(), labels.cpu())


def correct_bits(ok: Tensor) -> str:
    """A correctness vector as a '0'/'1' string (one char per image): compact in a JSON summary."""
    return "".join("1" if c else "0" for c in ok.tolist())


def evaluate(method: PromptMethod, params: dict[str, Tensor], samples: Sequence[Sample], classnames: list[str],
             *, batch_size: int = 64, cache: FeatureCache | None = None, cache_key: tuple | None = None) -> float:
    """Accuracy in percent; unreadable images are skipped (and logged), not counted."""
    return accuracy_of(correctness(method, params, samples, classnames, batch_size=batch_size, cache=cache,
                                   cache_key=cache_key))
