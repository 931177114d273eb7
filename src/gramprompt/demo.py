"""``gram demo`` and ``gram ablations``: the packaged offline experiment configs, end to end, on the default backbone.

CHC on the ``openclipart`` image-text pairs -> meta-training of theta* and R_phi* per prompt method ->
base-to-new few-shot tuning on the offline classification sets, printed in the paper's Table 1 layout:
by default at the demo's size (``configs/offline/demo.yaml``: one CHC hierarchy, 2 seeds, about 13 minutes
on 2 cores), with ``--full`` the README's Table 1 (``offline/base2new``: 5 seeds, the GRAM rows on each of
3 CHC hierarchies, hours). ``gram ablations`` runs Table 6 and Table 7
(``offline/ablations``, ``offline/tokens``). It is ``gram experiment run`` on those configs, plus a
zero-shot table; every stage and run is reused by a later call with the same settings.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from .chc.hierarchy import Hierarchy
from .eval.protocols import zero_shot_all_classes
from .eval.table import zero_shot_table
from .data.registry import spec_name
from .experiments.config import Experiment, load_experiment, packaged_configs
from .experiments.report import experiment_tables
from .experiments.runner import MAX_BATCH_RUNS, Worker, chc_dir, run_experiment

DEMO = ("offline/demo",)
FULL = ("offline/base2new",)
ABLATIONS = {6: "offline/ablations", 7: "offline/tokens"}
# --quick: the same pipeline at reduced size, for a smoke run (meant to take under 5 minutes on 2 cores)
QUICK = ("root=runs/offline-quick", "datasets=[emoji-groups, digits]", "seeds=[1]", "fewshot.max_test_per_class=20",
         "fewshot.tune.epochs=2", "hierarchy.pairs=openclipart:400", "hierarchy.seeds=[0]", "meta.iterations=20")


# measured wall times on 2 cores from empty caches (docs/RESULTS.md); None: not measured
TIMES = {"offline/demo": "about 13 minutes", "offline/base2new": "about 2 hours (CHC 2 min, meta-training 34 min, "
         "420 runs 74 min)"}


def introduction(experiments: Sequence[Experiment], quick: bool = False) -> str:
    """What the demo is about to run, and what its table is (and is not)."""
    lines = []
    for exp in experiments:
        h = exp.hierarchy
        corpus = (f"CHC on `{h.pairs or h.path}` ({len(h.all_seeds())} clustering(s), seed(s) "
                  f"{', '.join(map(str, h.all_seeds()))})" if h is not None else "no CHC")
        meta = exp.meta_config()
        took = "a smoke run, not timed" if quick else TIMES.get(_name(exp), "not timed")
        lines.append(f"{exp.name}: {exp.description}. {corpus}; meta-training {meta.iterations} iterations per "
                     f"GRAM variant; {len(exp.rows)} rows on {', '.join(spec_name(c) for c in exp.columns)}; "
                     f"seeds {', '.join(map(str, exp.seeds))}; {exp.shots} shots; backbone {exp.backbone}. "
                     f"Expected time on 2 cores: {took}.")
    if not any(_name(e) == "offline/base2new" for e in experiments):
        lines.append("Its tables are a smoke-sized version of Table 1 in docs/RESULTS.md (fewer pairs, clusterings, "
                     "seeds and test images): they show that the pipeline works, not the result.")
    return "\n".join(lines)


def how_to_read() -> str:
    return ("How to read the tables: each dataset cell is Base / New / H (accuracy on the base classes tuned on, on "
            "the new classes never seen, and their harmonic mean), averaged over seeds; ΔH [95% interval] is a GRAM "
            "row minus the row it is compared with, by a paired bootstrap over seeds, test images and clusterings. "
            "An interval that contains 0 is no evidence of a difference. The full result: `gram demo --full` "
            "(= `gram experiment run offline/base2new`, about 2 hours on 2 cores) and docs/RESULTS.md.")


def _name(exp: Experiment) -> str:
    """The packaged name of the experiment's config (``offline/demo``), or its file name."""
    path = Path(exp.source_file)
    try:
        return str(path.relative_to(packaged_configs()).with_suffix(""))
    except ValueError:
        return path.stem


def demo_experiments(configs: Sequence[str] = DEMO, overrides: Sequence[str] = (), quick: bool = False) -> list[Experiment]:
    return [load_experiment(c, [*(QUICK if quick else ()), *overrides]) for c in configs]


def run_demo(experiments: list[Experiment], *, jobs: int = 1, device: str | None = None,
             max_batch_runs: int = MAX_BATCH_RUNS, quick: bool = False) -> str:
    """Run the experiments (they share the backbone), then report CHC, zero-shot accuracy, their tables and
    where the time went."""
    start = time.perf_counter()
    first = experiments[0]
    print(introduction(experiments, quick), flush=True)
    print(f"backbone {first.backbone}; configs {', '.join(e.name for e in experiments)}; root {first.root}", flush=True)
    worker = Worker(first, device)
    stages: dict[str, float] = {}
    for exp in experiments:
        for kind, s in run_experiment(exp, jobs=jobs, device=device, worker=worker, max_batch_runs=max_batch_runs).items():
            stages[kind] = stages.get(kind, 0.0) + s
    zs_start = time.perf_counter()
    datasets = list(dict.fromkeys(d for e in experiments for d in e.datasets))
    max_test = first.fewshot.get("max_test_per_class")
    zs = [zero_shot_all_classes(worker.backbone, worker.dataset(d), max_per_class=max_test, cache=worker.cache)
          for d in datasets]
    root = Path(first.root)
    (root / "zeroshot.json").write_text(json.dumps(zs, indent=2) + "\n")
    stages["zero-shot"] = time.perf_counter() - zs_start
    parts = []
    made = [(seed, Hierarchy.load(chc_dir(first, seed))) for seed in (first.hierarchy.all_seeds() if first.hierarchy else ())
            if (chc_dir(first, seed) / "hierarchy.parquet").is_file()]
    if made:
        parts.append(f"Meta-training data: CHC on `{first.hierarchy.pairs or first.hierarchy.path}`: " + "; ".join(
            f"clustering seed {seed}: {len(h.topics)} topics over {int(h.kept.sum())} pairs" for seed, h in made) + ".")
    parts.append("## Zero-shot, all classes\n\n" + zero_shot_table(zs))
    parts += [experiment_tables(e) for e in experiments]
    names = {"chc": "CHC", "meta": "meta-training", "run": "few-shot runs", "zero-shot": "zero-shot table"}
    split = ", ".join(f"{names[k]} {s:.0f} s" for k, s in stages.items())
    parts.append(f"total time {time.perf_counter() - start:.0f} s ({split}; stages already done are skipped); "
                 f"runs in {root / 'runs'}")
    parts.append(how_to_read())
    report = "\n\n".join(parts)
    (root / f"report-{'-'.join(e.name for e in experiments)}.md").write_text(report + "\n")
    return report


__all__ = ["ABLATIONS", "DEMO", "FULL", "QUICK", "demo_experiments", "how_to_read", "introduction", "run_demo"]
