"""Few-shot prompt tuning: plain SGD on the prompt parameters, with a hook for regulated gradients.

``grad_transform`` receives the raw gradients and returns the ones to apply; GRAM's test-time
adaptation plugs its frozen regulator R_phi* in here, so the loop itself knows nothing of GRAM.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..data.dataset import Sample
from ..data.images import ImageLoadError, load_image
from ..errors import GramError, NonFiniteError
from ..finite import check_finite, check_rate, check_skipped, nonfinite
from ..prompts.base import Batch, PromptMethod
from .config import TuneConfig, lr_at_epoch
from .features import FeatureCache, encode_images, input_kind
from .gpa import EpochAverage

logger = logging.getLogger(__name__)

Params = dict[str, Tensor]
MAX_SKIPPED = 0.1  # more skipped (non-finite) steps than this fraction fail the run
GradTransform = Callable[[Params], Params]


def _seeded(seed: int, *salt: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(hash((seed, *salt)) & 0x7FFF_FFFF_FFFF_FFFF)
    return g


def _cached_views(method: PromptMethod, samples: Sequence[Sample], cfg: TuneConfig, seed: int,
                  cache: FeatureCache | None, key: tuple, kind: str) -> list[tuple[Tensor, Tensor]]:
    tf, bb = method.backbone.transform, method.backbone
    views = []
    for v in range(max(cfg.feature_views, 1)):
        if cfg.feature_views == 0:
            fn = tf.eval
        else:
            gen = _seeded(seed, v)
            fn = lambda img, gen=gen: tf.train(img, gen)  # noqa: E731
        desc = f"encoding train view {v + 1}" if len(samples) >= 1000 else None
        if cache is None:
            views.append(encode_images(bb, samples, fn, cfg.eval_batch_size, desc, kind))
        else:
            views.append(cache.get((*key, "train", seed, cfg.feature_views, v), samples, fn, cfg.eval_batch_size,
                                   desc, kind))
    return views


def _decoded_images(samples: Sequence[Sample]) -> tuple[list, Tensor]:
    images, labels, bad = [], [], 0
    for s in samples:
        try:
            images.append(load_image(s.source))
            labels.append(s.label)
        except ImageLoadError as err:
            bad += 1
            logger.warning("skipping training image: %s", err)
    if not images:
        raise ValueError("no readable training image")
    if bad:
        logger.warning("skipped %d unreadable training image(s) of %d", bad, len(samples))
    return images, torch.tensor(labels)


def sgd(method: PromptMethod, params: Params, cfg: TuneConfig) -> torch.optim.SGD:
    """SGD over ``params`` with one param group per group of the method, so that ``cfg.lr_scale`` scales
    each group's rate (:func:`set_lr`); the same updates as one group when nothing is scaled."""
    groups = set(method.groups.values())
    unknown = sorted(set(cfg.lr_scale) - groups)
    if unknown:
        raise GramError(f"lr_scale names {unknown}, which {method.name} does not have; its parameter groups: "
                        f"{sorted(groups)}")
    grouped: dict[str, list[Tensor]] = {}
    for name, p in params.items():
        grouped.setdefault(method.groups.get(name, name), []).append(p)
    return torch.optim.SGD([{"params": ps, "scale": cfg.lr_scale.get(g, 1.0)} for g, ps in grouped.items()],
                           lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """The epoch's rate, times each group's scale (:func:`sgd`)."""
    for group in opt.param_groups:
        group["lr"] = lr * group["scale"]


def drift(params: Params, start: Params) -> float:
    """L2 distance of all parameters from ``start``, over every tensor together: how far tuning has moved
    the prompts (from GRAM's theta*, or a fresh init), logged per epoch so a regulator R_phi* whose bias
    keeps pushing the prompts away over a long batch-1 run shows as a distance that keeps growing
    (benchmarks/README.md). Reads only: no autograd graph, no random numbers."""
    with torch.no_grad():
        squares = sum(float(torch.linalg.vector_norm((p.detach() - start[k]).float()) ** 2) for k, p in params.items())
    return math.sqrt(squares)


def train_prompts(method: PromptMethod, init: Params, samples: Sequence[Sample], classnames: list[str],
                  cfg: TuneConfig, *, seed: int, grad_transform: GradTransform | None = None,
                  cache: FeatureCache | None = None, cache_key: tuple = (),
                  log: Callable[[dict], None] | None = None,
                  on_epoch: Callable[[int, Params], None] | None = None) -> Params:
    """Tune ``init`` on ``samples`` (labels index ``classnames``) and return the final parameters.

    All randomness (shuffling, augmentation) comes from generators seeded by ``seed``. A step whose
    (regulated) gradient is not finite is skipped and counted, never applied; more than ``MAX_SKIPPED``
    of them, or an update that makes a parameter non-finite, is a :class:`NonFiniteError`. Each epoch's
    ``log`` record holds its ``drift``: the distance of the parameters from ``init`` (:func:`drift`).
    """
    check_rate("the learning rate (--lr)", cfg.lr)
    check_finite(init, "the initial prompts")
    params = {k: v.detach().clone().requires_grad_(True) for k, v in init.items()}
    if not params:
        return params
    device = method.backbone.device
    kind = input_kind(method)
    if kind == "pixels":
        images, labels = _decoded_images(samples)
        views = None
    else:
        views = _cached_views(method, samples, cfg, seed, cache, cache_key, kind)
        labels = views[0][1].cpu()
    opt = sgd(method, params, cfg)
    average = epoch_average(cfg)
    order_gen, aug_gen = _seeded(seed, -1), _seeded(seed, -2)
    n = len(labels)
    steps_done, steps_skipped = 0, 0
    for epoch in range(cfg.epochs):
        lr = lr_at_epoch(cfg, epoch)
        set_lr(opt, lr)
        perm = torch.randperm(n, generator=order_gen)
        total_loss, correct, skipped = 0.0, 0, 0
        steps = range(0, n, cfg.batch_size)
        for start in tqdm(steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=len(steps) < 50):
            idx = perm[start:start + cfg.batch_size]
            y = labels[idx].to(device)
            if views is None:
                pixels = torch.stack([method.backbone.transform.train(images[i], aug_gen) for i in idx.tolist()])
                batch = Batch(pixels=pixels.to(device))
            else:
                cached = views[epoch % len(views)][0][idx.to(views[0][0].device)]
                batch = Batch(features=cached) if kind == "features" else Batch(stems=cached)
            loss, logits, grads = method.gradients(params, batch, classnames, y)
            if grad_transform is not None:
                grads = grad_transform(grads)
            if not math.isfinite(loss.item()) or not all(torch.isfinite(g).all() for g in grads.values()):
                skipped += 1
                continue
            for name, p in params.items():
                p.grad = grads[name].to(p.dtype)
            opt.step()
            bad = nonfinite({k: v.detach() for k, v in params.items()})
            if bad:
                raise NonFiniteError(f"epoch {epoch + 1}: an update made {', '.join(bad)} non-finite "
                                     f"(lr {lr:g}); lower --lr")
            total_loss += loss.item() * len(idx)
            correct += int((logits.argmax(-1) == y).sum())
        if skipped:
            logger.warning("epoch %d: skipped %d step(s) with a non-finite loss or gradient", epoch + 1, skipped)
        steps_done, steps_skipped = steps_done + len(steps), steps_skipped + skipped
        record = {"epoch": epoch + 1, "lr": lr, "loss": total_loss / max(n, 1), "train_acc": 100.0 * correct / max(n, 1),
                  "skipped_steps": skipped, "drift": drift(params, init)}
        if log is not None:
            log(record)
        if on_epoch is not None:
            on_epoch(epoch + 1, params)
        if average is not None:
            average.add(epoch, params)
    check_skipped(steps_skipped, steps_done, MAX_SKIPPED, "prompt tuning",
                  "Lower --lr, or check the --init prompts and the training images.")
    return average.result() if average is not None else {k: v.detach() for k, v in params.items()}


def epoch_average(cfg: TuneConfig) -> EpochAverage | None:
    """The Gaussian prompt aggregation of ``cfg`` (``tuning.gpa``), or None without ``gpa_mean``."""
    return None if cfg.gpa_mean is None else EpochAverage(cfg.epochs, cfg.gpa_mean, cfg.gpa_std)
