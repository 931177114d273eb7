"""The evaluation protocols: base-to-new, and train-on-source / test-on-targets (cross-dataset, cross-domain)."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from ..backbones.base import Backbone
from ..data.dataset import ClassificationDataset, samples_sha256
from ..data.splits import base_new_split, few_shot
from ..errors import GramError
from ..prompts import PromptConfig, PromptMethod, build_method, template_for
from ..runs import RunDir, load_prompts
from ..tuning.config import TuneConfig
from ..tuning.features import FeatureCache
from ..tuning.multirun import RunSpec, available_memory, train_many
from ..tuning.train import train_prompts
from .evaluate import correct_bits, correctness, evaluate
from .metrics import accuracy_of, harmonic_mean

# Called after every tuning epoch with the method, the epoch (1-based) and the current parameters.
EpochHook = Callable[[PromptMethod, int, dict[str, Tensor]], None]


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
    init_seed: int | None = None  # seed of the fresh prompts (None: ``seed``); vary it alone for Fig. 1a
    eval_every_epoch: bool = False  # log test accuracy after every epoch to metrics.jsonl (Fig. 3a)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def __post_init__(self) -> None:
        if self.shots < 1:
            raise GramError(f"shots (--shots) must be >= 1, got {self.shots}")
        if self.seed < 0:
            raise GramError(f"seed (--seed) must be >= 0, got {self.seed}")
        _check_max_test(self.max_test_per_class)


def _check_max_test(max_per_class: int | None) -> None:
    """Refuse a test subset of no image per class (which few-shot sampling would report as bad shots)."""
    if max_per_class is not None and max_per_class < 1:
        raise GramError(f"max_test_per_class (--max-test-per-class) must be >= 1, or unset for the whole "
                        f"test split; got {max_per_class}")


def check_classnames(backbone: Backbone, cfg: FewShotConfig, datasets: list[ClassificationDataset]) -> None:
    """Every class name of ``datasets`` must fit the text encoder with ``cfg.method`` and the dataset's
    template; checked before tuning, since new classes and targets are only met after it."""
    method = build_method(cfg.method, backbone, cfg.prompt)
    for dataset in datasets:
        method.with_template(template_for(dataset.name)).check_classnames(dataset.classnames)


def initial_params(method: PromptMethod, cfg: FewShotConfig) -> dict[str, Tensor]:
    """Fresh parameters from ``init_seed`` (default: the run's seed), or the ones stored in ``cfg.init``
    (checked against the method).

    A separate ``init_seed`` lets several initializations be tuned on the very same few-shot sample
    and shuffling, so their spread measures initialization sensitivity alone (the paper's Fig. 1a)."""
    fresh = method.init_params(torch.Generator().manual_seed(cfg.seed if cfg.init_seed is None else cfg.init_seed))
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


# What runs tuned together must share: everything but what makes each run its own (seed, start, label).
OWN = ("seed", "init", "regulator", "init_seed", "label")


def _shared(cfgs: list[FewShotConfig]) -> FewShotConfig:
    """The settings ``cfgs`` share (the first); runs that differ in more than :data:`OWN` cannot step together."""
    if not cfgs:
        raise ValueError("no run to tune")
    key = [{k: v for k, v in asdict(c).items() if k not in OWN} for c in cfgs]
    if any(k != key[0] for k in key[1:]):
        raise ValueError(f"runs tuned together must share every setting but {', '.join(OWN)}")
    return cfgs[0]


def _tune(backbone: Backbone, dataset: ClassificationDataset, cfgs: list[FewShotConfig], runs: list[RunDir | None],
          cache: FeatureCache | None, part: str, hooks: list[EpochHook | None],
          together: bool) -> tuple[PromptMethod, list[tuple[dict[str, Tensor] | Exception, int]]]:
    """Tune each run on its few shots of ``dataset``; per run its parameters (or, ``together``, the error
    that stopped it alone) and its number of training images. One run alone goes through the reference
    ``train_prompts``; ``together`` through ``train_many``."""
    cfg = _shared(cfgs)
    method = build_method(cfg.method, backbone, cfg.prompt, template=template_for(dataset.name))
    specs = []
    for c, run, hook in zip(cfgs, runs, hooks):
        train = few_shot(dataset.train, c.shots, c.seed, allow_fewer=c.allow_fewer_shots, classnames=dataset.classnames)
        transform = None
        if c.init is not None and c.regulator:
            from ..meta.checkpoint import regulated_grad_transform

            transform = regulated_grad_transform(c.init, backbone.device)
        specs.append(RunSpec(initial_params(method, c), train, c.seed, transform, (dataset.name, part, c.shots),
                             run.log if run is not None else None,
                             None if hook is None else (lambda epoch, params, hook=hook: hook(method, epoch, params))))
    if together:
        results = train_many(method, specs, dataset.classnames, cfg.tune, cache=cache,
                             memory=available_memory(backbone.device))
    else:
        (s,) = specs
        results = [train_prompts(method, s.init, s.samples, dataset.classnames, cfg.tune, seed=s.seed,
                                 grad_transform=s.grad_transform, cache=cache, cache_key=s.cache_key, log=s.log,
                                 on_epoch=s.on_epoch)]
    for c, run, params in zip(cfgs, runs, results):
        if run is not None and isinstance(params, dict) and params:
            run.save_prompts(params, {"method": c.method, "backbone": backbone.name, "dataset": dataset.name,
                                      "classnames": dataset.classnames, "shots": c.shots, "seed": c.seed,
                                      "prompt": asdict(c.prompt)})
    return method, [(params, len(s.samples)) for params, s in zip(results, specs)]


def _test(dataset: ClassificationDataset, cfg: FewShotConfig) -> list:
    """The test split, or its seeded subset of at most ``max_test_per_class`` images per class (seed 0:
    the same images for every run, so runs and seeds stay comparable)."""
    if cfg.max_test_per_class is None:
        return dataset.test
    return few_shot(dataset.test, cfg.max_test_per_class, 0, allow_fewer=True, classnames=dataset.classnames)


def sha256_of_test(dataset: ClassificationDataset, cfg: FewShotConfig) -> str:
    """The digest (:func:`~gramprompt.data.dataset.samples_sha256`) of the test images a run is evaluated on."""
    return samples_sha256(_test(dataset, cfg))


def _summary(backbone: Backbone, dataset: ClassificationDataset, cfg: FewShotConfig, protocol: str) -> dict:
    label = cfg.label or (f"{cfg.method}+init" if cfg.init else cfg.method)
    out = {"protocol": protocol, "dataset": dataset.name, "method": cfg.method, "label": label,
           "backbone": backbone.name, "shots": cfg.shots, "seed": cfg.seed, "init": cfg.init}
    if cfg.init_seed is not None:  # only when set: summaries of ordinary runs stay as they were
        out["init_seed"] = cfg.init_seed
    return out


def _epoch_eval(cfg: FewShotConfig, runs: list[RunDir | None], backbone: Backbone,
                cache: FeatureCache | None) -> tuple[FeatureCache | None, bool]:
    """The cache to use and whether to evaluate after every epoch. Per-epoch evaluation goes through
    a FeatureCache (a fresh one if none was given) so text-only methods encode the test images once."""
    if not cfg.eval_every_epoch:
        return cache, False
    if any(run is None for run in runs):
        raise ValueError("eval_every_epoch logs to a run folder's metrics.jsonl: give a run")
    return (cache if cache is not None else FeatureCache(backbone)), True


def _finish(cfgs: list[FewShotConfig], runs: list[RunDir | None], tuned: list, start: float,
            summarize: Callable[[FewShotConfig, dict[str, Tensor], int], dict]) -> list[dict | Exception]:
    """Evaluate and write each tuned run; its ``seconds`` are its share of the joint tuning and its own
    evaluation (a run tuned alone: its whole time, as before)."""
    share = (time.perf_counter() - start) / len(cfgs)
    out: list[dict | Exception] = []
    for cfg, run, (params, n_train) in zip(cfgs, runs, tuned):
        if isinstance(params, Exception):
            out.append(params)
            continue
        t0 = time.perf_counter()
        summary = summarize(cfg, params, n_train)
        summary["seconds"] = share + time.perf_counter() - t0
        if len(cfgs) > 1:
            summary["runs_together"] = len(cfgs)
        if run is not None:
            run.write_summary(summary)
        out.append(summary)
    return out


def _one(results: list[dict | Exception]) -> dict:
    (result,) = results
    if isinstance(result, Exception):
        raise result
    return result


def base_to_new(backbone: Backbone, dataset: ClassificationDataset, cfg: FewShotConfig, *,
                run: RunDir | None = None, cache: FeatureCache | None = None) -> dict:
    """Tune on the base classes' few shots; accuracy on the base and new classes' test images."""
    return _one(_base_to_new(backbone, dataset, [cfg], [run], cache, together=False))


def base_to_new_many(backbone: Backbone, dataset: ClassificationDataset, cfgs: list[FewShotConfig], *,
                     runs: list[RunDir | None] | None = None, cache: FeatureCache | None = None) -> list[dict | Exception]:
    """:func:`base_to_new` for runs that differ only in seed, start and label (e.g. a row's seeds, or CoOp
    and CoOp + GRAM), tuned together by ``tuning.multirun.train_many``: per run its summary, or the error
    that stopped it (the others go on)."""
    return _base_to_new(backbone, dataset, cfgs, runs or [None] * len(cfgs), cache, together=True)


def _base_to_new(backbone: Backbone, dataset: ClassificationDataset, cfgs: list[FewShotConfig],
                 runs: list[RunDir | None], cache: FeatureCache | None, together: bool) -> list[dict | Exception]:
    start = time.perf_counter()
    cfg = _shared(cfgs)
    base, new = base_new_split(dataset)
    check_classnames(backbone, cfg, [dataset])
    cache, per_epoch = _epoch_eval(cfg, runs, backbone, cache)
    bs = cfg.tune.eval_batch_size

    def corrects(method: PromptMethod, params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return (correctness(method, params, _test(base, cfg), base.classnames, batch_size=bs, cache=cache,
                            cache_key=(dataset.name, "base", cfg.max_test_per_class)),
                correctness(method, params, _test(new, cfg), new.classnames, batch_size=bs, cache=cache,
                            cache_key=(dataset.name, "new", cfg.max_test_per_class)))

    def epoch_logger(run: RunDir) -> EpochHook:
        def log_epoch(method: PromptMethod, epoch: int, params: dict[str, Tensor]) -> None:
            b, n = corrects(method, params)
            run.log({"epoch": epoch, "test_base": accuracy_of(b), "test_new": accuracy_of(n)})
        return log_epoch

    method, tuned = _tune(backbone, base, cfgs, runs, cache, "base",
                          [epoch_logger(r) if per_epoch else None for r in runs], together)
    tested = {"base": sha256_of_test(base, cfg), "new": sha256_of_test(new, cfg)}

    def summarize(c: FewShotConfig, params: dict[str, Tensor], n_train: int) -> dict:
        ok_base, ok_new = corrects(method, params)
        acc_base, acc_new = accuracy_of(ok_base), accuracy_of(ok_new)
        # Per-image correctness (test subsets are seeded, the same for every run of a dataset): paired tests.
        return {**_summary(backbone, dataset, c, "base2new"), "base": acc_base, "new": acc_new,
                "h": harmonic_mean(acc_base, acc_new), "train_images": n_train,
                "base_classes": base.num_classes, "new_classes": new.num_classes,
                "correct": {"base": correct_bits(ok_base), "new": correct_bits(ok_new)}, "test_sha256": tested}

    return _finish(cfgs, runs, tuned, start, summarize)


def transfer(backbone: Backbone, source: ClassificationDataset, targets: list[ClassificationDataset],
             cfg: FewShotConfig, *, run: RunDir | None = None, cache: FeatureCache | None = None) -> dict:
    """Tune on all classes of ``source``; zero-shot accuracy on each target with its own class names."""
    return _one(_transfer(backbone, source, targets, [cfg], [run], cache, together=False))


def transfer_many(backbone: Backbone, source: ClassificationDataset, targets: list[ClassificationDataset],
                  cfgs: list[FewShotConfig], *, runs: list[RunDir | None] | None = None,
                  cache: FeatureCache | None = None) -> list[dict | Exception]:
    """:func:`transfer` for runs tuned together (see :func:`base_to_new_many`)."""
    return _transfer(backbone, source, targets, cfgs, runs or [None] * len(cfgs), cache, together=True)


def _transfer(backbone: Backbone, source: ClassificationDataset, targets: list[ClassificationDataset],
              cfgs: list[FewShotConfig], runs: list[RunDir | None], cache: FeatureCache | None,
              together: bool) -> list[dict | Exception]:
    start = time.perf_counter()
    cfg = _shared(cfgs)
    check_classnames(backbone, cfg, [source, *targets])
    cache, per_epoch = _epoch_eval(cfg, runs, backbone, cache)
    bs = cfg.tune.eval_batch_size

    def corrects(method: PromptMethod, params: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        ok_source = correctness(method, params, _test(source, cfg), source.classnames, batch_size=bs, cache=cache,
                                cache_key=(source.name, "all", cfg.max_test_per_class))
        return ok_source, target_correctness(method, params, {t.name: t for t in targets}, cfg, cache=cache)

    def epoch_logger(run: RunDir) -> EpochHook:
        def log_epoch(method: PromptMethod, epoch: int, params: dict[str, Tensor]) -> None:
            s, t = corrects(method, params)
            run.log({"epoch": epoch, "test_source": accuracy_of(s),
                     "test_targets": {name: accuracy_of(ok) for name, ok in t.items()}})
        return log_epoch

    method, tuned = _tune(backbone, source, cfgs, runs, cache, "all",
                          [epoch_logger(r) if per_epoch else None for r in runs], together)
    tested = {"source": sha256_of_test(source, cfg), "targets": {t.name: sha256_of_test(t, cfg) for t in targets}}

    def summarize(c: FewShotConfig, params: dict[str, Tensor], n_train: int) -> dict:
        ok_source, ok_targets = corrects(method, params)
        return {**_summary(backbone, source, c, "transfer"), "source": accuracy_of(ok_source),
                "targets": {name: accuracy_of(ok) for name, ok in ok_targets.items()},
                "train_images": n_train,
                "correct": {"source": correct_bits(ok_source),
                            "targets": {name: correct_bits(ok) for name, ok in ok_targets.items()}},
                "test_sha256": tested}

    return _finish(cfgs, runs, tuned, start, summarize)


def target_correctness(method: PromptMethod, params: dict[str, Tensor], targets: dict[str, ClassificationDataset],
                       cfg: FewShotConfig, *, cache: FeatureCache | None = None) -> dict[str, Tensor]:
    """Per-image correctness of tuned prompts on each target, with its own class names and template (keyed by
    the given names); targets can also be added to a finished transfer run this way, without tuning again."""
    return {name: correctness(_for_target(method, t), params, _test(t, cfg), t.classnames,
                              batch_size=cfg.tune.eval_batch_size, cache=cache,
                              cache_key=(t.name, "all", cfg.max_test_per_class))
            for name, t in targets.items()}


def _for_target(method: PromptMethod, target: ClassificationDataset) -> PromptMethod:
    """``method`` with the target's template, once the target's class names are known to fit."""
    method = method.with_template(template_for(target.name))
    method.check_classnames(target.classnames)
    return method


def run_config(backbone_name: str, datasets: list[str], cfg: FewShotConfig, protocol: str) -> dict:
    """The resolved config written to a run folder's ``config.yaml``.

    ``init_seed``, ``eval_every_epoch`` and ``tune.lr_scale`` appear only when set, so the configs of ordinary
    runs (which the demo compares to decide what to reuse) stay exactly as they were."""
    fields = asdict(cfg)
    if cfg.init_seed is None:
        del fields["init_seed"]
    if not cfg.eval_every_epoch:
        del fields["eval_every_epoch"]
    if not cfg.tune.lr_scale:
        del fields["tune"]["lr_scale"]
    return {"protocol": protocol, "backbone": backbone_name, "datasets": datasets, **fields}


def zero_shot_all_classes(backbone: Backbone, dataset: ClassificationDataset, *, max_per_class: int | None = None,
                          seed: int = 0, cache: FeatureCache | None = None, batch_size: int = 64) -> dict:
    """Hand-crafted-prompt accuracy on all classes of the test split (optionally a seeded subset)."""
    _check_max_test(max_per_class)
    test = dataset.test if max_per_class is None else few_shot(dataset.test, max_per_class, seed, allow_fewer=True,
                                                               classnames=dataset.classnames)
    method = build_method("zeroshot", backbone, template=template_for(dataset.name))
    method.check_classnames(dataset.classnames)
    acc = evaluate(method, {}, test, dataset.classnames, batch_size=batch_size, cache=cache,
                   cache_key=(dataset.name, "all", max_per_class, seed))
    chance = 100.0 / dataset.num_classes
    return {"dataset": dataset.name, "classes": dataset.num_classes, "test_images": len(test),
            "chance": chance, "zeroshot": acc, "x_chance": acc / chance}
