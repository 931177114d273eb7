"""Many runs trained together (tuning.multirun) against train_prompts run alone, the one-run reference:
the same parameters, records and callbacks per run (bit for bit when runs are stepped one by one, within
float32 rounding when CoOp-like runs share one text-encoder forward), and a failing run that stops alone."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from gramprompt.data.dataset import Sample
from gramprompt.errors import NonFiniteError
from gramprompt.prompts import build_method
from gramprompt.tuning.config import TuneConfig
from gramprompt.tuning.features import FeatureCache
from gramprompt.prompts.coop import coop_like
from gramprompt.prompts.vpt import vpt_like
from gramprompt.tuning.multirun import (RunSpec, _Run, _saved_bytes, available_memory, bytes_per_run, runs_that_fit,
                                        steps_together, train_many)
from gramprompt.tuning.train import train_prompts
from tolerance import assert_fp32_close, hf_clip_tower

NAMES = ["zero", "one", "two"]
CFG = TuneConfig(epochs=2, batch_size=4, lr=0.05, warmup_epochs=1, feature_views=2)


def _samples(n_per_class: int, seed: int) -> list[Sample]:
    rng = np.random.default_rng(seed)
    return [Sample(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), c) for c in range(3) for _ in range(n_per_class)]


def _halve(grads):
    return {k: 0.5 * v for k, v in grads.items()}


def _specs(method, gen) -> list[RunSpec]:
    """Three runs that differ in everything a run owns: init, sample (and its size: 12 or 6 images, so the
    second run's epochs end a step early), seed and gradient transform."""
    inits = [method.init_params(gen) for _ in range(3)]
    return [RunSpec(inits[0], _samples(4, 0), seed=1, cache_key=("a",)),
            RunSpec(inits[1], _samples(2, 1), seed=2, grad_transform=_halve, cache_key=("b",)),
            RunSpec(inits[2], _samples(4, 2), seed=3, cache_key=("c",))]


def _assert_close_to_alone(backbone, spec: RunSpec, out, ref, steps: int = CFG.epochs * 3) -> None:
    """The shared forward's float32 rounding: per step the image features, the text tower's forward and
    backward and the update (as tests/test_tuning.py's one step); the steps chain, and momentum 0.9 carries
    a step's gradient error into the later updates up to 1 / (1 - 0.9) times, so the size of the updates
    counts ten-fold beside the parameters' own."""
    image, text = hf_clip_tower(backbone, "vision"), hf_clip_tower(backbone, "text", extra_depth=4)
    assert out.keys() == ref.keys()
    for k in ref:
        moved = float((ref[k] - spec.init[k]).abs().max())
        assert_fp32_close(out[k], ref[k], terms=max(image["terms"], text["terms"]),
                          depth=steps * (image["depth"] + 2 * text["depth"] + 1),
                          scale=float(spec.init[k].abs().max()) + moved / (1 - CFG.momentum), msg=k)


def _assert_each_close_to_alone(backbone, method, specs, outs, records) -> None:
    """Every run tuned together against train_prompts alone: parameters within float rounding, the same epochs,
    no skipped step, the same losses to float rounding."""
    for spec, out, rec in zip(specs, outs, records):
        ref, ref_rec, _ = _alone(method, spec)
        _assert_close_to_alone(backbone, spec, out, ref)
        assert [r["epoch"] for r in rec] == [1, 2]
        for r, q in zip(rec, ref_rec):
            assert r["skipped_steps"] == q["skipped_steps"] == 0 and math.isclose(r["loss"], q["loss"], rel_tol=1e-4)


def _alone(method, spec: RunSpec, cfg: TuneConfig = CFG):
    records, epochs = [], []
    out = train_prompts(method, spec.init, spec.samples, NAMES, cfg, seed=spec.seed, grad_transform=spec.grad_transform,
                        cache=FeatureCache(method.backbone), cache_key=spec.cache_key, log=records.append,
                        on_epoch=lambda e, p: epochs.append((e, {k: v.detach().clone() for k, v in p.items()})))
    return out, records, epochs


def _together(method, specs: list[RunSpec], cfg: TuneConfig = CFG, **kw):
    records = [[] for _ in specs]
    epochs = [[] for _ in specs]
    with_logs = [RunSpec(s.init, s.samples, s.seed, s.grad_transform, s.cache_key, records[i].append,
                         lambda e, p, i=i: epochs[i].append((e, {k: v.detach().clone() for k, v in p.items()})))
                 for i, s in enumerate(specs)]
    return train_many(method, with_logs, NAMES, cfg, cache=FeatureCache(method.backbone), **kw), records, epochs


@pytest.mark.parametrize("name,lr_scale", [("coop", {}), ("vpt", {}), ("cocoop", {}), ("joint", {}),
                                           ("joint", {"visual": 0.3, "text": 2.0})])
def test_runs_stepped_one_by_one_equal_train_prompts_bit_for_bit(backbone, gen, name, lr_scale):
    method = build_method(name, backbone)
    specs = _specs(method, gen)
    cfg = dataclasses.replace(CFG, lr_scale=lr_scale)
    outs, records, epochs = _together(method, specs, cfg, stack=False)
    for spec, out, rec, ep in zip(specs, outs, records, epochs):
        ref, ref_rec, ref_ep = _alone(method, spec, cfg)
        assert out.keys() == ref.keys() and all(torch.equal(out[k], ref[k]) for k in ref)
        assert rec == ref_rec and [e for e, _ in ep] == [e for e, _ in ref_ep] == [1, 2]
        assert all(torch.equal(p[k], q[k]) for (_, p), (_, q) in zip(ep, ref_ep) for k in p)
    assert [len(r) for r in records] == [2, 2, 2] and records[1][0]["train_acc"] is not None


@pytest.mark.parametrize("name", ["coop", "cocoop"])
def test_runs_share_one_text_forward_and_agree_within_float_rounding(backbone, gen, name):
    method = build_method(name, backbone)
    assert steps_together(method) and not steps_together(build_method("zeroshot", backbone))
    assert coop_like(method) == (name == "coop") and coop_like(type(method)) == (name == "coop")
    specs = _specs(method, gen)
    calls = []
    encode = backbone.encode_text_embeddings

    def counting(embeds, lengths):
        calls.append(embeds.shape[0])
        return encode(embeds, lengths)

    backbone.encode_text_embeddings = counting
    try:
        outs, records, _ = _together(method, specs)
    finally:
        del backbone.encode_text_embeddings
    # 2 epochs x 3 steps, 3 classes: CoOp one prompt per run and class, CoCoOp one per image and class (batch 4);
    # run 2 has 6 images: 2 in its second step, and it is out of each epoch's third
    per_step = [3 * 3, 3 * 3, 3 * 2] if name == "coop" else [3 * (4 + 4 + 4), 3 * (4 + 2 + 4), 3 * (4 + 4)]
    assert calls == per_step * 2
    _assert_each_close_to_alone(backbone, method, specs, outs, records)


@pytest.mark.parametrize("deep", [False, True])
def test_per_image_prompts_equal_each_image_through_its_own_prompts(backbone, gen, deep):
    """The multi-run tuner's image forward: images of three runs in one batch, each with its run's visual
    prompts, against each run's images through its prompts alone (hf image tower, shallow and deep)."""
    shape = (2, 3, backbone.vision_width) if deep else (3, backbone.vision_width)
    prompts = [torch.randn(shape, generator=gen) for _ in range(3)]
    stems = [backbone.encode_image_stem(torch.randn(n, 3, 32, 32, generator=gen)) for n in (2, 1, 3)]
    alone = torch.cat([backbone.encode_image_from_stem(s, p) for s, p in zip(stems, prompts)])
    per_image = torch.cat([p.expand(len(s), *shape) for s, p in zip(stems, prompts)])
    together = backbone.encode_image_from_stem(torch.cat(stems), per_image, per_image=True)
    image = hf_clip_tower(backbone, "vision")
    assert_fp32_close(together, alone, terms=image["terms"], depth=image["depth"], scale=float(alone.abs().max()))
    assert (alone[:2] - backbone.encode_image_from_stem(stems[0], prompts[1])).abs().max() > 1e-3  # prompts act
    with pytest.raises(ValueError, match="per-image prompts for 5 images"):
        backbone.encode_image_from_stem(torch.cat(stems), per_image[:5], per_image=True)


@pytest.mark.parametrize("name", ["vpt", "vpt-deep", "joint"])
def test_visual_prompt_runs_share_one_image_forward_and_agree_within_float_rounding(backbone, gen, name):
    method = build_method(name, backbone)
    assert steps_together(method) and vpt_like(method) and vpt_like(type(method)) and not coop_like(method)
    specs = _specs(method, gen)
    calls = []
    encode = backbone.encode_image_from_stem

    def counting(stems, prompts=None, *, per_image=False):
        calls.append((len(stems), per_image))
        return encode(stems, prompts, per_image=per_image)

    backbone.encode_image_from_stem = counting
    try:
        outs, records, _ = _together(method, specs)
    finally:
        del backbone.encode_image_from_stem
    # 2 epochs x 3 steps, batch 4: run 2 has 6 images, 2 in its second step, and it is out of each epoch's third
    assert calls == [(12, True), (10, True), (8, True)] * 2
    _assert_each_close_to_alone(backbone, method, specs, outs, records)


def test_saved_bytes_and_runs_that_fit_by_hand():
    x = torch.ones(1000, requires_grad=True)
    w, frozen = torch.full((1000,), 2.0, requires_grad=True), torch.full((1000,), 2.0)
    assert _saved_bytes(lambda: (x * w).sum()) == 2 * 1000 * 4  # mul saves each input for the other's gradient
    assert _saved_bytes(lambda: (x * frozen).sum()) == 1000 * 4  # x's gradient needs the frozen factor only
    assert _saved_bytes(lambda: (x * x).sum()) == 1000 * 4  # one storage, counted once
    assert runs_that_fit(100, 1000) == 5 and runs_that_fit(100, 1000, share=1.0) == 10
    assert runs_that_fit(10**9, 1000) == 1 and runs_that_fit(100, None) is None
    assert available_memory(torch.device("cpu")) is None or available_memory(torch.device("cpu")) > 0


@pytest.mark.parametrize("name", ["coop", "vpt"])
def test_runs_split_into_groups_that_fit_the_memory(backbone, gen, name):
    """A memory too small for two runs' steps: each run is tuned in a group of its own, within float rounding of
    train_prompts; memory to spare: one group, bit for bit as without the probe."""
    method = build_method(name, backbone)
    specs = _specs(method, gen)
    runs = [_Run(method, s, CFG, FeatureCache(backbone)) for s in specs]
    per_run = bytes_per_run(method, runs, NAMES)
    assert per_run > 0
    ample, _, _ = _together(method, specs, memory=10 * per_run * len(specs))
    plain, _, _ = _together(method, specs)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(ample, plain) for k in a)
    calls = []  # the runs of each shared forward: the probe's 1 and 2, then the groups' steps
    import gramprompt.tuning.multirun as multirun

    original = multirun._logits
    multirun._logits = lambda m, runs, *a: calls.append(len(runs)) or original(m, runs, *a)
    try:
        alone, _, _ = _together(method, specs, memory=per_run)  # share 0.5: fits one run
    finally:
        multirun._logits = original
    assert calls[:2] == [1, 2] and set(calls[2:]) == {1} and len(calls) == 2 + 2 * (3 + 2 + 3)  # each run alone
    for spec, out in zip(specs, alone):
        ref, _, _ = _alone(method, spec)
        _assert_close_to_alone(backbone, spec, out, ref)


@pytest.mark.parametrize("stack", [True, False])
def test_a_failing_run_stops_alone(backbone, gen, stack):
    coop = build_method("coop", backbone)
    specs = _specs(coop, gen)
    nan = RunSpec(specs[0].init, specs[0].samples, 1, lambda g: {k: v * float("nan") for k, v in g.items()}, ("a",))
    outs, records, _ = _together(coop, [nan, specs[1], RunSpec({}, specs[0].samples, 4)], stack=stack)
    assert isinstance(outs[0], NonFiniteError) and "6 of 6 steps" in str(outs[0])  # every step skipped
    assert [r["skipped_steps"] for r in records[0]] == [3, 3]
    assert outs[2] == {}
    ref, ref_rec, _ = _alone(coop, specs[1])
    if stack:
        _assert_close_to_alone(backbone, specs[1], outs[1], ref)
    else:
        assert records[1] == ref_rec and torch.equal(outs[1]["text_ctx"], ref["text_ctx"])
    # a finite gradient times a finite but huge lr overflows one run's prompts: its error, the other run goes on
    cfg = TuneConfig(epochs=1, lr=1e38, momentum=0.0, weight_decay=0.0, warmup_epochs=0, batch_size=4, feature_views=2)
    huge = RunSpec(specs[0].init, specs[0].samples, 1, lambda g: {k: v * 1e10 for k, v in g.items()}, ("a",))
    still = RunSpec(specs[2].init, specs[2].samples, 3, lambda g: {k: torch.zeros_like(v) for k, v in g.items()}, ("c",))
    outs, records, _ = _together(coop, [huge, still], cfg, stack=stack)
    assert isinstance(outs[0], NonFiniteError) and "made text_ctx non-finite" in str(outs[0]) and records[0] == []
    assert torch.equal(outs[1]["text_ctx"], specs[2].init["text_ctx"]) and [r["epoch"] for r in records[1]] == [1]
    (alone,), _, _ = _together(coop, [huge], cfg, stack=stack)  # every run failed mid-epoch: its error, no crash
    assert isinstance(alone, NonFiniteError) and "made text_ctx non-finite" in str(alone)


def _fewshot(method: str, seed: int, **kw):
    from gramprompt.eval.protocols import FewShotConfig

    return FewShotConfig(method=method, shots=2, seed=seed, max_test_per_class=3,
                         tune=TuneConfig(epochs=2, batch_size=4, warmup_epochs=1, feature_views=1), **kw)


@pytest.mark.parametrize("method", ["coop", "vpt"])
def test_base_to_new_many_gives_each_run_the_summary_of_base_to_new(backbone, method, tmp_path):
    from gramprompt.data.registry import load_dataset
    from gramprompt.eval.protocols import base_to_new, base_to_new_many
    from gramprompt.runs import RunDir

    digits = load_dataset("digits")
    cfgs = [_fewshot(method, 1), _fewshot(method, 2), _fewshot(method, 1, init_seed=7, label=f"{method}-other")]
    runs = [RunDir.create(tmp_path / f"run{i}", {"i": i}) for i in range(3)]
    together = base_to_new_many(backbone, digits, cfgs, runs=runs)
    for cfg, run, got in zip(cfgs, runs, together):
        alone = base_to_new(backbone, digits, cfg)
        assert got["runs_together"] == 3 and got["label"] == alone["label"] and got["seed"] == cfg.seed
        same = ("base", "new", "h", "correct", "train_images", "init_seed", "method")
        assert {k: got.get(k) for k in same} == {k: alone.get(k) for k in same}
        assert run.read_summary()["correct"] == got["correct"] and (run.path / "prompts.safetensors").is_file()
    with pytest.raises(ValueError, match="share every setting"):
        base_to_new_many(backbone, digits, [_fewshot(method, 1), _fewshot("coop" if method == "vpt" else "vpt", 2)])
