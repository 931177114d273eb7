"""Expand an experiment into jobs (CHC, meta-training per variant, one few-shot run per
column x row x seed), report their status, and run what is not done, in order of dependence.

A job is done when its output exists *and* was made with the settings it would be made with now;
otherwise it is (re)done, so a killed runner resumes where it stopped and a changed setting redoes
exactly what depends on it. Few-shot runs can go to several worker processes (``jobs``).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import as_completed
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from ..backbones.registry import DTYPES, backbone_name, load_backbone, resolve_device
from ..data.registry import load_dataset, spec_name
from ..eval.evaluate import correct_bits
from ..eval.metrics import accuracy_of
from ..locks import writes
from ..eval.protocols import (OWN, FewShotConfig, base_to_new, base_to_new_many, check_classnames, run_config,
                              target_correctness, sha256_of_test, transfer, transfer_many)
from ..runs import CONFIG, RunDir, is_finished, read_summary
from ..chc.config import CHCConfig
from ..meta.regulator import FORM_BEFORE_FORMS
from ..meta.trainer import MetaConfig
from ..prompts import METHODS, PromptConfig, build_method
from ..tuning.features import FeatureCache
from ..tuning.multirun import steps_together
from ..workers import process_pool
from .config import Experiment, Row

STAGE = "stage.yaml"  # the settings a stage's output was made with
DONE, PENDING, STALE, PARTIAL, WAITING = "done", "pending", "stale", "partial", "waiting"


@dataclass(frozen=True)
class Job:
    kind: str  # "chc", "meta" or "run"
    name: str  # the variant for "meta"; "<column>/<label>/seed<k>" for "run"
    out: Path
    row: Row | None = None
    seed: int | None = None
    column: str | None = None  # the dataset spec (base2new) or the source spec (transfer)
    variant: str | None = None  # "meta": the variant it trains
    hierarchy: int | None = None  # the CHC clustering seed of a "chc" job, and of a "meta" or "run" job that uses one


# --------------------------------------------------------------------------- expansion and status


def _suffix(exp: Experiment, hierarchy: int | None) -> str:
    """What tells a hierarchy's folders apart: nothing for the first one (so a one-hierarchy experiment's
    layout is ``root/chc``, ``root/meta/<variant>``, ``runs/.../<label>/seed<k>``), ``-chc-seed<h>`` else."""
    if hierarchy is None or exp.hierarchy is None or hierarchy == exp.hierarchy.all_seeds()[0]:
        return ""
    return f"-chc-seed{hierarchy}"


def chc_dir(exp: Experiment, hierarchy: int | None = None) -> Path | None:
    """The folder of the hierarchy of clustering seed ``hierarchy`` (default: the first)."""
    if exp.hierarchy is None:
        return None
    if exp.hierarchy.path:
        return Path(exp.hierarchy.path)
    return Path(exp.root) / ("chc" if not _suffix(exp, hierarchy) else f"chc-seed{hierarchy}")


def hierarchies(exp: Experiment, variant: str | None) -> tuple[int | None, ...]:
    """The hierarchies a variant is meta-trained on: every CHC seed, or (None,) for a variant that uses
    none (no variant, a supervised source, a given checkpoint)."""
    v = exp.variants.get(variant) if variant else None
    if v is None or v.supervised or v.checkpoint or exp.hierarchy is None:
        return (None,)
    return exp.hierarchy.all_seeds()


def meta_dir(exp: Experiment, name: str, hierarchy: int | None = None) -> Path:
    return Path(exp.root) / "meta" / f"{name}{_suffix(exp, hierarchy)}"


def plan(exp: Experiment) -> list[Job]:
    """Every job of the experiment, stages first (each job's dependencies come before it)."""
    jobs: list[Job] = []
    used = exp.used_variants()
    trained = [n for n in exp.variants if n in used and exp.variants[n].checkpoint is None]
    if exp.hierarchy is not None and exp.hierarchy.pairs and any(not exp.variants[n].supervised for n in trained):
        jobs += [Job("chc", chc_dir(exp, h).name, chc_dir(exp, h), hierarchy=h) for h in exp.hierarchy.all_seeds()]
    jobs += [Job("meta", f"{n}{_suffix(exp, h)}", meta_dir(exp, n, h), variant=n, hierarchy=h)
             for n in trained for h in hierarchies(exp, n)]
    columns = exp.datasets if exp.protocol == "base2new" else (exp.source,)
    for column in columns:
        for row in exp.rows:
            for h in hierarchies(exp, row.variant):
                label = f"{row.label}{_suffix(exp, h)}"
                for seed in exp.seeds:
                    out = Path(exp.root) / "runs" / exp.group / spec_name(column) / label / f"seed{seed}"
                    jobs.append(Job("run", f"{spec_name(column)}/{label}/seed{seed}", out, row, seed, column,
                                    hierarchy=h))
    return jobs


def _plain(obj):
    return yaml.safe_load(yaml.safe_dump(obj))


def same_settings(stored, expected, defaults=None) -> bool:
    """Equal settings, where a key the stored ones lack counts as equal at its default value: an option
    added since an output was made does not invalidate it (nor every run after it)."""
    if not (isinstance(stored, dict) and isinstance(expected, dict)):
        return stored == expected
    defaults = defaults if isinstance(defaults, dict) else {}
    if set(stored) - set(expected):
        return False
    missing = object()
    for key, value in expected.items():
        if key not in stored:
            if defaults.get(key, missing) != value:
                return False
        elif not same_settings(stored[key], value, defaults.get(key)):
            return False
    return True


def _same(path: Path, settings: dict, defaults: dict | None = None) -> bool:
    return path.is_file() and same_settings(yaml.safe_load(path.read_text()), _plain(settings), defaults)


def chc_settings(exp: Experiment, hierarchy: int | None = None) -> dict:
    return {"pairs": exp.hierarchy.pairs, "backbone": backbone_name(exp.backbone),
            "chc": exp.hierarchy.chc_config(hierarchy).to_dict()}


def meta_settings(exp: Experiment, name: str, hierarchy: int | None = None) -> dict:
    """What a meta-training stage was made from. The hierarchy's sha256 (None before it exists) and the backbone
    make a checkpoint stale when its hierarchy is re-clustered or the backbone changes, not only its settings."""
    v = exp.variants[name]
    settings = {"source": v.supervised or str(chc_dir(exp, hierarchy)), "backbone": backbone_name(exp.backbone),
                "method": v.method, "prompt": asdict(v.prompt), "meta": asdict(exp.meta_config(v))}
    if not v.supervised:
        tasks = chc_dir(exp, hierarchy) / "hierarchy.parquet"
        settings["hierarchy_sha256"] = _sha256(tasks) if tasks.is_file() else None
    return settings


def checkpoint_path(exp: Experiment, name: str, hierarchy: int | None = None) -> Path:
    from ..meta.run import GRAM_FILE

    v = exp.variants[name]
    return Path(v.checkpoint) if v.checkpoint else meta_dir(exp, name, hierarchy) / GRAM_FILE


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def expected_run_config(exp: Experiment, job: Job) -> dict | None:
    """What the run's ``config.yaml`` must say for it to count as done; None while its checkpoint is missing."""
    init = checkpoint_path(exp, job.row.variant, job.hierarchy) if job.row.variant else None
    if init is not None and not init.is_file():
        return None
    fs = exp.fewshot_config(job.row, job.seed, str(init) if init else None)
    config = run_config_for(exp, job.column, fs)
    if init is not None:
        config["init_sha256"] = _sha256(init)  # a retrained checkpoint invalidates the run
    return config


def run_config_for(exp: Experiment, column: str, fs: FewShotConfig) -> dict:
    return run_config(backbone_name(exp.backbone), [column], fs, exp.protocol)


# the defaults of each stage's settings (see same_settings)
RUN_DEFAULTS = _plain(asdict(FewShotConfig(method="-")))
META_DEFAULTS = _plain({"prompt": asdict(PromptConfig()), "meta": asdict(MetaConfig())})
META_DEFAULTS["meta"]["regulator"]["form"] = FORM_BEFORE_FORMS  # a stage made before forms existed
CHC_DEFAULTS = _plain({"chc": CHCConfig().to_dict()})


def job_status(exp: Experiment, job: Job) -> str:
    if job.kind == "chc":
        if (job.out / "hierarchy.parquet").is_file():
            return DONE if _same(job.out / STAGE, chc_settings(exp, job.hierarchy), CHC_DEFAULTS) else STALE
        return PARTIAL if job.out.exists() else PENDING
    if job.kind == "meta":
        from ..meta.run import GRAM_FILE

        same = _same(job.out / STAGE, meta_settings(exp, job.variant, job.hierarchy), META_DEFAULTS)
        if (job.out / GRAM_FILE).is_file():
            return DONE if same else STALE
        return (PARTIAL if same else STALE) if job.out.exists() else PENDING
    expected = expected_run_config(exp, job)
    if expected is None:
        return WAITING
    if not (job.out / CONFIG).is_file():
        return PENDING
    if not same_settings(RunDir(job.out).config, _plain(expected), RUN_DEFAULTS):
        return STALE
    if not is_finished(job.out):
        return PARTIAL
    if exp.protocol == "transfer" and set(map(spec_name, exp.targets)) - set(read_summary(job.out)["targets"]):
        return PARTIAL  # tuned, some targets still to evaluate
    return DONE


def describe(exp: Experiment) -> str:
    """The dry run: every job with its status and folder (after checking that the inputs exist)."""
    exp.check_inputs()
    jobs = plan(exp)
    lines = [f"{exp.name}: {exp.protocol}, backbone {exp.backbone}, {len(exp.seeds)} seed(s), {exp.shots} shots; "
             f"{sum(j.kind == 'run' for j in jobs)} runs under {Path(exp.root) / 'runs' / exp.group}"]
    counts: dict[str, int] = {}
    for job in jobs:
        status = job_status(exp, job)
        counts[status] = counts.get(status, 0) + 1
        lines.append(f"  {status:8s} {job.kind:4s} {job.name:44s} {job.out}")
    lines.append("  " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return "\n".join(lines)


# --------------------------------------------------------------------------- doing the work


class Worker:
    """Holds what jobs share in one process: the backbone, the feature cache, the loaded datasets."""

    def __init__(self, exp: Experiment, device: str | None = None):
        self.exp = exp
        self.backbone = load_backbone(exp.backbone, device=resolve_device(device), dtype=DTYPES[exp.dtype])
        # on disk under the root: the worker processes (and later configs under the root) share image features
        self.cache = FeatureCache(self.backbone, folder=Path(exp.root) / "features")
        self._datasets: dict = {}
        self._digests: dict = {}  # (dataset spec, test cap) -> digest of its test images, read once per worker

    def dataset(self, spec: str):
        if spec not in self._datasets:
            self._datasets[spec] = load_dataset(spec)
        return self._datasets[spec]

    def chc(self, job: Job) -> None:
        from ..chc.pipeline import run_chc

        exp, out = self.exp, job.out
        settings = chc_settings(exp, job.hierarchy)
        cfg = exp.hierarchy.chc_config(job.hierarchy)
        first = chc_dir(exp)  # holds the features every hierarchy clusters
        feature_settings = settings | {"chc": asdict(cfg.features), "shard_size": cfg.shard_size}
        if out.exists():  # keep the costly features when only the clustering settings changed
            same_features = out == first and _same(out / "features.yaml", feature_settings, {
                "chc": CHC_DEFAULTS["chc"]["features"], "shard_size": CHCConfig().shard_size})
            for p in out.iterdir():
                if not (same_features and p.name in ("features", "features.yaml")):
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        out.mkdir(parents=True, exist_ok=True)
        if out == first:
            (out / "features.yaml").write_text(yaml.safe_dump(feature_settings))
        elif not (first / "features.yaml").is_file():
            raise FileNotFoundError(f"{first} holds no features yet: its CHC job runs first")
        h = run_chc(exp.hierarchy.pairs, exp.backbone, out, cfg, backbone=self.backbone, features=first / "features")
        (out / STAGE).write_text(yaml.safe_dump(settings, sort_keys=False))
        tqdm.write(f"CHC: {len(h.topics)} topics over {int(h.kept.sum())} kept pairs")

    def meta(self, job: Job) -> None:
        from ..meta.run import meta_train

        exp, v, out = self.exp, self.exp.variants[job.variant], job.out
        settings = meta_settings(exp, job.variant, job.hierarchy)
        if out.exists() and not _same(out / STAGE, settings, META_DEFAULTS):
            shutil.rmtree(out)  # other settings: a resumed checkpoint would mix two runs
        out.mkdir(parents=True, exist_ok=True)
        (out / STAGE).write_text(yaml.safe_dump(settings, sort_keys=False))
        start = time.perf_counter()
        _, state = meta_train(v.supervised or chc_dir(exp, job.hierarchy), self.backbone, v.method, out, exp.meta_config(v),
                              v.prompt, supervised=v.supervised is not None)
        tqdm.write(f"meta-trained {job.name}: {state.iteration} iterations ({time.perf_counter() - start:.0f} s)")

    def run(self, job: Job) -> dict:
        fs, run = self._prepare(job)
        if run is None:  # tuned already: done, or a transfer run with targets to add
            return read_summary(job.out) if self.exp.protocol == "base2new" else self._targets(job, fs)
        if self.exp.protocol == "base2new":
            return base_to_new(self.backbone, self.dataset(job.column), fs, run=run, cache=self.cache)
        self._check_targets(fs)
        transfer(self.backbone, self.dataset(job.column), [], fs, run=run, cache=self.cache)
        return self._targets(job, fs)

    def run_many(self, jobs: list[Job]) -> list[tuple[Job, dict]]:
        """Runs of one column that differ only in seed, start and label (:func:`batches`), tuned together
        (``tuning.multirun``); each run's folder as :meth:`run` writes it. A run that fails stops alone: the
        others are written, then its error is raised."""
        exp = self.exp
        prepared = [(job, *self._prepare(job)) for job in jobs]
        if any(run is None for _, _, run in prepared):
            raise ValueError("run_many tunes runs afresh; a finished or partial run goes through run()")
        cfgs, runs = [fs for _, fs, _ in prepared], [run for _, _, run in prepared]
        if exp.protocol == "base2new":
            results = base_to_new_many(self.backbone, self.dataset(jobs[0].column), cfgs, runs=runs, cache=self.cache)
        else:
            self._check_targets(cfgs[0])
            results = transfer_many(self.backbone, self.dataset(jobs[0].column), [], cfgs, runs=runs, cache=self.cache)
        failed = [(job, r) for job, r in zip(jobs, results) if isinstance(r, Exception)]
        if failed:
            job, err = failed[0]
            try:  # the same error type (the CLI reports user errors by type), naming the run
                named = type(err)(f"{job.name}: {err}")
            except TypeError:
                raise err from None
            raise named from err
        if exp.protocol == "base2new":
            return list(zip(jobs, results))
        return [(job, self._targets(job, fs)) for job, fs, _ in prepared]

    def _prepare(self, job: Job) -> tuple[FewShotConfig, RunDir | None]:
        """The run's settings, and a fresh run folder if it has to be tuned (None: tuned already)."""
        exp = self.exp
        config = expected_run_config(exp, job)
        if config is None:
            raise FileNotFoundError(f"{job.name}: checkpoint of variant {job.row.variant!r} is missing")
        fs = exp.fewshot_config(job.row, job.seed, config.get("init"))
        status = job_status(exp, job)
        if status == DONE or (status == PARTIAL and is_finished(job.out)):
            return fs, None
        if job.out.exists():  # unfinished or other settings: start afresh
            shutil.rmtree(job.out)
        return fs, RunDir.create(job.out, config)

    def _check_targets(self, fs: FewShotConfig) -> None:
        """The targets are evaluated after tuning: check their class names first."""
        check_classnames(self.backbone, fs, [self.dataset(t) for t in self.exp.targets])

    def _targets(self, job: Job, fs: FewShotConfig) -> dict:
        """Evaluate the tuned prompts on the targets the summary lacks (targets can be added later)."""
        run = RunDir(job.out)
        summary = run.read_summary()
        todo = [t for t in self.exp.targets if spec_name(t) not in summary["targets"]]
        params = run.load_prompts()[0] if (job.out / "prompts.safetensors").is_file() else {}
        for spec in todo:
            method = build_method(fs.method, self.backbone, fs.prompt)
            name = spec_name(spec)
            (ok,) = target_correctness(method, params, {name: self.dataset(spec)}, fs, cache=self.cache).values()
            summary["targets"][name] = accuracy_of(ok)
            if "correct" in summary:  # runs from before per-image correctness keep none: a part would mislead
                summary["correct"]["targets"][name] = correct_bits(ok)
            if "test_sha256" in summary:  # likewise for the digest of the test images
                key = (spec, fs.max_test_per_class)
                if key not in self._digests:
                    self._digests[key] = sha256_of_test(self.dataset(spec), fs)
                summary["test_sha256"]["targets"][name] = self._digests[key]
            run.write_summary(summary)  # after each target: a kill loses at most one
        return summary


_WORKER: Worker | None = None


def _init_worker(exp: Experiment, device: str | None, threads: int) -> None:
    global _WORKER
    torch.set_num_threads(threads)
    _WORKER = Worker(exp, device)


def _pool_job(job: Job | list[Job]) -> list[tuple[Job, dict | None]]:
    return _do(_WORKER, job)


_RAY_WORKERS: dict[tuple, Worker] = {}  # per Ray worker process: what its tasks share (backbone, cache, datasets)


def _ray_job(task: tuple[Experiment, str | None, Job | list[Job], str]) -> list[tuple[Job, dict | None]]:
    exp, device, unit, cwd = task
    if not os.path.isdir(cwd):
        raise FileNotFoundError(f"the runner's working directory {cwd} does not exist on this Ray node: relative run "
                                "folders and data paths resolve against it, so it must be on storage every node shares")
    os.chdir(cwd)  # relative roots and data paths mean what they mean to the runner
    # the root's absolute path too: a worker's feature cache lives under the root of the experiment it was made for
    key = (exp.backbone, exp.dtype, device, os.path.abspath(exp.root))
    if key not in _RAY_WORKERS:
        _RAY_WORKERS[key] = Worker(exp, device)
    worker = _RAY_WORKERS[key]
    worker.exp = exp  # the backbone and cache serve any experiment under this root
    return _do(worker, unit)


def _on_ray(exp: Experiment, units: list, device: str | None, address: str | None) -> Iterator[list]:
    """Each unit (a meta-training, a batch of runs) as one Ray task, on the cluster at ``address`` (None:
    ``RAY_ADDRESS``, else a cluster started on this node with ``ray start``, else a local instance). A task
    asks for one GPU when ``device`` is CUDA, or when ``device`` is unset and the cluster has GPUs. Tasks run in
    the runner's working directory, so it and the run folders must be on storage every node shares (same path). A
    task whose worker dies is rerun (its unfinished folder is redone)."""
    from ..chc.executor import RayExecutor

    executor = RayExecutor(address)
    gpus = 1 if (device or "").startswith("cuda") or (device is None and executor.gpus()) else 0
    task_device = "cuda" if gpus and device is None else device
    return executor.imap_unordered(_ray_job, [(exp, task_device, u, os.getcwd()) for u in units], num_gpus=gpus)


def _in_pool(exp: Experiment, units: list, jobs: int, device: str | None) -> Iterator[list]:
    """The units in ``jobs`` local worker processes (each with ``cpu_count // jobs`` threads), as they finish."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with process_pool(min(jobs, len(units)), _init_worker, (exp, device, threads)) as pool:  # die with us
        futures = [pool.submit(_pool_job, u) for u in units]
        try:
            for f in as_completed(futures):
                yield f.result()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


def _do(worker: Worker, unit: Job | list[Job]) -> list[tuple[Job, dict | None]]:
    """A job, or a batch of runs tuned together; (job, result) for each."""
    if isinstance(unit, list):
        return worker.run_many(unit) if len(unit) > 1 else [(unit[0], worker.run(unit[0]))]
    return [(unit, getattr(worker, unit.kind)(unit))]


# Runs sent together at most (``--max-batch-runs``). The joint step's memory grows with them (R x C text
# sequences, R x batch images for visual prompts): ``train_many`` splits a batch into groups that fit the
# device's free memory, measured from a probe of its first step (``tuning.multirun.runs_that_fit``).
MAX_BATCH_RUNS = 16


def batches(exp: Experiment, jobs: list[Job], max_runs: int = MAX_BATCH_RUNS) -> list[list[Job]]:
    """The run jobs grouped into batches tuned together: runs of one column whose few-shot settings differ
    only in seed, start and label, of a method whose runs share a forward (``tuning.multirun.steps_together``:
    CoOp, CoCoOp, VPT, VPT-deep, joint; the others gain nothing and run alone), that must
    be tuned (not a finished transfer run that lacks targets), at most ``max_runs`` per batch. Every other
    run is a batch of one."""
    if max_runs < 1:
        raise ValueError(f"--max-batch-runs must be >= 1, got {max_runs}")
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        config = expected_run_config(exp, job)
        fs = exp.fewshot_config(job.row, job.seed, config.get("init")) if config is not None else None
        alone = (fs is None or not steps_together(METHODS[fs.method]) or max_runs == 1
                 or (is_finished(job.out) and job_status(exp, job) == PARTIAL))  # the cheap test first
        key = (id(job),) if alone else (job.column, repr({k: v for k, v in asdict(fs).items() if k not in OWN}))
        groups.setdefault(key, []).append(job)
    return [group[i:i + max_runs] for group in groups.values() for i in range(0, len(group), max_runs)]


def longest_first(exp: Experiment, units: list) -> list:
    """Meta-training jobs or batches of runs with the costly ones first, so that on parallel workers a long one does
    not start last and leave the others idle: visual-prompt methods (their image tower runs at every step) and CoCoOp
    (B x C text sequences per batch, in training and at every evaluation, transfer targets included) before the
    others, then bigger batches; otherwise in plan order."""
    def cost(unit) -> tuple[bool, int]:
        jobs = unit if isinstance(unit, list) else [unit]
        job = jobs[0]
        if job.kind == "chc":  # no prompt method: they run in the calling process anyway
            return False, len(jobs)
        method = exp.variants[job.variant].method if job.kind == "meta" else job.row.method
        return METHODS[method].uses_pixels or METHODS[method].text_per_image, len(jobs)

    return sorted(units, key=cost, reverse=True)


def _line(job: Job, s: dict | None) -> str:
    if s is None:
        return f"  {job.kind} {job.name} done"
    if "base" in s:
        return f"  {job.name:44s} base {s['base']:6.2f}  new {s['new']:6.2f}  H {s['h']:6.2f}  ({s['seconds']:.1f} s)"
    targets = "  ".join(f"{k} {v:.2f}" for k, v in s["targets"].items())
    return f"  {job.name:44s} source {s['source']:6.2f}  {targets}"


EXECUTORS = ("local", "ray")


@writes("exp.root", "an experiment under this root")
def run_experiment(exp: Experiment, *, jobs: int = 1, device: str | None = None,
                   worker: Worker | None = None, max_batch_runs: int = MAX_BATCH_RUNS, executor: str = "local",
                   address: str | None = None) -> dict[str, float]:
    """Do every job that is not done; returns the wall time (s) of each stage that had work ("chc",
    "meta", "run"). CHC runs in this process; meta-training and few-shot runs go to
    ``jobs`` worker processes when ``jobs > 1`` (each with ``cpu_count // jobs`` threads), or with
    ``executor="ray"`` to a Ray cluster, one task per meta-training and per batch of runs (:func:`_on_ray`).
    Few-shot runs that can share a pass are tuned together, ``max_batch_runs`` at most (:func:`batches`; 1: one
    by one). Missing inputs fail before any job starts, not after the datasets before them have run."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}: use {' or '.join(EXECUTORS)}")
    exp.check_inputs()
    seconds: dict[str, float] = {}
    for kind in ("chc", "meta", "run"):  # statuses are read after the previous stage: a new checkpoint makes runs stale
        todo = [j for j in plan(exp) if j.kind == kind and job_status(exp, j) != DONE]
        if not todo:
            continue
        start = time.perf_counter()
        for job in todo if kind == "meta" and exp.hierarchy is not None else ():
            if not exp.variants[job.variant].supervised and not chc_dir(exp, job.hierarchy).is_dir():
                raise FileNotFoundError(f"hierarchy {chc_dir(exp, job.hierarchy)} does not exist (make it with gram chc)")
        units = batches(exp, todo, max_batch_runs) if kind == "run" else todo
        if kind != "chc" and (jobs > 1 or executor == "ray"):  # CHC runs in this process
            units = longest_first(exp, units)
        if executor == "ray" and kind != "chc":
            done, where = _on_ray(exp, units, device, address), " (ray)"
        elif jobs <= 1 or kind == "chc" or len(units) == 1:
            worker = worker or Worker(exp, device)
            done, where = (_do(worker, unit) for unit in units), ""
        else:
            done, where = _in_pool(exp, units, jobs, device), f" ({jobs} processes)"
        with closing(done), tqdm(total=len(todo), desc=f"{exp.name}: {kind}{where}", disable=len(todo) < 2) as bar:
            for results in done:
                for job, result in results:
                    tqdm.write(_line(job, result))
                    bar.update()
        seconds[kind] = time.perf_counter() - start
    record_hierarchies(exp)
    return seconds


def record_hierarchies(exp: Experiment) -> None:
    """Write each finished GRAM run's hierarchy into its ``summary.json`` (experiments over several hierarchies), so
    that tables read from the folders alone (``gram table``) tell the hierarchies' runs apart."""
    if exp.hierarchy is None or len(exp.hierarchy.all_seeds()) < 2:
        return
    for job in plan(exp):
        if job.kind == "run" and job.hierarchy is not None and is_finished(job.out):
            run = RunDir(job.out)
            summary = run.read_summary()
            if summary.get("hierarchy") != job.hierarchy:
                run.write_summary({**summary, "hierarchy": job.hierarchy})


def summaries(exp: Experiment) -> list[dict]:
    """The finished runs' summaries, with ``dataset`` (and target keys) as the config's column names, and,
    in an experiment over several CHC hierarchies, the ``hierarchy`` (clustering seed) of each GRAM run."""
    several = exp.hierarchy is not None and len(exp.hierarchy.all_seeds()) > 1
    out = []
    for job in plan(exp):
        if job.kind == "run" and job_status(exp, job) in (DONE, PARTIAL) and is_finished(job.out):
            s = {**read_summary(job.out), "dataset": spec_name(job.column)}
            if several and job.hierarchy is not None:
                s["hierarchy"] = job.hierarchy
            out.append(s)
    return out
