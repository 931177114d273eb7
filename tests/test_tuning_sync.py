"""The training step never waits for the device: non-finite steps are skipped by a masked update on the device
(bit for bit SGD's own step where it is taken, nothing where it is not), and the tuners read their totals once per
epoch, so the number of host reads does not grow with the number of steps (on CUDA, tests/test_cuda.py runs the
step loop under ``torch.cuda.set_sync_debug_mode("error")``)."""
from __future__ import annotations

import pytest
import torch

from gramprompt.meta.regulator import RegulatorConfig, init_regulator, regulate
from gramprompt.prompts import build_method
from gramprompt.tuning.config import TuneConfig
from gramprompt.tuning.multirun import RunSpec, train_many
from gramprompt.tuning.train import masked_step, sgd, train_prompts
from test_multirun import NAMES, _samples


def _opt(method, params):
    return sgd(method, params, TuneConfig(lr=0.1, momentum=0.9, weight_decay=5e-3))


def test_masked_step_is_sgd_where_taken_and_nothing_where_skipped(backbone):
    method = build_method("coop", backbone)
    gen = torch.Generator().manual_seed(0)
    start = {"text_ctx": torch.randn(4, backbone.text_width, generator=gen)}
    grads = [{"text_ctx": torch.randn(4, backbone.text_width, generator=gen)} for _ in range(4)]
    nan = {"text_ctx": torch.full((4, backbone.text_width), float("nan"))}
    # reference: torch's SGD from its own (lazily made) momentum buffer, never shown the skipped steps
    ref = {k: v.clone().requires_grad_(True) for k, v in start.items()}
    ref_opt = torch.optim.SGD(list(ref.values()), lr=0.1, momentum=0.9, weight_decay=5e-3)
    ours = {k: v.clone().requires_grad_(True) for k, v in start.items()}
    opt = _opt(method, ours)
    masked_step(opt, ours, nan, torch.tensor(False))  # a skipped first step: nothing moves
    assert torch.equal(ours["text_ctx"], start["text_ctx"]) and not opt.state[ours["text_ctx"]]["momentum_buffer"].any()
    for g in grads:
        ref["text_ctx"].grad = g["text_ctx"].clone()
        ref_opt.step()
        masked_step(opt, ours, g, torch.tensor(True))
        masked_step(opt, ours, nan, torch.tensor(False))  # skipped between every two real steps
        assert torch.equal(ours["text_ctx"], ref["text_ctx"])
    assert torch.equal(opt.state[ours["text_ctx"]]["momentum_buffer"], ref_opt.state[ref["text_ctx"]]["momentum_buffer"])


class _HostReads:
    """Counts the calls that read a tensor's value on the host: .item(), .tolist(), bool(), float(), int()."""

    NAMES = ("item", "tolist", "__bool__", "__float__", "__int__")

    def __init__(self, monkeypatch):
        self.calls = 0
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(original))

    def _counting(self, original):
        def wrapper(t, *args, **kwargs):
            self.calls += 1
            return original(t, *args, **kwargs)
        return wrapper


@pytest.mark.parametrize("tuner", ["single", "multi"])
@pytest.mark.parametrize("name,regulated", [("coop", False), ("coop", True), ("kgcoop", False), ("prograd", False)])
def test_host_reads_do_not_grow_with_the_steps(backbone, monkeypatch, tuner, name, regulated):
    method = build_method(name, backbone, template="a photo of a {}.")
    init = method.init_params(torch.Generator().manual_seed(0))
    reg = RegulatorConfig("shared", "bounded", weight_init_std=0.3)
    phi = init_regulator(init, reg, torch.Generator().manual_seed(1))
    transform = (lambda g: regulate(phi, g, reg)) if regulated else None  # noqa: E731
    samples = _samples(4, 0)
    counts = []
    for batch in (4, 1):  # 3 and 12 steps an epoch, the same images
        cfg = TuneConfig(epochs=2, batch_size=batch, lr=0.05, warmup_epochs=0, feature_views=1)
        train_prompts(method, init, samples, NAMES, cfg, seed=1)  # caches the frozen targets (templates) first
        reads = _HostReads(monkeypatch)
        if tuner == "single":
            train_prompts(method, init, samples, NAMES, cfg, seed=1, grad_transform=transform)
        else:
            out = train_many(method, [RunSpec(init, samples, 1, grad_transform=transform)] * 2, NAMES, cfg)
            assert not any(isinstance(o, Exception) for o in out)
        counts.append(reads.calls)
        monkeypatch.undo()
    assert counts[0] == counts[1], f"host reads grew with the steps: {counts}"

