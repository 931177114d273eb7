"""Meta-training loop: a killed run resumes to exactly the uninterrupted result; bad batches skipped."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gramprompt.errors import GramError, NonFiniteError, RunFolderError
from gramprompt.meta.inputs import FeatureInputs
from gramprompt.meta.tasks import TaskConfig, TaskSampler
from gramprompt.meta.trainer import MetaConfig, MetaTrainer
from gramprompt.prompts import PromptConfig, build_method

NAMES = ["apple", "boat", "cloud", "drum", "eagle", "fern"]


@pytest.fixture
def data(backbone):
    rng = np.random.default_rng(0)
    topic, domain = np.repeat(np.arange(6), 30), np.tile(np.repeat(np.arange(3), 10), 6)
    d = backbone.embed_dim
    feats = rng.normal(size=(6, d))[topic] + rng.normal(size=(3, d))[domain] + 0.3 * rng.normal(size=(180, d))
    sampler = TaskSampler(topic, domain, NAMES, TaskConfig(ways=3, support_shots=2, query_shots=4))
    return sampler, FeatureInputs(torch.tensor(feats, dtype=torch.float32))


def config(**kw) -> MetaConfig:
    return MetaConfig(**{"iterations": 6, "task_batch": 2, "checkpoint_every": 3, "stats_every": 2, **kw})


def test_killed_run_resumes_to_the_same_result(backbone, data, tmp_path):
    sampler, inputs = data
    method = build_method("coop", backbone)
    whole = MetaTrainer(method, sampler, inputs, config(), tmp_path / "whole").run()

    def kill(record):
        if record["iteration"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        MetaTrainer(method, sampler, inputs, config(), tmp_path / "resumed", log=kill).run()
    logs = []
    resumed = MetaTrainer(method, sampler, inputs, config(), tmp_path / "resumed", log=logs.append).run()
    assert [r["iteration"] for r in logs] == [4, 5, 6]  # continued after the checkpoint at 3
    for name in whole.theta:
        assert torch.equal(whole.theta[name], resumed.theta[name])
    for name in whole.phi:
        assert torch.equal(whole.phi[name], resumed.phi[name])
    assert not torch.equal(whole.theta["text_ctx"], method.init_params(torch.Generator().manual_seed(0))["text_ctx"])
    assert {"alignment", "query_acc_after"} <= set(logs[-1])
    with pytest.raises(ValueError, match="inner_lr"):  # other settings would silently mix two runs
        MetaTrainer(method, sampler, inputs, config(inner_lr=0.5), tmp_path / "resumed").run()
    longer = MetaTrainer(method, sampler, inputs, config(iterations=7), tmp_path / "resumed").run()
    assert longer.iteration == 7  # more iterations may be asked of a finished run


def test_non_finite_batches_are_skipped_and_counted(backbone, data, tmp_path):
    sampler, inputs = data
    inputs.features[5] = float("nan")  # one poisoned image: a few batches skipped, the run goes on
    state = MetaTrainer(build_method("coop", backbone), sampler, inputs, config(iterations=30, checkpoint_every=30),
                        tmp_path / "one").run()
    assert 0 < state.skipped <= 3 and all(torch.isfinite(v).all() for v in [*state.theta.values(), *state.phi.values()])
    inputs.features[0:30] = float("nan")  # every task with "apple" is poisoned: most batches, no theta*
    with pytest.raises(NonFiniteError, match="3 of 6 steps"):
        MetaTrainer(build_method("coop", backbone), sampler, inputs, config(), tmp_path / "nan").run()


@pytest.mark.parametrize("setting", [{"lr_theta": float("nan")}, {"inner_lr": float("inf")}, {"lr_phi": -1e-3}])
def test_non_finite_rates_are_refused_before_training(backbone, data, tmp_path, setting):
    with pytest.raises(NonFiniteError, match=next(iter(setting))):
        MetaTrainer(build_method("coop", backbone), *data, config(**setting), tmp_path).run()
    assert not (tmp_path / "checkpoint").exists()


@pytest.mark.parametrize("setting", [{"lr_theta": 1e30}, {"inner_lr": 1e30}])
def test_rates_that_break_theta_fail_without_a_result(backbone, data, tmp_path, setting):
    """lr_theta 1e30: theta = 1e30 after one step, then every loss is NaN; inner_lr 1e30: every batch NaN."""
    with pytest.raises(NonFiniteError, match="non-finite"):
        MetaTrainer(build_method("coop", backbone), *data, config(iterations=40, **setting), tmp_path).run()


def test_resume_never_unpickles_code(backbone, data, tmp_path):
    """A planted pickle in checkpoint/state.pt must not run: checkpoints load with weights_only."""
    sampler, inputs = data
    method = build_method("coop", backbone)
    MetaTrainer(method, sampler, inputs, config(), tmp_path).run()
    marker = tmp_path / "pwned"

    class Planted:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"iteration": 3, "skipped": 0, "rng": {}, "optimizer": Planted()}, tmp_path / "checkpoint" / "state.pt")
    with pytest.raises(GramError, match="cannot be loaded safely"):
        MetaTrainer(method, sampler, inputs, config(iterations=8), tmp_path).run()
    assert not marker.exists()


def test_a_damaged_checkpoint_is_a_clear_error(backbone, data, tmp_path):
    sampler, inputs = data
    method = build_method("coop", backbone)
    MetaTrainer(method, sampler, inputs, config(), tmp_path).run()
    (tmp_path / "checkpoint" / "state.pt").write_bytes(b"truncated")
    with pytest.raises(GramError, match="checkpoint"):
        MetaTrainer(method, sampler, inputs, config(iterations=8), tmp_path).run()
    params = tmp_path / "checkpoint" / "params.safetensors"
    params.write_bytes(params.read_bytes()[:40])
    with pytest.raises(GramError, match="damaged"):
        MetaTrainer(method, sampler, inputs, config(iterations=8), tmp_path).run()


def test_no_regulator_ablation_has_no_phi(backbone, data, tmp_path):
    sampler, inputs = data
    state = MetaTrainer(build_method("coop", backbone), sampler, inputs, config(use_regulator=False), tmp_path).run()
    assert state.phi == {} and state.iteration == 6


def _recording(inputs):
    """``inputs`` whose ``batch`` also records the rows each call asks for."""
    seen = []
    read = inputs.batch
    inputs.batch = lambda rows: seen.append(np.asarray(rows).copy()) or read(rows)
    return inputs, seen


@pytest.fixture
def pixel_data(backbone, data):
    """The same topics with images instead of features: for methods whose prompts enter the image encoder."""
    sampler, _ = data
    size = backbone.model.config.vision_config.image_size
    pixels = torch.randn(180, 3, size, size, generator=torch.Generator().manual_seed(0))
    return sampler, FeatureInputs(pixels, kind="pixels")


TOPIC = np.repeat(np.arange(6), 30)  # the data fixture's topic of each row


@pytest.mark.parametrize("method_name,prompt,inputs_of", [
    ("coop", PromptConfig(), "data"),
    ("joint", PromptConfig(text_tokens=2, visual_tokens=2), "pixel_data"),  # UNIGRAM: visual prompts too
])
def test_pretrain_classifies_the_images_over_all_topics(backbone, request, tmp_path, method_name, prompt, inputs_of):
    """The "- meta-learning" ablation: each iteration's loss is the cross-entropy of a batch of images
    over ALL 6 topic names (not a 3-way task's), and theta takes plain Adam steps on it (no phi)."""
    sampler, inputs = request.getfixturevalue(inputs_of)
    inputs, seen = _recording(inputs)
    method = build_method(method_name, backbone, prompt)
    cfg = config(mode="pretrain", iterations=3, lr_theta=0.05)
    logs = []
    state = MetaTrainer(method, sampler, inputs, cfg, tmp_path, log=logs.append).run()
    assert state.phi == {} and len(seen) == 3
    # independent truth: hand-written cross-entropy over all topic names, labels from the data's own topic
    # array, then the same clipped Adam steps
    theta = {k: v.requires_grad_() for k, v in method.init_params(torch.Generator().manual_seed(cfg.seed)).items()}
    opt = torch.optim.Adam(list(theta.values()), lr=cfg.lr_theta)
    for rows, record in zip(seen, logs):
        assert len(rows) == len(set(rows.tolist())) == cfg.task_batch * 3 * (2 + 4)  # a meta-batch's images
        logits = method.logits(theta, FeatureInputs.batch(inputs, rows), NAMES)  # unrecorded read
        assert logits.shape == (len(rows), len(NAMES))
        y = torch.as_tensor(TOPIC[rows])
        loss = (torch.logsumexp(logits, dim=1) - logits[torch.arange(len(rows)), y]).mean()
        assert record["meta_loss"] == pytest.approx(loss.item(), rel=1e-5)
        opt.zero_grad()
        loss.backward()
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in theta.values()]))
        for p in theta.values():
            p.grad *= min(1.0, cfg.grad_clip / (float(norm) + 1e-12))
        opt.step()
    for name in theta:
        torch.testing.assert_close(state.theta[name], theta[name].detach())


def test_every_topic_appears_in_pretraining_and_its_checkpoint_has_no_regulator(backbone, data, tmp_path):
    from gramprompt.meta.checkpoint import regulated_grad_transform, save_gram

    sampler, inputs = data
    inputs, seen = _recording(inputs)
    state = MetaTrainer(build_method("coop", backbone), sampler, inputs, config(mode="pretrain"), tmp_path).run()
    assert set(TOPIC[np.concatenate(seen)].tolist()) == set(range(6))  # not only some 3 topics of a task
    path = save_gram(tmp_path / "gram.safetensors", state.theta, state.phi, {"method": "coop"})
    assert regulated_grad_transform(path) is None  # test time: plain tuning from theta


def test_killed_pretraining_resumes_to_the_same_result(backbone, data, tmp_path):
    sampler, inputs = data
    method = build_method("coop", backbone)
    cfg = config(mode="pretrain")
    whole = MetaTrainer(method, sampler, inputs, cfg, tmp_path / "whole").run()

    def kill(record):
        if record["iteration"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        MetaTrainer(method, sampler, inputs, cfg, tmp_path / "resumed", log=kill).run()
    resumed = MetaTrainer(method, sampler, inputs, cfg, tmp_path / "resumed").run()
    assert resumed.phi == {} and torch.equal(whole.theta["text_ctx"], resumed.theta["text_ctx"])
    with pytest.raises(ValueError, match="mode"):  # a GRAM run never resumes a pre-training checkpoint
        MetaTrainer(method, sampler, inputs, config(iterations=8), tmp_path / "resumed").run()


def test_bf16_autocast_runs_the_forward_in_bfloat16_and_keeps_fp32_state(backbone, data, tmp_path, monkeypatch):
    sampler, inputs = data
    method = build_method("coop", backbone)
    full = MetaTrainer(method, sampler, inputs, config(), tmp_path / "fp32").run()
    seen = []
    linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear",
                        lambda x, w, b=None: seen.append(linear(x, w, b).dtype) or linear(x, w, b))
    half = MetaTrainer(method, sampler, inputs, config(autocast="bf16"), tmp_path / "bf16").run()
    assert torch.bfloat16 in seen  # the text tower's matmuls ran in bf16
    for name, v in half.theta.items():
        assert v.dtype == torch.float32 and torch.isfinite(v).all()
        assert not torch.equal(v, full.theta[name])  # a different precision ...
        torch.testing.assert_close(v, full.theta[name], rtol=0.1, atol=0.02)  # ... close to the fp32 result
    with pytest.raises(ValueError, match="autocast"):
        MetaTrainer(method, sampler, inputs, config(autocast="fp8"), tmp_path / "bad").run()


def test_checkpoints_from_before_an_option_existed_still_resume(backbone, data, tmp_path):
    import json

    sampler, inputs = data
    method = build_method("coop", backbone)
    MetaTrainer(method, sampler, inputs, config(iterations=3), tmp_path / "old").run()
    saved = tmp_path / "old" / "checkpoint" / "config.json"
    cfg = json.loads(saved.read_text())
    del cfg["autocast"]  # written by a version without the option
    saved.write_text(json.dumps(cfg))
    assert MetaTrainer(method, sampler, inputs, config(iterations=4), tmp_path / "old").run().iteration == 4


def test_checkpoints_from_before_the_regulator_form_existed_still_resume(backbone, data, tmp_path):
    """Their config.json says ``regulator: {..., scale_invariant: true}`` and no form: the same run as
    form "scale-invariant" (the old spelling is canonical), a different one from "bounded"."""
    import json

    from gramprompt.meta.regulator import RegulatorConfig

    sampler, inputs = data
    method = build_method("coop", backbone)
    MetaTrainer(method, sampler, inputs, config(iterations=3, regulator=RegulatorConfig(scale_invariant=True)),
                tmp_path / "old").run()
    saved = tmp_path / "old" / "checkpoint" / "config.json"
    cfg = json.loads(saved.read_text())
    del cfg["regulator"]["form"]  # written by a version without the option
    saved.write_text(json.dumps(cfg))
    resumed = config(iterations=4, regulator=RegulatorConfig(form="scale-invariant"))
    assert MetaTrainer(method, sampler, inputs, resumed, tmp_path / "old").run().iteration == 4
    with pytest.raises(ValueError, match="regulator.form"):
        MetaTrainer(method, sampler, inputs, config(iterations=5, regulator=RegulatorConfig(form="bounded")),
                    tmp_path / "old").run()


def test_a_full_disk_while_checkpointing_names_the_folder_and_keeps_the_last_checkpoint(backbone, data, tmp_path,
                                                                                          monkeypatch):
    """Reliability probe: a full disk during meta-training raised torch's RuntimeError, naming no file."""
    import gramprompt.meta.trainer as trainer

    MetaTrainer(build_method("coop", backbone), *data, config(iterations=2, checkpoint_every=1), tmp_path).run()
    before = (tmp_path / "checkpoint" / "params.safetensors").read_bytes()

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(trainer.torch, "save", full)
    with pytest.raises(RunFolderError, match="cannot write the checkpoint in .*checkpoint.tmp .*disk full.*resume"):
        MetaTrainer(build_method("coop", backbone), *data, config(iterations=4, checkpoint_every=1), tmp_path).run()
    assert (tmp_path / "checkpoint" / "params.safetensors").read_bytes() == before


def test_a_full_disk_is_one_clear_line(capsys, tmp_path, monkeypatch):
    import errno as errno_

    from gramprompt import cli

    err = OSError(errno_.ENOSPC, "No space left on device", str(tmp_path / "x.npy"))
    assert cli._one_line(err).startswith(f"no space left on the device while writing {tmp_path / 'x.npy'}")


@pytest.mark.parametrize("method_name,prompt,inputs_of", [
    ("kgcoop", PromptConfig(), "data"),
    ("maple", PromptConfig(text_tokens=2, visual_tokens=2, text_init="a photo of a"), "pixel_data"),
    ("promptsrc", PromptConfig(text_tokens=2, visual_tokens=2), "pixel_data"),
])
def test_gram_meta_trains_the_methods_users_compare_against(backbone, request, tmp_path, method_name, prompt, inputs_of):
    """GRAM over KgCoOp, MaPLe and PromptSRC: every prompt tensor is meta-learned and has its regulator (the inner
    and query losses are the methods' own objectives: tests/test_prompt_objectives.py)."""
    sampler, inputs = request.getfixturevalue(inputs_of)
    method = build_method(method_name, backbone, prompt)
    cfg = config(iterations=2, stats_every=0)
    logs = []
    state = MetaTrainer(method, sampler, inputs, cfg, tmp_path, log=logs.append).run()
    theta0 = method.init_params(torch.Generator().manual_seed(cfg.seed))
    assert set(state.theta) == set(theta0) and all(not torch.equal(state.theta[k], theta0[k]) for k in theta0)
    assert {k.rsplit(".", 1)[0] for k in state.phi} == set(theta0)
    assert len(logs) == 2 and all(np.isfinite(r["meta_loss"]) for r in logs)
