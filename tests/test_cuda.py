"""The library on a CUDA device against the same computation on the CPU, the reference: image and text
features, one-run tuning of every method (with GRAM's test-time update), the multi-run tuner, the batched
meta-step and meta-training, evaluation. Skipped where torch sees no CUDA device (CI); on a GPU machine:
``python -m pytest tests/test_cuda.py``. ``GRAMPROMPT_TEST_DEVICE`` names another device to compare (``cuda:1``,
``mps``; ``cpu`` runs the tests' own code against itself).

Both sides are float32: TF32 (cuDNN's default for convolutions, which the ViT patch embedding is) is turned
off for these tests, so that the tolerances of tests/tolerance.py apply (the kernels differ, the precision
does not). A user keeps whatever precision settings they chose; the library sets none."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from gramprompt.backbones import load_backbone
from gramprompt.chc.features import encode_texts
from gramprompt.data.images import load_image
from gramprompt.eval.evaluate import evaluate
from gramprompt.meta.batched import batched_meta_loss
from gramprompt.meta.inputs import FeatureInputs
from gramprompt.meta.regulator import RegulatorConfig, init_regulator, regulate
from gramprompt.meta.step import TaskData, meta_loss
from gramprompt.meta.tasks import TaskConfig, TaskSampler
from gramprompt.meta.trainer import MetaConfig, MetaTrainer
from gramprompt.prompts import Batch, build_method
from gramprompt.tuning.features import FeatureCache
from gramprompt.tuning.multirun import RunSpec, available_memory, train_many
from gramprompt.tuning.train import train_prompts
from test_multirun import CFG, NAMES, _assert_close_to_alone, _samples
from tolerance import assert_fp32_close, hf_clip_tower, meta_gradient

DEVICE = torch.device(os.environ.get("GRAMPROMPT_TEST_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")
REGULATOR = RegulatorConfig("shared", "bounded", weight_init_std=0.3)


@pytest.fixture(scope="module")
def fp32_only():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def gpu(tiny_clip_dir, fp32_only):
    return load_backbone(f"hf:{tiny_clip_dir}", device=DEVICE)


def _tune(backbone, name: str, regulated: bool, seed: int = 1):
    """One run of ``name`` from the same init, sample and seed on ``backbone``'s device; parameters on the CPU."""
    method = build_method(name, backbone)
    init = method.init_params(torch.Generator().manual_seed(0))
    transform = None
    if regulated:
        phi = init_regulator(init, REGULATOR, torch.Generator().manual_seed(1))
        assert all(v.device == backbone.device for v in phi.values())
        transform = lambda g: regulate(phi, g, REGULATOR)  # noqa: E731
    out = train_prompts(method, init, _samples(4, 0), NAMES, CFG, seed=seed, grad_transform=transform,
                        cache=FeatureCache(backbone), cache_key=("cuda-test",))
    assert all(v.device == backbone.device for v in out.values())
    return {k: v.cpu() for k, v in out.items()}, {k: v.cpu() for k, v in init.items()}


def test_features_equal_the_cpu_ones(backbone, gpu):
    assert gpu.device.type == DEVICE.type
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ref, out = backbone.encode_image(images), gpu.encode_image(images.to(DEVICE))
    assert out.device.type == DEVICE.type
    vision = hf_clip_tower(backbone, "vision")
    assert_fp32_close(out, ref, **vision, msg="image features")
    texts = ["a photo of a cat", "a sea horse", "an electric guitar"]
    assert_fp32_close(encode_texts(gpu, texts), encode_texts(backbone, texts), **hf_clip_tower(backbone),
                      msg="text features")


@pytest.mark.parametrize("regulated", [False, True], ids=["plain", "regulated"])
@pytest.mark.parametrize("name", ["coop", "cocoop", "vpt", "joint", "kgcoop", "prograd", "maple", "promptsrc"])
def test_tuning_on_cuda_equals_tuning_on_cpu(backbone, gpu, name, regulated):
    ref, init = _tune(backbone, name, regulated)
    out, _ = _tune(gpu, name, regulated)
    assert any(not torch.equal(ref[k], init[k]) for k in ref)
    _assert_close_to_alone(backbone, RunSpec(init, [], seed=1), out, ref)


@pytest.mark.parametrize("name", ["coop", "vpt"])
def test_the_multirun_tuner_on_cuda_equals_one_run_at_a_time(gpu, name):
    method = build_method(name, gpu)
    gen = torch.Generator().manual_seed(0)
    specs = [RunSpec(method.init_params(gen), _samples(4 - 2 * (r == 1), r), seed=r + 1, cache_key=(r,))
             for r in range(3)]
    cache = FeatureCache(gpu)
    outs = train_many(method, specs, NAMES, CFG, cache=cache)
    for spec, out in zip(specs, outs):
        ref = train_prompts(method, spec.init, spec.samples, NAMES, CFG, seed=spec.seed, cache=cache,
                            cache_key=spec.cache_key)
        _assert_close_to_alone(gpu, spec, out, ref)


def _task(d: int, names: list[str], seed: int, device) -> TaskData:
    gen = torch.Generator().manual_seed(seed)
    s, q = torch.randn(6, d, generator=gen), torch.randn(9, d, generator=gen)
    k = len(names)
    return TaskData(names, Batch(features=s.to(device)), (torch.arange(6) % k).to(device),
                    Batch(features=q.to(device)), (torch.arange(9) % k).to(device))


@pytest.mark.parametrize("second_order", [False, True], ids=["first-order", "second-order"])
def test_batched_meta_step_on_cuda_equals_the_per_task_loop_on_cpu(backbone, gpu, second_order):
    classes = [["cat", "dog", "car"], ["sea horse", "grand piano", "yin yang"]]
    grads, losses = [], []
    for bb, fn in ((backbone, meta_loss), (gpu, batched_meta_loss)):
        method = build_method("coop", bb)
        theta = {k: v.requires_grad_() for k, v in method.init_params(torch.Generator().manual_seed(0)).items()}
        phi = {k: v.requires_grad_() for k, v in init_regulator(theta, REGULATOR,
                                                                 torch.Generator().manual_seed(1)).items()}
        tasks = [_task(bb.embed_dim, names, i, bb.device) for i, names in enumerate(classes)]
        loss, _ = fn(method, theta, phi, REGULATOR, tasks, alpha=2.0, steps=2, second_order=second_order)
        grads.append(torch.autograd.grad(loss, [*theta.values(), *phi.values()]))
        losses.append(loss.detach())
    bound = meta_gradient(backbone, 2, second_order)
    bound["depth"] += 2 * 2 * (2 if second_order else 1)  # the bounded form's two rms reductions per inner step
    assert_fp32_close(losses[1], losses[0], **bound, msg="meta-loss")
    for i, (g, ref) in enumerate(zip(grads[1], grads[0])):
        assert g.device.type == DEVICE.type and ref.abs().max() > 0
        assert_fp32_close(g, ref, **bound, msg=f"gradient {i}")


def test_meta_training_on_cuda_reaches_the_cpu_parameters_and_resumes(backbone, gpu, tmp_path):
    names = ["apple", "boat", "cloud", "drum", "eagle", "fern"]
    rng = np.random.default_rng(0)
    topic, domain = np.repeat(np.arange(6), 30), np.tile(np.repeat(np.arange(3), 10), 6)
    d = backbone.embed_dim
    feats = rng.normal(size=(6, d))[topic] + rng.normal(size=(3, d))[domain] + 0.3 * rng.normal(size=(180, d))
    cfg = MetaConfig(iterations=4, task_batch=3, stats_every=2, checkpoint_every=2, regulator=REGULATOR)
    states = []
    for bb in (backbone, gpu):
        sampler = TaskSampler(topic, domain, names, TaskConfig(ways=3, support_shots=2, query_shots=4))
        inputs = FeatureInputs(torch.tensor(feats, dtype=torch.float32))
        states.append(MetaTrainer(build_method("coop", bb), sampler, inputs, cfg, tmp_path / str(bb is gpu)).run())
    ref, out = states
    assert out.theta["text_ctx"].device.type == DEVICE.type
    # Adam's first steps are ~lr * sign(g), so an entry whose meta-gradient is ~0 turns rounding into a visible
    # part of a step (as tests/test_meta_batched.py's trainer test): compare against the step size
    for k in ref.theta:
        torch.testing.assert_close(out.theta[k].cpu(), ref.theta[k], rtol=0, atol=0.1 * cfg.lr_theta)
    for k in ref.phi:
        torch.testing.assert_close(out.phi[k].cpu(), ref.phi[k], rtol=0, atol=0.1 * cfg.lr_phi)
    # a finished run's checkpoint loads back onto the GPU: a rerun resumes instead of starting over
    sampler = TaskSampler(topic, domain, names, TaskConfig(ways=3, support_shots=2, query_shots=4))
    again = MetaTrainer(build_method("coop", gpu), sampler, FeatureInputs(torch.tensor(feats, dtype=torch.float32)),
                        cfg, tmp_path / "True").run()
    assert all(torch.equal(again.theta[k], out.theta[k]) for k in out.theta)


@pytest.mark.parametrize("name", ["coop", "cocoop", "vpt"])
def test_evaluation_on_cuda_equals_the_cpu_one(backbone, gpu, name):
    samples = _samples(5, 7)
    accs = []
    for bb in (backbone, gpu):
        method = build_method(name, bb)
        params = method.init_params(torch.Generator().manual_seed(0))
        pixels = torch.stack([bb.transform.eval(load_image(s.source)) for s in samples]).to(bb.device)
        logits = method.logits(params, Batch(pixels=pixels), NAMES)
        accs.append((evaluate(method, params, samples, NAMES), logits.detach().cpu()))
    (acc_cpu, ref), (acc_gpu, out) = accs
    assert_fp32_close(out, ref, **hf_clip_tower(backbone, "vision", extra_depth=2 + hf_clip_tower(backbone)["depth"]),
                      scale=float(backbone.logit_scale()), msg="logits")
    margin = ref.topk(2, dim=-1).values
    if bool(((margin[:, 0] - margin[:, 1]) > 1e-3).all()):  # no near-tie that rounding could flip
        assert acc_gpu == acc_cpu


@pytest.mark.skipif(DEVICE.type != "cuda", reason="CUDA's free memory")
def test_available_memory_reads_the_device():
    free = available_memory(DEVICE)
    assert 0 < free <= torch.cuda.get_device_properties(0).total_memory


@pytest.mark.parametrize("name", ["coop", "kgcoop", "prograd"])
def test_the_training_step_makes_no_device_synchronization(gpu, name):
    """CUDA's sync debug mode warns at every synchronizing call; a tuner's count must not grow with its steps (the
    per-epoch reads of the totals are the only ones)."""
    import warnings

    from gramprompt.tuning.config import TuneConfig

    if DEVICE.type != "cuda":
        pytest.skip("CUDA's sync debug mode (on the CPU, tests/test_tuning_sync.py counts host reads)")

    method = build_method(name, gpu, template="a photo of a {}.")
    init = method.init_params(torch.Generator().manual_seed(0))
    samples = _samples(4, 0)
    counts = []
    for batch in (4, 1):  # 3 and 12 steps an epoch
        cfg = TuneConfig(epochs=2, batch_size=batch, lr=0.05, warmup_epochs=0, feature_views=1)
        train_prompts(method, init, samples, NAMES, cfg, seed=1, cache=FeatureCache(gpu))  # caches first
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train_prompts(method, init, samples, NAMES, cfg, seed=1, cache=FeatureCache(gpu))
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    assert counts[0] == counts[1], f"synchronizations grew with the steps: {counts}"


def test_device_augmentation_on_cuda_is_the_host_augmentation():
    """The same boxes and flips as ImageTransform.train for the same seed, pixels equal up to the resampler's
    rounding (tests/test_device_augment.py on the CPU)."""
    from gramprompt.data.images import ImageTransform
    from gramprompt.tuning.augment import DeviceAugment
    from test_device_augment import _images

    t = ImageTransform(size=32)
    images = _images()
    aug = DeviceAugment(t, images, DEVICE)
    g_host, g_dev = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    host = torch.stack([t.train(images[i], g_host) for i in (3, 0, 5, 1)])
    dev = aug.batch([3, 0, 5, 1], g_dev)
    assert dev.device.type == DEVICE.type
    levels = ((dev.cpu() - host) * torch.tensor(t.std).view(1, 3, 1, 1) * 255).abs()
    assert float(levels.mean()) < 0.5 and float(torch.quantile(levels.flatten(), 0.999)) <= 3.0


@pytest.mark.parametrize("name", ["coop", "vpt"])
def test_bf16_tuning_on_cuda_keeps_fp32_prompts_and_moves_them_as_fp32_does(gpu, name):
    """TuneConfig.autocast on the device (tests/test_tuning_autocast.py's criterion on the CPU)."""
    import dataclasses

    method = build_method(name, gpu)
    init = method.init_params(torch.Generator().manual_seed(0))
    outs = [train_prompts(method, init, _samples(4, 0), NAMES, dataclasses.replace(CFG, autocast=precision), seed=1,
                          cache=FeatureCache(gpu)) for precision in (None, "bf16")]
    for k, v in outs[1].items():
        assert v.dtype == torch.float32 and torch.isfinite(v).all()
        moved = float((outs[0][k] - init[k]).abs().max())
        assert float((v - outs[0][k]).abs().max()) < 0.5 * moved, k
