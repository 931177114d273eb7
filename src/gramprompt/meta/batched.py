"""The GRAM meta-step of :func:`gramprompt.meta.step.meta_loss` with the tasks' classes batched.

The per-task loop runs the text encoder ``steps + 1`` times per task on K prompts each: many small
forwards that use a CPU (or GPU) poorly. For CoOp, whose only parameter is the context ``text_ctx``
(M, d) and whose image side is frozen, every task gets its own copy of the context,
theta_t = theta expanded to (B, M, d), and each of the B * K class prompts is spliced with its
task's copy. One text-encoder forward then serves all tasks, and per-task logits score a task's
images against its own K classes only. Task t's loss depends on copy t alone, so ONE
``autograd.grad`` of the summed support losses w.r.t. the stacked copies gives every task's
gradient at once. The result (loss, gradients w.r.t. theta and phi, StepStats) equals the loop's
up to float rounding; ``tests/test_meta_batched.py`` checks it.

Besides the batching, the "before" statistics reuse the text features at theta of the first inner
step (the text side does not depend on the images), which saves a forward per meta-step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gramprompt.meta.regulator import RegulatorConfig, as_regulator, regulate
from gramprompt.meta.step import Params, StepStats, TaskData, second_order_context
from gramprompt.prompts.base import PromptMethod
from gramprompt.prompts.coop import coop_like
from gramprompt.prompts.text import ClassNameTokens, splice_rows

CTX = "text_ctx"


def supports_batched(method: PromptMethod) -> bool:
    """True for CoOp-like methods (:func:`gramprompt.prompts.coop.coop_like`)."""
    return coop_like(method)


def _stack_tokens(method: PromptMethod, tasks: list[TaskData]) -> ClassNameTokens:
    """The class-name tokens of all tasks, task-major (B * K, n, d), padded to the longest task.

    Built from the per-task tokens the TextCache already holds; the concatenation itself is not
    cached (a new key every meta-batch would grow the cache without bound). The padding sits after
    every EOT, where the causal (or masked) text towers never look."""
    parts = [method.text.class_tokens(t.classnames) for t in tasks]
    n = max(p.embeds.shape[1] for p in parts)
    embeds = torch.cat([F.pad(p.embeds, (0, 0, 0, n - p.embeds.shape[1])) for p in parts])
    return ClassNameTokens(embeds, torch.cat([p.lengths for p in parts]))


class _Stacked:
    """One side (support or query) of all tasks, concatenated: image features, labels, and the
    task of every image (per-task index ranges, so tasks may have different numbers of images)."""

    def __init__(self, method: PromptMethod, tasks: list[TaskData], which: str):
        labels = [getattr(t, f"{which}_y") for t in tasks]
        # computed once: the image side of a CoOp-like method does not depend on its parameters
        self.features = torch.cat([method._image_features(getattr(t, which)) for t in tasks])
        self.y = torch.cat(labels)
        self.sizes = torch.tensor([len(y) for y in labels], device=self.y.device)
        self.task = torch.repeat_interleave(torch.arange(len(tasks), device=self.y.device), self.sizes)
        self.n_tasks = len(tasks)

    def per_task(self, values: Tensor) -> Tensor:
        """Per-image ``values`` (N,) -> their mean within each task (B,)."""
        out = torch.zeros(self.n_tasks, dtype=values.dtype, device=values.device)
        return out.index_add(0, self.task, values) / self.sizes.to(values.dtype)

    def losses(self, method: PromptMethod, text: Tensor) -> tuple[Tensor, Tensor]:
        """Per-task cross-entropy (B,) and logits (N, K): every image against its task's K text
        features only (``text`` (B, K, D)), the block diagonal of images x classes."""
        logits = method._scores(self.features, text[self.task])
        return self.per_task(F.cross_entropy(logits, self.y, reduction="none")), logits

    def accuracy(self, logits: Tensor) -> list[float]:
        return (100.0 * self.per_task((logits.argmax(-1) == self.y).float())).tolist()


def _text_features(method: PromptMethod, tokens: ClassNameTokens, ctx: Tensor) -> Tensor:
    """Text features (B, K, D) of every class prompt, spliced with its task's copy ``ctx`` (B, M, d):
    one forward of the text encoder for the whole meta-batch."""
    b, m, d = ctx.shape
    k = tokens.embeds.shape[0] // b
    embeds, lengths = splice_rows(tokens, ctx[:, None].expand(-1, k, -1, -1).reshape(b * k, m, d))
    return method.backbone.encode_text_embeddings(embeds, lengths).view(b, k, -1)


def _regulate(phi: Params | None, g: Tensor, regulator: RegulatorConfig) -> Tensor:
    """R_phi on each task's (M, d) gradient of the stack ``g`` (B, M, d).

    The literal form's "shared" (g @ W.T) and "diagonal" (W * g) broadcast over the task axis, so
    ``regulate`` takes the stack at once; "full" and the other forms (one norm per task) go task by task."""
    if phi is None:
        return g
    if regulator.shape in ("shared", "diagonal") and regulator.form_name == "literal":
        return regulate(phi, {CTX: g}, regulator)[CTX]
    return torch.stack([regulate(phi, {CTX: g_t}, regulator)[CTX] for g_t in g])


def batched_meta_loss(method: PromptMethod, theta: Params, phi: Params | None, regulator: RegulatorConfig | str,
                      tasks: list[TaskData], alpha: float, steps: int = 1, second_order: bool = False,
                      stats: bool = True) -> tuple[Tensor, StepStats | None]:
    """:func:`~gramprompt.meta.step.meta_loss` (same arguments, same result up to float rounding)
    with one text-encoder forward per inner step and one for the query, for all tasks at once.

    Needs a method for which :func:`supports_batched` holds, ``theta == {"text_ctx": (M, d)}`` and
    tasks with the same number of classes (support and query sizes may differ between tasks)."""
    if not supports_batched(method):
        raise ValueError(f"batched_meta_loss needs a CoOp-like method, got {method.name!r}; use meta_loss")
    if set(theta) != {CTX} or theta[CTX].dim() != 2:
        raise ValueError(f"batched_meta_loss needs theta == {{{CTX!r}: (M, d)}}, got "
                         f"{ {k: tuple(v.shape) for k, v in theta.items()} }")
    ways = {len(t.classnames) for t in tasks}
    if len(ways) != 1:
        raise ValueError(f"batched_meta_loss needs tasks with the same number of classes, got {sorted(ways)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    regulator = as_regulator(regulator)
    n_tasks = len(tasks)
    tokens = _stack_tokens(method, tasks)
    support, query = _Stacked(method, tasks, "support"), _Stacked(method, tasks, "query")
    copies = theta[CTX].unsqueeze(0).expand(n_tasks, -1, -1)  # theta_t: a view, so grads flow back to theta
    with second_order_context(second_order):
        ctx, raw, first, g_query, before = copies, None, None, None, None
        for step in range(steps):
            text = _text_features(method, tokens, ctx)
            s_loss, _ = support.losses(method, text)
            if step == 0 and stats:  # the query at theta shares these text features
                before = query.losses(method, text)
            # sum_t L_t: task t's term depends on copy t only, so this is every task's own gradient;
            # the step-0 graph stays for the "before" gradient (and the double backward)
            (g,) = torch.autograd.grad(s_loss.sum(), [ctx], create_graph=second_order,
                                       retain_graph=second_order or (step == 0 and stats))
            if step == 0 and stats:
                (g_query,) = torch.autograd.grad(before[0].sum(), [ctx], retain_graph=second_order)
            if step == 0:
                raw = g
            g = _regulate(phi, g, regulator)
            if step == 0:
                first = g
            ctx = ctx - alpha * g
        q_losses, q_logits = query.losses(method, _text_features(method, tokens, ctx))
    total = q_losses.sum()
    if not stats:
        return total, None
    def align(g: Tensor) -> float:
        return mean(F.cosine_similarity(g.detach().reshape(n_tasks, -1).float(), g_query.reshape(n_tasks, -1).float(),
                                        dim=1).tolist())

    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    b_losses, b_logits = before
    return total, StepStats(mean(b_losses.tolist()), mean(query.accuracy(b_logits)), mean(q_losses.tolist()),
                            mean(query.accuracy(q_logits)), align(first), align(raw))
