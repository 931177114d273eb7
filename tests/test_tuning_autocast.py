"""bf16 autocast for few-shot tuning (TuneConfig.autocast): the towers' matmuls run in bfloat16, the prompts and
SGD's momentum stay float32, the prompts move as in the fp32 run up to bf16 rounding, and runs tuned together equal
runs tuned alone under the same precision."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from gramprompt.prompts import build_method
from gramprompt.tuning.config import TuneConfig
from gramprompt.tuning.features import FeatureCache
from gramprompt.tuning.multirun import RunSpec, train_many
from gramprompt.tuning.train import sgd, train_prompts
from test_multirun import NAMES, _samples

FP32 = TuneConfig(epochs=2, batch_size=4, lr=0.05, warmup_epochs=1, feature_views=2)
BF16 = dataclasses.replace(FP32, autocast="bf16")


def _tune(method, init, cfg: TuneConfig, seed: int = 1):
    return train_prompts(method, init, _samples(4, seed), NAMES, cfg, seed=seed, cache=FeatureCache(method.backbone))


@pytest.mark.parametrize("name", ["coop", "vpt", "joint"])
def test_bf16_runs_the_towers_in_bfloat16_keeps_fp32_prompts_and_moves_them_as_fp32_does(backbone, gen, name,
                                                                                           monkeypatch):
    method = build_method(name, backbone)
    init = method.init_params(gen)
    full = _tune(method, init, FP32)
    seen, linear = [], torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear",
                        lambda x, w, b=None: seen.append(linear(x, w, b).dtype) or linear(x, w, b))
    half = _tune(method, init, BF16)
    assert torch.bfloat16 in seen  # the training steps' matmuls ran in bf16
    for k, v in half.items():
        assert v.dtype == torch.float32 and not torch.equal(v, full[k])  # fp32 prompts, from other arithmetic
        # bf16 rounds each matmul's inputs to 8 bits (2**-8 relative), which perturbs each step's gradient by a few
        # percent (the runs here differ by 1.5-7% of how far the prompts moved); a mistake in the step (a dropped or
        # mis-signed term, updates lost to bf16 prompts) changes the result by the size of the update itself
        moved = float((full[k] - init[k]).abs().max())
        assert float((v - full[k]).abs().max()) < 0.5 * moved, k


def test_sgd_state_stays_fp32_under_bf16(backbone, gen):
    method = build_method("coop", backbone)
    params = {k: v.requires_grad_(True) for k, v in method.init_params(gen).items()}
    opt = sgd(method, params, BF16)
    assert all(opt.state[p]["momentum_buffer"].dtype == torch.float32 for p in params.values())


@pytest.mark.parametrize("name", ["coop", "vpt"])
def test_bf16_runs_stepped_one_by_one_equal_bf16_train_prompts_bit_for_bit(backbone, gen, name):
    method = build_method(name, backbone)
    inits = [method.init_params(gen) for _ in range(2)]
    specs = [RunSpec(inits[i], _samples(4, i + 1), seed=i + 1) for i in range(2)]
    together = train_many(method, specs, NAMES, BF16, cache=FeatureCache(backbone), stack=False)
    for spec, out in zip(specs, together):
        alone = train_prompts(method, spec.init, spec.samples, NAMES, BF16, seed=spec.seed,
                              cache=FeatureCache(backbone))
        assert all(torch.equal(out[k], alone[k]) for k in alone)


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="autocast"):
        TuneConfig(autocast="fp8")
    assert TuneConfig(autocast="none").autocast == "none" and TuneConfig().autocast is None
