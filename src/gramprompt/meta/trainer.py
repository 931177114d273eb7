"""The meta-training loop (Algorithm 1): sample task batches, meta-step, outer Adam updates of
theta (lambda_1) and phi (lambda_2), logs, checkpoints that resume to the identical result.

``mode="pretrain"`` is the paper's "- meta-learning" ablation, "image classification over clustering
data": each iteration classifies a batch of the clustered images over ALL topic names (cross-entropy
at theta, no inner loop, no regulator) and updates theta with the same outer Adam. The batch holds as
many images as a meta-batch's tasks (``pretrain_batch_size``), drawn with the same seeded generator,
so a pre-training run resumes like a meta-training one. Its checkpoint holds no phi: test time is
plain tuning from theta.

The paper leaves every hyperparameter here open; the defaults are ours and are recorded in the
checkpoint metadata and README.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from gramprompt.autocast import autocast, check_autocast
from gramprompt.errors import GramError, NonFiniteError, RunFolderError
from gramprompt.finite import check_finite, check_rate, check_skipped
from gramprompt.meta.batched import batched_meta_loss, supports_batched
from gramprompt.meta.regulator import FORM_BEFORE_FORMS, RegulatorConfig, init_regulator
from gramprompt.meta.step import TaskData, meta_loss, task_loss
from gramprompt.meta.tasks import ImageBatch, Task, TaskConfig, TaskSampler
from gramprompt.prompts.base import Batch, PromptMethod
from gramprompt.runs import flat_settings

logger = logging.getLogger(__name__)

Params = dict[str, Tensor]
MAX_SKIPPED = 0.1  # more skipped (non-finite) meta-batches than this fraction fail the run: theta* is not saved
MAX_SKIPPED_IN_A_ROW = 20  # this many in a row: theta or phi itself gives non-finite losses, stop at once
HINT = "Lower --lr-theta, --lr-phi or --inner-lr."


@dataclass
class MetaConfig:
    mode: str = "gram"  # "pretrain": the "- meta-learning" ablation, classification over all topics (module doc)
    iterations: int = 300
    task_batch: int = 4  # B
    inner_lr: float = 0.1  # alpha
    inner_steps: int = 1  # N
    lr_theta: float = 2e-3  # lambda_1 (Adam)
    lr_phi: float = 2e-3  # lambda_2 (Adam)
    second_order: bool = False
    use_regulator: bool = True  # False: the "- gradient regulating" ablation (raw inner gradient)
    grad_clip: float = 1.0  # on the global norm of the (theta, phi) meta-gradient; 0 = off
    stats_every: int = 10  # before/after and alignment statistics cost an extra backward per task
    checkpoint_every: int = 50
    seed: int = 0
    batched: bool = True  # one text-encoder forward for all tasks' classes where the method allows (meta.batched)
    # "bf16": the meta-step's forward passes under torch.autocast(bfloat16) (GPU: ~2x the fp32 matmul rate);
    # theta, phi, Adam and the loss reduction stay fp32
    autocast: str = "none"
    tasks: TaskConfig = field(default_factory=TaskConfig)
    regulator: RegulatorConfig = field(default_factory=RegulatorConfig)

    def __post_init__(self) -> None:
        """Refuse what would write a theta* that never trained (``iterations: -5``) or never could."""
        counts = {"iterations": self.iterations, "task_batch": self.task_batch, "inner_steps": self.inner_steps,
                  "checkpoint_every": self.checkpoint_every}
        bad = [f"{k} must be >= 1, got {v}" for k, v in counts.items() if v < 1]  # rates: checked by the trainer
        bad += [f"{k} must be >= 0, got {v}" for k, v in (("stats_every", self.stats_every), ("seed", self.seed)) if v < 0]
        if bad:
            raise ValueError("meta-training: " + "; ".join(bad))


@dataclass
class MetaState:
    theta: Params
    phi: Params
    iteration: int = 0
    skipped: int = 0  # meta-batches with a non-finite loss or gradient


@dataclass
class ImageData:
    """A pre-training batch on the backbone's device: images, labels over ``classnames`` (all topics)."""

    classnames: list[str]
    images: Batch
    labels: Tensor


def pretrain_batch_size(task_batch: int, tasks: TaskConfig) -> int:
    """Images per pre-training iteration: as many as one meta-batch's tasks hold (support + query), so
    both ablation rows see the same number of images per outer update."""
    return task_batch * tasks.ways * (tasks.support_shots + tasks.query_shots)


def _on(batch: Batch, device: torch.device) -> Batch:
    """``batch`` on the backbone's device: inputs a caller built elsewhere (features kept in host memory) move
    per task rather than failing inside the first matmul."""
    return Batch(**{k: None if t is None else t.to(device) for k, t in vars(batch).items()})


def _task_data(task: Task, inputs, device: torch.device) -> TaskData:
    s, q = _on(inputs.batch(task.support), device), _on(inputs.batch(task.query), device)
    return TaskData(task.classnames, s, torch.as_tensor(task.support_labels, device=device),
                    q, torch.as_tensor(task.query_labels, device=device))


def _image_data(batch: ImageBatch, inputs, device: torch.device) -> ImageData:
    images = _on(inputs.batch(batch.rows), device)
    return ImageData(batch.classnames, images, torch.as_tensor(batch.labels, device=device))


def _load_state(path: Path) -> dict:
    """The loop state of a checkpoint, loaded without running code (``weights_only``): a run folder may
    come from anywhere, and a planted pickle must not execute."""
    try:
        return torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise GramError(f"the meta-training checkpoint {path} cannot be loaded safely ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}); delete {path.parent} to start over") from err


class MetaTrainer:
    """Owns the loop state; ``run`` resumes from ``out/checkpoint`` when it exists."""

    def __init__(self, method: PromptMethod, sampler: TaskSampler, inputs, cfg: MetaConfig, out: str | os.PathLike,
                 log: Callable[[dict], None] | None = None):
        self.method, self.sampler, self.inputs, self.cfg = method, sampler, inputs, cfg
        self.out = Path(out)
        self.log = log

    def initial_state(self) -> MetaState:
        if self.cfg.mode not in ("gram", "pretrain"):
            raise ValueError(f"meta-training mode must be 'gram' or 'pretrain', got {self.cfg.mode!r}")
        check_autocast(self.cfg.autocast)
        for name in ("lr_theta", "lr_phi", "inner_lr"):
            check_rate(f"{name} (--{name.replace('_', '-')})", getattr(self.cfg, name))
        gen = torch.Generator().manual_seed(self.cfg.seed)
        theta = self.method.init_params(gen)
        use_phi = self.cfg.use_regulator and self.cfg.mode == "gram"
        phi = init_regulator(theta, self.cfg.regulator, gen) if use_phi else {}
        return MetaState(theta, phi)

    def _draw(self, rng: np.random.Generator) -> list[TaskData] | ImageData:
        """One iteration's data: ``task_batch`` tasks, or (pretrain) one batch of images over all topics."""
        if self.cfg.mode == "pretrain":
            n = pretrain_batch_size(self.cfg.task_batch, self.sampler.cfg)  # the tasks it would sample
            return _image_data(self.sampler.sample_images(rng, n), self.inputs, self.method.backbone.device)
        return [_task_data(self.sampler.sample(rng), self.inputs, self.method.backbone.device)
                for _ in range(self.cfg.task_batch)]

    def _loss(self, state: MetaState, tasks: list[TaskData] | ImageData, with_stats: bool):
        """The summed query losses after adaptation (with the logged statistics), or, pretrain, the mean
        cross-entropy of the images over all topic names at theta (no inner loop, no statistics)."""
        cfg = self.cfg
        if cfg.mode == "pretrain":
            return task_loss(self.method, state.theta, tasks.images, tasks.labels, tasks.classnames)[0], None
        loss_fn = batched_meta_loss if cfg.batched and supports_batched(self.method) else meta_loss
        return loss_fn(self.method, state.theta, state.phi or None, cfg.regulator, tasks,
                       cfg.inner_lr, cfg.inner_steps, cfg.second_order, with_stats)

    def run(self) -> MetaState:
        cfg = self.cfg
        state, opt, rng = self._resume()
        in_a_row = 0
        while state.iteration < cfg.iterations:
            tasks = self._draw(rng)
            with_stats = cfg.stats_every > 0 and (state.iteration + 1) % cfg.stats_every == 0
            with autocast(self.method.backbone.device, cfg.autocast):
                loss, stats = self._loss(state, tasks, with_stats)
            params = [*state.theta.values(), *state.phi.values()]
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
            state.iteration += 1
            if not math.isfinite(loss.item()) or not all(torch.isfinite(g).all() for g in grads):
                state.skipped += 1
                in_a_row += 1
                logger.warning("meta-iteration %d: non-finite loss or gradient, batch skipped", state.iteration)
                if in_a_row >= MAX_SKIPPED_IN_A_ROW:
                    raise NonFiniteError(f"meta-training: the last {in_a_row} meta-batches (to iteration "
                                         f"{state.iteration}) all had a non-finite loss or gradient; nothing was "
                                         f"saved. {HINT}")
            else:
                in_a_row = 0
                if cfg.grad_clip > 0:
                    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
                    scale = min(1.0, cfg.grad_clip / (float(norm) + 1e-12))
                    grads = [g * scale for g in grads]
                for p, g in zip(params, grads):
                    p.grad = g.detach()
                opt.step()
                opt.zero_grad(set_to_none=True)
                check_finite({**state.theta, **{f"phi.{k}": v for k, v in state.phi.items()}},
                             f"meta-iteration {state.iteration}: after the update ({HINT})")
            per_task = loss.item() if cfg.mode == "pretrain" else loss.item() / len(tasks)  # pretrain: a mean already
            record = {"iteration": state.iteration, "meta_loss": per_task, "skipped": state.skipped}
            if stats is not None:
                record.update(asdict(stats))
            if self.log is not None:
                self.log(record)
            if state.iteration % cfg.checkpoint_every == 0 or state.iteration == cfg.iterations:
                self._save(state, opt, rng)
        check_skipped(state.skipped, state.iteration, MAX_SKIPPED, "meta-training", HINT)
        return state

    def checkpoint_iteration(self) -> int:
        """The iteration a resumed run continues after (0 without a checkpoint)."""
        for name in ("checkpoint", "checkpoint.old"):
            path = self.out / name / "state.pt"
            if path.exists():
                return int(_load_state(path)["iteration"])
        return 0

    # -- checkpoints ----------------------------------------------------------------------------
    def _optimizer(self, state: MetaState) -> torch.optim.Optimizer:
        groups = [{"params": list(state.theta.values()), "lr": self.cfg.lr_theta}]
        if state.phi:
            groups.append({"params": list(state.phi.values()), "lr": self.cfg.lr_phi})
        return torch.optim.Adam(groups)

    def _resume(self) -> tuple[MetaState, torch.optim.Optimizer, np.random.Generator]:
        ckpt = self.out / "checkpoint"
        if not ckpt.exists() and (self.out / "checkpoint.old").exists():  # killed mid-swap
            os.replace(self.out / "checkpoint.old", ckpt)
        state = self.initial_state()
        rng = np.random.default_rng(self.cfg.seed)
        extra = None
        if (ckpt / "params.safetensors").exists():
            self._check_same_run(ckpt / "config.json")
            try:
                tensors = load_file(ckpt / "params.safetensors", device=str(self.method.backbone.device))
                # the optimizer state is positional: keep the initial order of the tensors
                state.theta = {k: tensors[f"theta.{k}"] for k in state.theta}
                state.phi = {k: tensors[f"phi.{k}"] for k in state.phi}
                extra = _load_state(ckpt / "state.pt")
                state.iteration, state.skipped = extra["iteration"], extra["skipped"]
                rng.bit_generator.state = extra["rng"]
            except (OSError, KeyError, TypeError, ValueError, RuntimeError, SafetensorError) as err:
                raise GramError(f"the meta-training checkpoint {ckpt} is damaged ({type(err).__name__}: {err}); "
                                f"delete it to start over") from err
            check_finite({**state.theta, **state.phi}, f"the meta-training checkpoint {ckpt}")
            logger.info("resuming meta-training at iteration %d", state.iteration)
        for p in [*state.theta.values(), *state.phi.values()]:
            p.requires_grad_(True)
        opt = self._optimizer(state)
        if extra is not None:
            try:
                opt.load_state_dict(extra["optimizer"])
            except (KeyError, TypeError, ValueError) as err:
                raise GramError(f"the meta-training checkpoint {ckpt} is damaged (optimizer state: {err}); "
                                f"delete it to start over") from err
        return state, opt, rng

    # settings a resumed run may change: how long, how often it logs and saves, the loss's batching
    RESUMABLE_CHANGES = ("iterations", "stats_every", "checkpoint_every", "batched")

    def _check_same_run(self, path: Path) -> None:
        """Refuse to resume a checkpoint written with other settings: the result would mix two runs."""
        if not path.exists():
            return
        saved = flat_settings(json.loads(path.read_text()))
        now = flat_settings(json.loads(json.dumps(asdict(self.cfg))))
        defaults = flat_settings(json.loads(json.dumps(asdict(MetaConfig()))))  # an option added since: saved at its default
        defaults["regulator.form"] = FORM_BEFORE_FORMS  # the default form changed since forms were added
        diff = sorted(k for k in set(saved) | set(now)
                      if k.split(".")[0] not in self.RESUMABLE_CHANGES and saved.get(k, defaults.get(k)) != now.get(k))
        if diff:
            raise ValueError(f"{self.out} holds a checkpoint meta-trained with other settings ({', '.join(diff)}: "
                             f"{ {k: saved.get(k) for k in diff} }); use another --out or delete it")

    def _save(self, state: MetaState, opt: torch.optim.Optimizer, rng: np.random.Generator) -> None:
        ckpt = self.out / "checkpoint"
        tmp = self.out / "checkpoint.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        tensors = {f"theta.{k}": v.detach().contiguous() for k, v in state.theta.items()}
        tensors.update({f"phi.{k}": v.detach().contiguous() for k, v in state.phi.items()})
        try:
            save_file(tensors, tmp / "params.safetensors")
            torch.save({"iteration": state.iteration, "skipped": state.skipped, "rng": rng.bit_generator.state,
                        "optimizer": opt.state_dict()}, tmp / "state.pt")
            (tmp / "config.json").write_text(json.dumps(asdict(self.cfg), indent=1))
        except (OSError, RuntimeError) as err:  # torch reports a full disk as a RuntimeError of its stream writer
            raise RunFolderError(f"cannot write the checkpoint in {tmp} ({' '.join(str(err).split())}); is the disk "
                                 f"full? The last complete checkpoint, {ckpt}, is kept: free space and rerun to "
                                 "resume") from None
        if ckpt.exists():  # swap whole folders so a kill never leaves a half-written checkpoint
            old = self.out / "checkpoint.old"
            os.replace(ckpt, old)
            os.replace(tmp, ckpt)
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
        else:
            os.replace(tmp, ckpt)
