"""``gram drift``: how far few-shot tuning moved the prompts from where they started, per epoch, and
whether a GRAM row's frozen regulator R_phi* pushed them away.

R_phi* transforms every test-time gradient. The paper's form adds a bias that does not vanish with the
gradient, so over thousands of batch-1 steps it can carry the prompts steadily away from theta*
(benchmarks/README.md, ``bench_long_horizon.py``). ``train_prompts`` logs each epoch's ``drift``,
||theta_t - theta_0|| over all prompt tensors, to the run's ``metrics.jsonl``. This module tabulates it and
compares each regulated run with its twin tuned without R_phi* (``regulator: false`` in ``config.yaml``,
every training setting otherwise the same: init, dataset, seed, shots, schedule), which shows what plain
SGD from the same theta* moves on its own.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..data.registry import spec_name
from ..errors import GramError
from ..runs import CONFIG, METRICS, RunDir
from .table import _markdown

RATIO_LIMIT = 2.0
"""A regulated run whose final drift exceeds this multiple of its unregulated twin's: R_phi* drifted.

Measured offline at 5,000 batch-1 steps (benchmarks/README.md, one seed): the literal form ends 65.8 from
theta* against 4.3 without R_phi* (15x; Base 39 points lower), scale-invariant 14.3 (3.3x; Base 8.4 lower),
bounded 6.0 (1.4x; Base 0.4 lower). 2x lies between the forms that cost accuracy and the one that did not,
with room on both sides for another dataset, seed or horizon."""

MAX_COLUMNS = 10  # epochs shown one per column; beyond this, the first, middle and last
# config keys that do not shape training: runs that differ only in these are twins
NOT_TRAINING = ("regulator", "label", "eval_every_epoch", "max_test_per_class")


@dataclass(frozen=True)
class DriftRun:
    """One few-shot run's drift record: its folder name as shown, its ``config.yaml``, drift by epoch."""

    name: str
    config: dict
    drifts: dict[int, float]
    form: str | None = None  # the init file's R_phi* form (regulator_form); None: no init, or unreadable

    @property
    def regulated(self) -> bool:
        """Started from a GRAM checkpoint and tuned with its R_phi* (a prompts file without phi* has none)."""
        return self.config.get("init") is not None and bool(self.config.get("regulator", True)) and self.form != "none"


def drift_by_epoch(records: Iterable[dict]) -> dict[int, float]:
    """The ``drift`` of each epoch in a metrics log; the last record of an epoch wins (a rerun appends)."""
    return {int(r["epoch"]): float(r["drift"]) for r in records if "epoch" in r and "drift" in r}


def is_fewshot_config(config: object) -> bool:
    """A few-shot run's ``config.yaml`` (``run_config``), not meta-training's (``protocol: meta-train``)."""
    return isinstance(config, dict) and config.get("protocol") in ("base2new", "transfer") and "method" in config


def _config(folder: Path) -> dict | None:
    try:
        config = RunDir(folder).config
    except (OSError, yaml.YAMLError) as err:
        raise GramError(f"{folder / CONFIG} is unreadable: {err}") from err
    return config if is_fewshot_config(config) else None


def _named_run(folder: Path) -> DriftRun:
    """A folder named on the command line as a run: it must be a few-shot run that logged something."""
    if not (folder / METRICS).is_file():
        raise GramError(f"{folder} has no {METRICS}: not a few-shot run folder (nor a folder holding any), "
                        "or its run has not finished an epoch yet")
    config = _config(folder) if (folder / CONFIG).is_file() else None
    if config is None:
        raise GramError(f"{folder} is not a few-shot run folder: its {CONFIG} is missing or is not a "
                        "gram fewshot / gram experiment run's")
    return _load(str(folder), folder, config)


def _load(name: str, folder: Path, config: dict) -> DriftRun:
    init = config.get("init")
    return DriftRun(name, config, drift_by_epoch(RunDir(folder).read_metrics()),
                    regulator_form(str(init)) if init is not None else None)


def find_runs(dirs: Sequence[str | os.PathLike]) -> list[DriftRun]:
    """The few-shot runs in ``dirs``: each is a run folder, or a folder searched recursively for them
    (meta-training and CHC folders are passed over). Each run once, in a stable order."""
    if not dirs:
        raise GramError("give at least one run folder, or a folder holding runs")
    runs: dict[Path, DriftRun] = {}
    for d in map(Path, dirs):
        if not d.is_dir():
            raise GramError(f"no such folder: {d}")
        if (d / CONFIG).is_file() or (d / METRICS).is_file():
            if d.resolve() not in runs:
                runs[d.resolve()] = _named_run(d)
            continue
        found = 0
        for path in sorted(d.rglob(CONFIG)):
            config = _config(path.parent)
            if config is None:
                continue
            found += 1
            if path.parent.resolve() not in runs:
                runs[path.parent.resolve()] = _load(str(path.parent.relative_to(d)), path.parent, config)
        if not found:
            raise GramError(f"{d} holds no few-shot run folder ({CONFIG} + {METRICS}, as gram fewshot and "
                            "gram experiment run write)")
    return list(runs.values())


def twin_key(config: dict) -> str:
    """What must match for two runs to be the same training but for the regulator."""
    return json.dumps({k: v for k, v in config.items() if k not in NOT_TRAINING}, sort_keys=True, default=str)


def twins(runs: Sequence[DriftRun]) -> tuple[list[tuple[DriftRun, DriftRun]], list[DriftRun]]:
    """(regulated run, its unregulated twin) pairs, and the regulated runs that have no twin here."""
    plain: dict[str, DriftRun] = {}
    for r in runs:
        if r.config.get("init") is not None and not r.regulated and r.drifts:
            plain.setdefault(twin_key(r.config), r)
    pairs, alone = [], []
    for r in runs:
        if r.regulated and r.drifts:
            twin = plain.get(twin_key(r.config))
            if twin is None:
                alone.append(r)
            else:
                pairs.append((r, twin))
    return pairs, alone


def ratio(regulated: float, plain: float) -> float:
    """regulated / plain; a plain run that did not move at all makes any movement infinitely more."""
    if plain > 0:
        return regulated / plain
    return 1.0 if regulated == 0 else math.inf


def shown_epochs(runs: Sequence[DriftRun]) -> list[int]:
    """Every epoch when few; else each run's first, middle and last (a 10-epoch run fits whole)."""
    out: set[int] = set()
    for r in runs:
        epochs = sorted(r.drifts)
        if len(epochs) <= MAX_COLUMNS:
            out.update(epochs)
        else:
            out.update((epochs[0], epochs[(len(epochs) - 1) // 2], epochs[-1]))
    return sorted(out)


def regulator_form(init: str) -> str | None:
    """The R_phi* form recorded in a GRAM checkpoint, "none" for a prompts file without phi*, None when
    the file cannot be read (moved, or another machine's path)."""
    from ..meta.checkpoint import load_gram, regulator_config

    try:
        _, phi, info = load_gram(init)
        return regulator_config(init, info).form_name if phi else "none"
    except (OSError, ValueError):
        return None


def start(run: DriftRun) -> str:
    """Where a run started and how it was updated, as the table says it."""
    init = run.config.get("init")
    if init is None:
        return "fresh init"
    form = run.form
    if form == "none":
        return "init (no R_phi* in it)"
    if not run.regulated:
        return "theta* only"
    return f"theta* + R_phi* ({form})" if form else "theta* + R_phi*"


def _dataset(config: dict) -> str:
    return ", ".join(spec_name(str(d)) for d in config.get("datasets") or []) or "?"


def drift_table(runs: Sequence[DriftRun]) -> str:
    """Markdown: one row per run, drift at each shown epoch ("-": not logged)."""
    epochs = shown_epochs(runs)
    header = ["run", "dataset", "seed", "start", *(f"epoch {e}" for e in epochs)]
    rows = [[r.name, _dataset(r.config), str(r.config.get("seed", "?")), start(r),
             *(f"{r.drifts[e]:.4g}" if e in r.drifts else "-" for e in epochs)] for r in runs]
    return _markdown(header, rows)


def verdict(regulated: DriftRun, plain: DriftRun, limit: float = RATIO_LIMIT) -> tuple[str, bool]:
    """One line comparing the final drifts (at the last epoch both logged: a killed run is compared where it
    stopped) and whether R_phi* drifted."""
    common = set(regulated.drifts) & set(plain.drifts)
    if not common:
        return f"{regulated.name} vs {plain.name}: no epoch logged by both, nothing to compare", False
    epoch = max(common)
    a, b = regulated.drifts[epoch], plain.drifts[epoch]
    q = ratio(a, b)
    drifted = q > limit
    what = "R_phi* drifted" if drifted else f"no drift (within {limit:g}x)"
    return (f"{regulated.name} vs {plain.name} (epoch {epoch}): drift {a:.4g} with R_phi*, {b:.4g} without; "
            f"regulated drift {q:.1f}x the unregulated: {what}"), drifted


def report(dirs: Sequence[str | os.PathLike], limit: float = RATIO_LIMIT) -> tuple[str, bool]:
    """The drift table of the runs in ``dirs`` and a verdict per regulated run with an unregulated twin;
    True when any R_phi* drifted."""
    if not limit > 0:  # NaN too
        raise GramError(f"--limit must be a positive ratio (e.g. {RATIO_LIMIT:g}), got {limit}")
    runs = find_runs(dirs)
    logged = [r for r in runs if r.drifts]
    if not logged:
        raise GramError(f"no run in {', '.join(map(str, dirs))} logged drift: they are zero-shot, have not "
                        "finished an epoch, or were made before gram logged drift (rerun them)")
    lines = [drift_table(logged)]
    if len(logged) < len(runs):
        lines.append(f"\n{len(runs) - len(logged)} run(s) without drift records left out (zero-shot, not past "
                     "epoch 1, or made before gram logged drift).")
    pairs, alone = twins(logged)
    lines.append(f"\nR_phi* against the same run without it (drifted: regulated final drift > {limit:g}x; "
                 "offline, 5,000 steps: literal 15x, scale-invariant 3.3x, bounded 1.4x):")
    results = [verdict(r, p, limit) for r, p in pairs]
    lines += [f"- {text}" for text, _ in results]
    lines += [f"- {r.name}: no twin without R_phi* here (same init, dataset, seed and schedule)" for r in alone]
    if not pairs and not alone:
        lines.append("- no run here was tuned with an R_phi*")
    drifted = sum(d for _, d in results)
    if drifted:
        lines.append(f"\nVerdict: R_phi* drifted in {drifted} of {len(results)} comparison(s); docs/REPRODUCE.md, "
                     "\"If the smoke run drifted\", says what to do.")
    elif results:
        lines.append(f"\nVerdict: no drift in {len(results)} comparison(s).")
    return "\n".join(lines), drifted > 0
