"""The evaluation protocols: base-to-new, and train-on-source / test-on-targets (cross-dataset, cross-domain)."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from ..backbones.base import Backbone
from ..data.dataset import ClassificationDataset
from ..data.splits import base_new_split, few_shot
from ..prompts import PromptConfig, PromptMethod, build_method, template_for
from ..runs import RunDir, load_prompts
from ..tuning.config import TuneConfig
from ..tuning.features import FeatureCache
from ..tuning.train import train_prompts
from .evaluate import evaluate
from .metrics import harmonic_mean


@dataclass
class FewShotConfig:
    """One few-shot run: which method, how many shots, which seed, and how to tune it."""

    method: str
    label: str | None = None  # the table row, e.g. "coop+gram"; default: method, "+init" if started from --init
    shots: int = 16
    seed: int = 1
    init: str | None = None  # a prompts .safetensors (e.g. GRAM's theta*) to start from
    regulator: bool = True  # when ``init`` is a GRAM checkpoint, regulate every update with its R_phi*
    allow_fewer_shots: bool = False  # take all images of a class that has fewer than `shots`
    max_test_per_class: int | None = None  # evaluate on a seeded subset of the test split (None: all)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)


def initial_params(method: PromptMethod, cfg: FewShotConfig) -> dict[str, Tensor]:
    """Fresh parameters from the seed, or the ones stored in ``cfg.init`` (checked against the method)."""
    fresh = method.init_params(torch.Generator().manual_seed(cfg.seed))
    if cfg.init is None:
        return fresh
    stored, _ = load_prompts(cfg.init)
    missing = [k for k in fresh if k not in stored]
    if missing:
        raise ValueError(f"{cfg.init} holds {sorted(stored)}, but {method.name} needs {missing}")
    for k, v in fresh.items():
        if stored[k].shape != v.shape:
            raise ValueError(f"{cfg.init}: {k} has shape {tuple(stored[k].shape)}, {method.name} "
                             f"with this backbone and token count needs {tuple(v.shape)}")
    return {k: stored[k].to(device=v.device, dtype=v.dtype) for k, v in fresh.items()}


def _tune(backbone: Backbone, dataset: ClassificationDataset, cfg: FewShotConfig, run: RunDir | None,
          cache: FeatureCache | None, part: str) -> tuple[PromptMethod, dict[str, Tensor], int]:
    method = build_method(cfg.method, backbone, cfg.prompt, template=template_for(dataset.name))
    train = few_shot(dataset.train, cfg.shots, cfg.seed, allow_fewer=cfg.allow_fewer_shots,
                     num_classes=dataset.num_classes)
    transform = None
    if cfg.init is not None and cfg.regulator:
        from ..meta.checkpoint import regulated_grad_transform

        transform = regulated_grad_transform(cfg.init, backbone.device)
    params = train_prompts(method, initial_params(method, cfg), train, dataset.classnames, cfg.tune,
                           seed=cfg.seed, grad_transform=transform, cache=cache,
                           cache_key=(dataset.name, part, cfg.shots), log=run.log if run is not None else None)
    if run is not None and params:
        run.save_prompts(params, {"method": cfg.method, "backbone": backbone.name, "dataset": dataset.name,
                                  "classnames": dataset.classnames, "shots": cfg.shots, "seed": cfg.seed,
                                  "prompt": asdict(cfg.prompt)})
    return method, params, len(train)


def _test(dataset: ClassificationDataset, cfg: FewShotConfig) -> list:
    """The test split, or its seeded subset of at most ``max_test_per_class`` images per class (seed 0:
    the same images for every run, so runs and seeds stay comparable)."""
    if cfg.max_test_per_class is None:
        return dataset.test
    return few_shot(dataset.test, cfg.max_test_per_class, 0, allow_fewer=True, num_classes=dataset.num_classes)


def _summary(backbone: Backbone, dataset: ClassificationDataset, cfg: FewShotConfig, protocol: str) -> dict:
    label = cfg.label or (f"{cfg.method}+init" if cfg.init else cfg.method)
    return {"protocol": protocol, "dataset": dataset.name, "method": cfg.method, "label": label, "backbone": backbone.name,
            "shots": cfg.shots, "seed": cfg.seed, "init": cfg.init}


def base_to_new(backbone: Backbone, dataset: ClassificationDataset, cfg: FewShotConfig, *,
                run: RunDir | None = None, cache: FeatureCache | None = None) -> dict:
    """Tune on the base classes' few shots; accuracy on the base and new classes' test images."""
    start = time.perf_counter()
    base, new = base_new_split(dataset)
    method, params, n_train = _tune(backbone, base, cfg, run, cache, "base")
    bs = cfg.tune.eval_batch_size
    acc_base = evaluate(method, params, _test(base, cfg), base.classnames, batch_size=bs, cache=cache,
                        cache_key=(dataset.name, "base", cfg.max_test_per_class))
    acc_new = evaluate(method, params, _test(new, cfg), new.classnames, batch_size=bs, cache=cache,
                       cache_key=(dataset.name, "new", cfg.max_test_per_class))
    summary = {**_summary(backbone, dataset, cfg, "base2new"), "base": acc_base, "new": acc_new,
               "h": harmonic_mean(acc_base, acc_new), "train_images": n_train,
               "base_classes": base.num_classes, "new_classes": new.num_classes,
               "seconds": time.perf_counter() - start}
    if run is not None:
        run.write_summary(summary)
    return summary


def transfer(backbone: Backbone, source: ClassificationDataset, targets: list[ClassificationDataset],
             cfg: FewShotConfig, *, run: RunDir | None = None, cache: FeatureCache | None = None) -> dict:
    """Tune on all classes of ``source``; zero-shot accuracy on each target with its own class names."""
    start = time.perf_counter()
    method, params, n_train = _tune(backbone, source, cfg, run, cache, "all")
    bs = cfg.tune.eval_batch_size
    acc_source = evaluate(method, params, _test(source, cfg), source.classnames, batch_size=bs, cache=cache,
                          cache_key=(source.name, "all", cfg.max_test_per_class))
    accs = {t.name: evaluate(method.with_template(template_for(t.name)), params, _test(t, cfg), t.classnames,
                             batch_size=bs, cache=cache, cache_key=(t.name, "all", cfg.max_test_per_class))
            for t in targets}
    summary = {**_summary(backbone, source, cfg, "transfer"), "source": acc_source, "targets": accs,
               "train_images": n_train, "seconds": time.perf_counter() - start}
    if run is not None:
        run.write_summary(summary)
    return summary


def run_config(backbone: Backbone, datasets: list[str], cfg: FewShotConfig, protocol: str) -> dict:
    """The resolved config written to a run folder's ``config.yaml``."""
    return {"protocol": protocol, "backbone": backbone.name, "datasets": datasets, **asdict(cfg)}


def zero_shot_all_classes(backbone: Backbone, dataset: ClassificationDataset, *, max_per_class: int | None = None,
                          seed: int = 0, cache: FeatureCache | None = None, batch_size: int = 64) -> dict:
    """Hand-crafted-prompt accuracy on all classes of the test split (optionally a seeded subset)."""
    test = dataset.test if max_per_class is None else few_shot(dataset.test, max_per_class, seed, allow_fewer=True,
                                                               num_classes=dataset.num_classes)
    method = build_method("zeroshot", backbone, template=template_for(dataset.name))
    acc = evaluate(method, {}, test, dataset.classnames, batch_size=batch_size, cache=cache,
                   cache_key=(dataset.name, "all", max_per_class, seed))
    chance = 100.0 / dataset.num_classes
    return {"dataset": dataset.name, "classes": dataset.num_classes, "test_images": len(test),
            "chance": chance, "zeroshot": acc, "x_chance": acc / chance}
