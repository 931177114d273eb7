"""One GRAM meta-step (paper Algorithm 1) as pure functions of tensors.

For each task t of a batch: g_t = grad L(theta; support_t), theta'_t = theta - alpha R_phi(g_t)
(N inner steps, default 1); the meta-loss is sum_t L(theta'_t; query_t). Its gradient gives the
outer updates of theta (lambda_1) and phi (lambda_2).

First order (default): g is computed without a graph, so theta' depends on theta through the
identity only (the Hessian term is dropped). With ONE inner step phi still gets its exact
gradient, because g does not depend on phi; with several, the later gradients g(theta'_k) depend
on phi through theta'_k, and first order drops that term too (tests/test_meta_step.py measures
both). Second order: ``create_graph=True`` keeps the Hessian-vector products;
PyTorch's fused attention kernels have no double backward, so the math SDPA backend is forced.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from gramprompt.meta.regulator import RegulatorConfig, regulate
from gramprompt.prompts.base import Batch, PromptMethod

Params = dict[str, Tensor]


@dataclass
class TaskData:
    """A task's inputs on the backbone's device: batches as the method needs them, labels 0..K-1."""

    classnames: list[str]
    support: Batch
    support_y: Tensor
    query: Batch
    query_y: Tensor


def task_loss(method: PromptMethod, params: Params, batch: Batch, y: Tensor, classnames: list[str]) -> tuple[Tensor, Tensor]:
    """The method's training objective (cross-entropy of the CLIP logits unless it has its own), and the logits."""
    return method.loss(params, batch, classnames, y)


def second_order_context(create_graph: bool):
    """The math attention backend when a double backward is needed (fused kernels lack one)."""
    if not create_graph:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def adapt(method: PromptMethod, theta: Params, phi: Params | None, regulator: RegulatorConfig | str,
          task: TaskData, alpha: float, steps: int = 1,
          create_graph: bool = False) -> tuple[Params, Params, Params]:
    """theta' after ``steps`` regulated SGD steps on the support set (``phi=None``: raw gradient);
    ``regulator`` is phi's RegulatorConfig (or just its shape, in the default form).

    Returns theta' and the first step's raw and regulated gradients (for the alignment statistics)."""
    params = dict(theta)
    raw: Params = {}
    first: Params = {}
    for step in range(steps):
        _, _, grads = method.gradients(params, task.support, task.classnames,
                                       task.support_y, create_graph=create_graph)
        if step == 0:
            raw = grads
        if phi is not None:
            grads = regulate(phi, grads, regulator)
        if step == 0:
            first = grads
        params = {k: (v - alpha * grads[k]) if k in grads else v for k, v in params.items()}
    return params, raw, first


@dataclass
class StepStats:
    query_loss_before: float
    query_acc_before: float
    query_loss_after: float
    query_acc_after: float
    alignment: float  # mean over tasks of cos(R_phi(g_support), g_query), both at theta
    alignment_raw: float  # the same with the raw g_support: what R_phi adds is alignment - alignment_raw


def meta_loss(method: PromptMethod, theta: Params, phi: Params | None, regulator: RegulatorConfig | str,
              tasks: list[TaskData], alpha: float, steps: int = 1, second_order: bool = False,
              stats: bool = True) -> tuple[Tensor, StepStats | None]:
    """sum_t L(theta'_t; query_t), differentiable in theta and phi; with ``stats``, the logged
    before/after query loss and accuracy and the support-query gradient alignment (paper Fig. 3b), with
    and without the regulator on the same tasks."""
    total = 0.0
    before_l, before_a, after_l, after_a, align, align_raw = [], [], [], [], [], []
    with second_order_context(second_order):
        for task in tasks:
            adapted, g_raw, g_support = adapt(method, theta, phi, regulator, task, alpha, steps, second_order)
            loss, logits = task_loss(method, adapted, task.query, task.query_y, task.classnames)
            total = total + loss
            if stats:
                after_l.append(loss.item())
                after_a.append(_acc(logits, task.query_y))
                q_loss, q_logits = task_loss(method, theta, task.query, task.query_y, task.classnames)
                names = list(g_support)
                g_query = torch.autograd.grad(q_loss, [theta[k] for k in names])
                before_l.append(q_loss.item())
                before_a.append(_acc(q_logits, task.query_y))
                align.append(_cosine([g_support[k].detach() for k in names], list(g_query)))
                align_raw.append(_cosine([g_raw[k].detach() for k in names], list(g_query)))
    if not stats:
        return total, None
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return total, StepStats(mean(before_l), mean(before_a), mean(after_l), mean(after_a), mean(align),
                            mean(align_raw))


def _acc(logits: Tensor, y: Tensor) -> float:
    return 100.0 * float((logits.argmax(-1) == y).float().mean())


def _cosine(a: list[Tensor], b: list[Tensor]) -> float:
    va = torch.cat([t.reshape(-1).float() for t in a])
    vb = torch.cat([t.reshape(-1).float() for t in b])
    return float(F.cosine_similarity(va, vb, dim=0))
