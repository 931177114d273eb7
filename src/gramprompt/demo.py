"""``gram demo``: the offline main job. Zero-shot accuracy on all classes, then base-to-new prompt
tuning of every method on the offline classification sets, on the shipped default backbone."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .backbones import load_backbone
from .data.registry import load_dataset
from .eval.protocols import FewShotConfig, base_to_new, run_config, zero_shot_all_classes
from .eval.table import render, zero_shot_table
from .runs import RunDir, is_finished
from .tuning.config import TuneConfig
from .tuning.features import FeatureCache

# The downstream offline sets: none of them was seen while training the default backbone.
DEMO_DATASETS = ("emoji-groups", "fashion-mnist", "animal-mnist", "digits")
DEMO_METHODS = ("zeroshot", "coop", "cocoop", "vpt", "joint")


@dataclass
class DemoConfig:
    out: Path = Path("runs/demo")
    backbone: str = "default"
    datasets: tuple[str, ...] = DEMO_DATASETS
    methods: tuple[str, ...] = DEMO_METHODS
    seeds: tuple[int, ...] = (1, 2, 3)
    shots: int = 16
    max_test_per_class: int | None = 100
    # CoCoOp's schedule with batch size 4 instead of 1: a quarter of the steps, to fit 2 CPU cores
    tune: TuneConfig = field(default_factory=lambda: TuneConfig(batch_size=4))
    device: str | None = None

    @classmethod
    def quick(cls, **overrides) -> "DemoConfig":
        """The same pipeline at reduced size, for a smoke run."""
        return cls(**{"datasets": ("emoji-groups", "digits"), "seeds": (1,), "max_test_per_class": 20,
                      "tune": TuneConfig(epochs=2, batch_size=4), **overrides})


def run_demo(cfg: DemoConfig, device=None) -> str:
    start = time.perf_counter()
    backbone = load_backbone(cfg.backbone, device=device)
    cache = FeatureCache(backbone)
    datasets = {name: load_dataset(name) for name in cfg.datasets}
    print(f"backbone {backbone.name}; datasets {', '.join(cfg.datasets)}; methods {', '.join(cfg.methods)}; "
          f"seeds {list(cfg.seeds)}; {cfg.shots} shots (fewer where a class has fewer); test images per class "
          f"<= {cfg.max_test_per_class or 'all'}", flush=True)

    zs = [zero_shot_all_classes(backbone, ds, max_per_class=cfg.max_test_per_class, cache=cache)
          for ds in tqdm(datasets.values(), desc="zero-shot, all classes")]
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "zeroshot.json").write_text(json.dumps(zs, indent=2) + "\n")

    jobs = [(d, m, s) for d in cfg.datasets for m in cfg.methods for s in cfg.seeds]
    for name, method, seed in tqdm(jobs, desc="base-to-new runs"):
        run_dir = cfg.out / "runs" / name / method / f"seed{seed}"
        if is_finished(run_dir):  # a second demo run reuses what the first computed
            continue
        fs = FewShotConfig(method=method, shots=cfg.shots, seed=seed, allow_fewer_shots=True,
                           max_test_per_class=cfg.max_test_per_class, tune=cfg.tune)
        run = RunDir.create(run_dir, run_config(backbone, [name], fs, "base2new"))
        s = base_to_new(backbone, datasets[name], fs, run=run, cache=cache)
        tqdm.write(f"  {name:14s} {method:9s} seed {seed}: base {s['base']:6.2f}  new {s['new']:6.2f}  "
                   f"H {s['h']:6.2f}  ({s['seconds']:.1f} s)")
    report = ("## Zero-shot, all classes\n\n" + zero_shot_table(zs) + "\n\n" + render([cfg.out / "runs"]) +
              f"\n\ntotal time {time.perf_counter() - start:.0f} s; runs in {cfg.out / 'runs'}")
    (cfg.out / "report.md").write_text(report + "\n")
    return report
