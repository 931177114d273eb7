"""Many few-shot runs of one method trained together: one text-encoder pass per step for all of them.

A paper table is hundreds of small runs (seeds x rows x initializations) of one method on one dataset.
Run one at a time, each step encodes C class prompts: a forward too small to use a CPU or a GPU well.
Here R runs step together. For CoOp-like methods (learned context, frozen image features) the R contexts
are stacked to (R, M, d) and spliced into the class prompts of every run at once, so one text-encoder
forward gives every run's (C, D) text features; each run's images are scored against its own features,
and one ``autograd.grad`` of the summed losses gives each run its own gradient (run r's loss depends on
its parameters only). CoCoOp's per-image contexts (each run's meta-net on its own images) go through one
forward the same way. For VPT-like methods (VPT, VPT-deep, joint) every run's images go through the image
tower in one forward, each image with its own run's visual prompts; joint runs' contexts share the text
forward as CoOp's do.

Everything else stays per run, exactly as :func:`gramprompt.tuning.train.train_prompts` does it: the
few-shot sample, the seeded data order and augmentation (views), the optimizer and its momentum, the lr
schedule, the gradient transform (GRAM's R_phi*), the skip of non-finite steps, the per-epoch record and
callbacks. A run that fails (too many skipped steps, an update that makes its prompts non-finite) gets its
error in the result and stops; the others go on. ``train_prompts`` stays the one-run reference:
``tests/test_multirun.py`` checks every run's parameters and records against it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..autocast import autocast
from ..data.dataset import Sample
from ..errors import NonFiniteError
from ..finite import check_finite, check_rate, check_skipped, nonfinite
from ..prompts.base import Batch, PromptMethod, plain_objective
from ..prompts.cocoop import cocoop_like
from ..prompts.coop import coop_like
from ..prompts.vpt import vpt_like
from .config import TuneConfig, lr_at_epoch
from .features import FeatureCache, input_kind
from .train import (MAX_SKIPPED, GradTransform, Params, StepTotals, _cached_views, _decoded_images, _seeded, augmented,
                    device_augment, drift, epoch_average, masked_step, set_lr, sgd, step_ok)

CTX, VIS = "text_ctx", "visual_ctx"


@dataclass
class RunSpec:
    """One run of a multi-run pass: what :func:`train_prompts` takes besides the method, class names and
    schedule."""

    init: Params
    samples: Sequence[Sample]
    seed: int
    grad_transform: GradTransform | None = None
    cache_key: tuple = ()
    log: Callable[[dict], None] | None = None
    on_epoch: Callable[[int, Params], None] | None = None


class _Run:
    """The state of one run: parameters, optimizer, data, generators and the current epoch's totals."""

    def __init__(self, method: PromptMethod, spec: RunSpec, cfg: TuneConfig, cache: FeatureCache | None):
        self.spec, self.cfg = spec, cfg
        self.params = {k: v.detach().clone().requires_grad_(True) for k, v in spec.init.items()}
        self.kind = input_kind(method)
        if self.kind == "pixels":
            self.images, labels = _decoded_images(spec.samples)
            self.augment = device_augment(method, self.images)
            self.views = None
        else:
            self.views = _cached_views(method, spec.samples, cfg, spec.seed, cache, spec.cache_key, self.kind)
            labels = self.views[0][1]
        self.labels = labels.to(method.backbone.device)  # indexed on the device: no copy per step
        self.opt = sgd(method, self.params, cfg)
        self.average = epoch_average(cfg)
        self.order_gen, self.aug_gen = _seeded(spec.seed, -1), _seeded(spec.seed, -2)
        self.error: Exception | None = None
        self.steps_done = self.steps_skipped = 0

    @property
    def n(self) -> int:
        return len(self.labels)

    def start_epoch(self, lr: float) -> None:
        set_lr(self.opt, lr)
        perm = torch.randperm(self.n, generator=self.order_gen)
        self.order, self.perm = perm.tolist(), perm.to(self.labels.device)
        self.steps = range(0, self.n, self.cfg.batch_size)
        self.totals = StepTotals(self.labels.device)

    def batch(self, method: PromptMethod, step: int, epoch: int) -> tuple[Batch, Tensor, int]:
        """The ``step``-th batch of this epoch: inputs, labels and its size."""
        start = self.steps[step]
        idx = self.perm[start:start + self.cfg.batch_size]
        y = self.labels[idx]
        if self.views is None:
            chosen = self.order[start:start + self.cfg.batch_size]
            return Batch(pixels=augmented(method, self.images, self.augment, chosen, self.aug_gen)), y, len(idx)
        cached = self.views[epoch % len(self.views)][0][idx.to(self.views[0][0].device)]
        return (Batch(features=cached) if self.kind == "features" else Batch(stems=cached)), y, len(idx)

    def apply(self, loss: Tensor, logits: Tensor, y: Tensor, size: int, grads: Params) -> None:
        """One optimizer step from this run's raw gradients, as ``train_prompts`` takes it (skipped on the device
        when not finite)."""
        if self.spec.grad_transform is not None:
            grads = self.spec.grad_transform(grads)
        ok = step_ok(loss, grads)
        masked_step(self.opt, self.params, grads, ok)
        self.totals.add(ok, loss, logits, y, size, self.params)

    def end_epoch(self, epoch: int, lr: float) -> None:
        total_loss, correct, skipped, broke = self.totals.read()
        if broke:
            raise NonFiniteError(f"epoch {epoch + 1}: an update made {', '.join(nonfinite(self.params))} non-finite "
                                 f"(lr {lr:g}); lower --lr")
        self.steps_done, self.steps_skipped = self.steps_done + len(self.steps), self.steps_skipped + skipped
        record = {"epoch": epoch + 1, "lr": lr, "loss": total_loss / max(self.n, 1),
                  "train_acc": 100.0 * correct / max(self.n, 1), "skipped_steps": skipped,
                  "drift": drift(self.params, self.spec.init)}
        if self.spec.log is not None:
            self.spec.log(record)
        if self.spec.on_epoch is not None:
            self.spec.on_epoch(epoch + 1, self.params)
        if self.average is not None:
            self.average.add(epoch, self.params)

    def result(self) -> Params:
        """The tuned prompts: the last epoch's, or their Gaussian average (``TuneConfig.gpa_mean``)."""
        return self.average.result() if self.average is not None else {k: v.detach() for k, v in self.params.items()}


def steps_together(method: PromptMethod | type[PromptMethod]) -> bool:
    """Whether runs of this method share one forward per step: CoOp-like (one context per run) and CoCoOp-like
    (one context per image) methods share the text encoder's, VPT-like methods the image tower's."""
    return coop_like(method) or cocoop_like(method) or vpt_like(method)


def _stacked_text(method: PromptMethod, runs: list[_Run], classnames: list[str]) -> Tensor:
    """One context per run, (R, M, d), through one text-encoder forward: (R, C, D)."""
    return method._context_text_features(torch.stack([r.params[CTX] for r in runs]), classnames)


def _vpt_logits(method: PromptMethod, runs: list[_Run], batches: list[Batch], classnames: list[str]) -> list[Tensor]:
    """Every run's images through the image tower at once, each with its run's visual prompts; joint runs'
    contexts through the text encoder at once."""
    field = "stems" if batches[0].stems is not None else "pixels"
    inputs = [getattr(b, field) for b in batches]
    sizes = [len(x) for x in inputs]
    prompts = torch.cat([r.params[VIS].expand(n, *r.params[VIS].shape) for r, n in zip(runs, sizes)])
    images = method._image_features(Batch(**{field: torch.cat(inputs)}), prompts, per_image=True).split(sizes)
    if CTX in runs[0].params:  # joint
        text = _stacked_text(method, runs, classnames)
        return [method._scores(img, text[i]) for i, img in enumerate(images)]
    text = method.text.template_features(classnames, method.template)
    return [method._scores(img, text) for img in images]


def _step_gradients(method: PromptMethod, runs: list[_Run], batches: list[tuple[Batch, Tensor, int]],
                    classnames: list[str], stack: bool) -> list[tuple[Tensor, Tensor, Params]]:
    """Each run's loss, logits and gradients on its batch: through the shared forward of :func:`_logits` for the
    cross-entropy methods, else through the method's own :meth:`~PromptMethod.gradients` run by run."""
    if not plain_objective(method):
        return [method.gradients(r.params, b, classnames, y) for r, (b, y, _) in zip(runs, batches)]
    logits = _logits(method, runs, [b for b, _, _ in batches], classnames, stack)
    losses = [F.cross_entropy(lg, y) for lg, (_, y, _) in zip(logits, batches)]
    leaves = [p for r in runs for p in r.params.values()]
    grads = iter(torch.autograd.grad(sum(losses), leaves))  # run r's loss depends on its parameters only
    return [(loss, lg, {name: next(grads) for name in r.params}) for r, loss, lg in zip(runs, losses, logits)]


def _logits(method: PromptMethod, runs: list[_Run], batches: list[Batch], classnames: list[str],
            stack: bool) -> list[Tensor]:
    """Each run's logits on its batch; with ``stack``, one forward is shared where :func:`steps_together`
    holds."""
    if stack and vpt_like(method) and all(b.features is None for b in batches):
        return _vpt_logits(method, runs, batches, classnames)
    if not (stack and steps_together(method) and all(b.features is not None for b in batches)):
        return [method.logits(r.params, b, classnames) for r, b in zip(runs, batches)]
    if coop_like(method):  # one context per run
        text = _stacked_text(method, runs, classnames)
        return [method._scores(b.features, text[i]) for i, b in enumerate(batches)]
    # one context per image: every run's images in one (N, M, d) -> (N, C, D)
    contexts = [method.contexts(r.params, b.features) for r, b in zip(runs, batches)]
    text = method._context_text_features(torch.cat(contexts), classnames).split([len(c) for c in contexts])
    return [method._scores(b.features, t) for b, t in zip(batches, text)]


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device``: the GPU's free memory, or Linux's ``MemAvailable``; None when
    unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _saved_bytes(fn: Callable[[], Tensor]) -> int:
    """Bytes of the tensors autograd saves for the backward of ``fn()`` (each storage once): what a step keeps
    alive until its gradient is taken."""
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def bytes_per_run(method: PromptMethod, runs: list[_Run], classnames: list[str]) -> int:
    """Memory one more run adds to a shared step: the saved activations of the first step of two runs
    minus those of one (the frozen weights, saved by both, cancel)."""
    def step(k: int) -> Callable[[], Tensor]:
        batches = [r.batch(method, 0, 0)[0] for r in runs[:k]]
        return lambda: sum(lg.sum() for lg in _logits(method, runs[:k], batches, classnames, True))

    for r in runs[:2]:
        r.start_epoch(0.0)
    one, two = _saved_bytes(step(1)), _saved_bytes(step(2))
    for r in runs[:2]:  # the probe drew from the order (and augmentation) generators: restart them
        r.order_gen, r.aug_gen = _seeded(r.spec.seed, -1), _seeded(r.spec.seed, -2)
    return max(two - one, 1)


# the share of the free memory the runs' saved activations may take: the forward's transient buffers, the
# backward's gradients and the evaluation that follows need the rest
MEMORY_SHARE = 0.5


def runs_that_fit(per_run: int, free: int | None, share: float = MEMORY_SHARE) -> int | None:
    """How many runs' steps fit in ``share`` of ``free`` bytes (at least 1); None when ``free`` is unknown."""
    return None if free is None else max(1, int(share * free) // per_run)


def train_many(method: PromptMethod, specs: Sequence[RunSpec], classnames: list[str], cfg: TuneConfig, *,
               cache: FeatureCache | None = None, stack: bool = True, memory: int | None = None) -> list[Params | Exception]:
    """Tune every run of ``specs`` (labels index ``classnames``) with the schedule ``cfg``; per run, its
    final parameters as :func:`train_prompts` returns them, or the error that stopped it.

    ``stack=False`` steps every run on its own (no shared forward): the same arithmetic as ``train_prompts``, bit for
    bit, where the shared forward agrees with it up to float rounding (a check when results look off). ``memory``:
    the bytes free for the step (:func:`available_memory`); the runs are then tuned in groups that fit
    (:func:`runs_that_fit`, from a probe of the first step), one group after the other."""
    check_rate("the learning rate (--lr)", cfg.lr)
    for spec in specs:
        check_finite(spec.init, "the initial prompts")
    runs = [_Run(method, spec, cfg, cache) if spec.init else None for spec in specs]  # None: nothing to tune
    live = [r for r in runs if r is not None]
    size = max(len(live), 1)
    if stack and memory is not None and len(live) > 1 and steps_together(method):
        with autocast(method.backbone.device, cfg.autocast):  # the probe saves what the steps will save
            size = min(size, runs_that_fit(bytes_per_run(method, live, classnames), memory))
    for i in range(0, len(live), size):  # the groups that fit, one after the other
        _train_group(method, live[i:i + size], classnames, cfg, stack)
    return [{} if r is None else r.error if r.error is not None else r.result() for r in runs]


def _train_group(method: PromptMethod, live: list[_Run], classnames: list[str], cfg: TuneConfig, stack: bool) -> None:
    """Every epoch of the runs ``live``, stepped together; a run that fails keeps its error in ``error``."""
    for epoch in range(cfg.epochs):
        lr = lr_at_epoch(cfg, epoch)
        for r in live:
            r.start_epoch(lr)
        for step in range(max((len(r.steps) for r in live), default=0)):
            active = [r for r in live if step < len(r.steps)]  # runs with fewer images finish their epoch first
            batches = [r.batch(method, step, epoch) for r in active]
            with autocast(method.backbone.device, cfg.autocast):
                steps = _step_gradients(method, active, batches, classnames, stack)
            for r, (loss, lg, own), (_, y, size) in zip(active, steps, batches):
                r.apply(loss.detach(), lg.detach(), y, size, own)
        for r in live:
            try:  # a run whose update broke a parameter fails here, at the end of the epoch
                r.end_epoch(epoch, lr)
            except NonFiniteError as err:
                r.error = err
        live = [r for r in live if r.error is None]
    for r in live:
        try:
            check_skipped(r.steps_skipped, r.steps_done, MAX_SKIPPED, "prompt tuning",
                          "Lower --lr, or check the --init prompts and the training images.")
        except NonFiniteError as err:
            r.error = err
