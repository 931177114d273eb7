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

from ..autocast import autocast
from ..data.dataset import Sample
from ..data.images import ImageLoadError, load_image
from ..errors import GramError, NonFiniteError
from ..finite import check_finite, check_rate, check_skipped, nonfinite
from ..prompts.base import Batch, PromptMethod
from .config import TuneConfig, lr_at_epoch
from .features import FeatureCache, encode_images, input_kind
from .augment import DeviceAugment
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
    opt = torch.optim.SGD([{"params": ps, "scale": cfg.lr_scale.get(g, 1.0)} for g, ps in grouped.items()],
                          lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.momentum:  # zero buffers from the start: the first step's buf = 0 * m + d_p is torch's clone of d_p,
        for p in params.values():  # and a skipped first step has a buffer to restore (masked_step)
            opt.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return opt


def all_finite(tensors: list[Tensor]) -> Tensor:
    """A 0-dim bool on the device: every entry of every tensor is finite. Never read on the host per step."""
    return torch.stack([torch.isfinite(t).all() for t in tensors]).all()


def step_ok(loss: Tensor, grads: Params) -> Tensor:
    """The step may be taken: its loss and every gradient are finite (:func:`all_finite`)."""
    return all_finite([loss, *grads.values()])


@torch.no_grad()
def masked_step(opt: torch.optim.SGD, params: Params, grads: Params, ok: Tensor) -> None:
    """``opt.step()`` with ``grads`` where ``ok`` holds, and no change at all (parameters and momentum buffers as
    before) where it does not: a non-finite step is skipped on the device, without a host round-trip. Where ``ok``
    holds the values are ``opt.step()``'s own, bit for bit."""
    before = {k: [t.clone() for t in _step_state(opt, p)] for k, p in params.items()}
    for name, p in params.items():
        p.grad = grads[name].to(p.dtype)
    opt.step()
    for name, p in params.items():
        for now, old in zip(_step_state(opt, p), before[name]):
            now.copy_(torch.where(ok, now, old))


def _step_state(opt: torch.optim.SGD, p: Tensor) -> list[Tensor]:
    """What an SGD step changes for ``p``: the parameter, and its momentum buffer (made at the start by :func:`sgd`)."""
    buf = opt.state[p].get("momentum_buffer")
    return [p] if buf is None else [p, buf]


class StepTotals:
    """An epoch's loss sum, correct count, skipped steps and whether an update broke a parameter, kept on the device
    and read once (:meth:`read`), so that a training step never waits for the device."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.skipped = torch.zeros((), dtype=torch.int64, device=device)
        self.broke = torch.zeros((), dtype=torch.bool, device=device)

    @torch.no_grad()
    def add(self, ok: Tensor, loss: Tensor, logits: Tensor, y: Tensor, size: int, params: Params) -> None:
        """A step's totals: counted where ``ok``, a skip where not; ``params`` after the (masked) step."""
        self.loss += torch.where(ok, loss.detach().double() * size, 0.0)
        self.correct += torch.where(ok, (logits.argmax(-1) == y).sum(), 0)
        self.skipped += (~ok).long()
        self.broke |= ~all_finite(list(params.values()))

    def read(self) -> tuple[float, int, int, bool]:
        """(loss sum, correct, skipped, broke) on the host: one synchronization per epoch."""
        values = torch.stack([self.loss, self.correct.double(), self.skipped.double(), self.broke.double()]).tolist()
        return values[0], int(values[1]), int(values[2]), bool(values[3])


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
    augment = None
    if kind == "pixels":
        images, labels = _decoded_images(samples)
        views = None
        augment = device_augment(method, images)
    else:
        views = _cached_views(method, samples, cfg, seed, cache, cache_key, kind)
        labels = views[0][1].cpu()
    opt = sgd(method, params, cfg)
    average = epoch_average(cfg)
    order_gen, aug_gen = _seeded(seed, -1), _seeded(seed, -2)
    n = len(labels)
    labels = labels.to(device)  # indexed on the device: no host-to-device copy per step
    steps_done, steps_skipped = 0, 0
    for epoch in range(cfg.epochs):
        lr = lr_at_epoch(cfg, epoch)
        set_lr(opt, lr)
        perm = torch.randperm(n, generator=order_gen)
        order, perm = perm.tolist(), perm.to(device)
        totals = StepTotals(device)
        steps = range(0, n, cfg.batch_size)
        for start in tqdm(steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=len(steps) < 50):
            idx = perm[start:start + cfg.batch_size]
            y = labels[idx]
            if views is None:
                batch = Batch(pixels=augmented(method, images, augment, order[start:start + cfg.batch_size], aug_gen))
            else:
                cached = views[epoch % len(views)][0][idx.to(views[0][0].device)]
                batch = Batch(features=cached) if kind == "features" else Batch(stems=cached)
            with autocast(device, cfg.autocast):
                loss, logits, grads = method.gradients(params, batch, classnames, y)
            if grad_transform is not None:
                grads = grad_transform(grads)
            ok = step_ok(loss, grads)
            masked_step(opt, params, grads, ok)
            totals.add(ok, loss, logits, y, len(idx), params)
        total_loss, correct, skipped, broke = totals.read()
        if broke:
            raise NonFiniteError(f"epoch {epoch + 1}: an update made {', '.join(nonfinite(params))} non-finite "
                                 f"(lr {lr:g}); lower --lr")
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


def device_augment(method: PromptMethod, images: list) -> DeviceAugment | None:
    """The augmentation of a pixel method's training images: on an accelerator, its pixel work on the device
    (:class:`~gramprompt.tuning.augment.DeviceAugment`: the same boxes and flips); on the CPU, None: PIL's, as always."""
    device = method.backbone.device
    return None if device.type == "cpu" else DeviceAugment(method.backbone.transform, images, device)


def augmented(method: PromptMethod, images: list, augment: DeviceAugment | None, indices: list[int],
              generator: torch.Generator) -> Tensor:
    """The training views of ``images[indices]`` on the backbone's device, drawn from ``generator``."""
    if augment is not None:
        return augment.batch(indices, generator)
    pixels = torch.stack([method.backbone.transform.train(images[i], generator) for i in indices])
    return pixels.to(method.backbone.device)


def epoch_average(cfg: TuneConfig) -> EpochAverage | None:
    """The Gaussian prompt aggregation of ``cfg`` (``tuning.gpa``), or None without ``gpa_mean``."""
    return None if cfg.gpa_mean is None else EpochAverage(cfg.epochs, cfg.gpa_mean, cfg.gpa_std)
