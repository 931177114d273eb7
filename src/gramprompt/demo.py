"""``gram demo`` and ``gram ablations``: the offline GRAM pipeline end to end on the default backbone.

CHC on the ``openclipart`` image-text pairs -> meta-training of theta* and R_phi* per prompt method ->
base-to-new few-shot tuning (3 seeds) on the offline classification sets, printed in the paper's
Table 1 layout; ``gram ablations`` adds Table 6 (the ablations of UNIGRAM) and Table 7 (prompt token
counts). Every stage is stored under ``out`` and reused by a later run with the same settings
(a changed setting recomputes what depends on it).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from .backbones import load_backbone
from .chc.config import CHCConfig, FeatureConfig
from .chc.hierarchy import Hierarchy
from .data.registry import load_dataset
from .eval.protocols import FewShotConfig, base_to_new, run_config, zero_shot_all_classes
from .eval.table import collect, paper_table, zero_shot_table
from .meta.regulator import RegulatorConfig
from .meta.trainer import MetaConfig
from .prompts import PromptConfig
from .runs import CONFIG, RunDir, is_finished
from .tuning.config import TuneConfig
from .tuning.features import FeatureCache

# The downstream offline sets: none of them was seen while training the default backbone or by CHC.
DEMO_DATASETS = ("emoji-groups", "fashion-mnist", "animal-mnist", "digits")
UNIGRAM_PROMPT = PromptConfig(text_tokens=2, visual_tokens=2)  # the paper's 2 textual + 2 visual tokens


@dataclass(frozen=True)
class Variant:
    """One meta-trained checkpoint: the prompt method GRAM wraps and what differs from the defaults."""

    method: str
    prompt: PromptConfig = field(default_factory=PromptConfig)
    mode: str = "gram"
    use_regulator: bool = True
    domain_shift: bool = True
    supervised: str | None = None  # a labelled dataset instead of the CHC hierarchy (the "- CHC" row)


VARIANTS: dict[str, Variant] = {
    "coop": Variant("coop"),
    "vpt": Variant("vpt"),
    "unigram": Variant("joint", UNIGRAM_PROMPT),
    # Table 6: the ablations of UNIGRAM
    "unigram-no-shift": Variant("joint", UNIGRAM_PROMPT, domain_shift=False),
    "unigram-no-regulator": Variant("joint", UNIGRAM_PROMPT, use_regulator=False),
    "unigram-pretrain": Variant("joint", UNIGRAM_PROMPT, mode="pretrain"),
    "unigram-supervised": Variant("joint", UNIGRAM_PROMPT, supervised="clipart-categories"),
    # Table 7: prompt token counts, split evenly between the text and the image side
    **{f"unigram-{n}": Variant("joint", PromptConfig(text_tokens=n // 2, visual_tokens=n // 2)) for n in (2, 6, 8)},
}


@dataclass(frozen=True)
class Row:
    """A table row: a few-shot method, optionally started from a variant's theta* (and regulated by its phi*)."""

    label: str  # run folder name and summary label
    title: str  # as printed in the table
    method: str
    prompt: PromptConfig = field(default_factory=PromptConfig)
    variant: str | None = None


TABLE1 = (
    Row("zeroshot", "CLIP (zero-shot)", "zeroshot"),
    Row("cocoop", "CoCoOp", "cocoop"),
    Row("coop", "CoOp", "coop"),
    Row("coop+gram", "CoOp + GRAM", "coop", variant="coop"),
    Row("vpt", "VPT", "vpt"),
    Row("vpt+gram", "VPT + GRAM", "vpt", variant="vpt"),
    Row("unigram", "UNIGRAM", "joint", UNIGRAM_PROMPT, "unigram"),
)
TABLE6 = (
    Row("unigram", "UNIGRAM", "joint", UNIGRAM_PROMPT, "unigram"),
    Row("unigram-no-shift", "- domain shift simulation", "joint", UNIGRAM_PROMPT, "unigram-no-shift"),
    Row("unigram-no-regulator", "- gradient regulating", "joint", UNIGRAM_PROMPT, "unigram-no-regulator"),
    Row("unigram-pretrain", "- meta-learning (= prompt pre-training)", "joint", UNIGRAM_PROMPT, "unigram-pretrain"),
    Row("unigram-supervised", "- CHC (= supervised meta-learning)", "joint", UNIGRAM_PROMPT, "unigram-supervised"),
    Row("joint-2+2", "joint textual & visual prompt tuning", "joint", UNIGRAM_PROMPT),
)
TABLE7 = tuple(
    Row(f"unigram-{n}" if n != 4 else "unigram", f"{n} tokens ({n // 2} text + {n // 2} visual)", "joint",
        PromptConfig(text_tokens=n // 2, visual_tokens=n // 2), f"unigram-{n}" if n != 4 else "unigram")
    for n in (2, 4, 6, 8))


def demo_meta_config() -> MetaConfig:
    """The meta-training hyperparameters of the demo (the paper leaves them open). The library's
    defaults, except the scale-invariant regulator: the best average H of the attempts in README."""
    return MetaConfig(regulator=RegulatorConfig(scale_invariant=True))


@dataclass
class DemoConfig:
    out: Path = Path("runs/demo")
    backbone: str = "default"
    datasets: tuple[str, ...] = DEMO_DATASETS
    seeds: tuple[int, ...] = (1, 2, 3)
    shots: int = 16
    max_test_per_class: int | None = 100
    # CoCoOp's schedule with batch size 4 instead of 1: a quarter of the steps, to fit 2 CPU cores
    tune: TuneConfig = field(default_factory=lambda: TuneConfig(batch_size=4))
    pairs: str = "openclipart"
    chc: CHCConfig = field(default_factory=lambda: CHCConfig(features=FeatureConfig(stems=True)))
    meta: MetaConfig = field(default_factory=demo_meta_config)

    @classmethod
    def quick(cls, **overrides) -> DemoConfig:
        """The same pipeline at reduced size, for a smoke run (meant to take under 5 minutes on 2 cores)."""
        return cls(**{"out": Path("runs/demo-quick"), "datasets": ("emoji-groups", "digits"), "seeds": (1,),
                      "max_test_per_class": 20, "tune": TuneConfig(epochs=2, batch_size=4),
                      "pairs": "openclipart:400", "meta": replace(demo_meta_config(), iterations=20),
                      **overrides})


# --------------------------------------------------------------------------- stages


def _same_config(path: Path, config: dict) -> bool:
    return path.is_file() and yaml.safe_load(path.read_text()) == yaml.safe_load(yaml.safe_dump(config))


def hierarchy_stage(cfg: DemoConfig, backbone) -> Path:
    """CHC on the demo's pairs, reused while its settings are unchanged."""
    from .chc.pipeline import run_chc

    out = cfg.out / "chc"
    settings = {"pairs": cfg.pairs, "backbone": cfg.backbone, "chc": cfg.chc.to_dict()}
    if (out / "hierarchy.parquet").is_file() and _same_config(out / "demo.yaml", settings):
        return out
    feature_settings = settings | {"chc": asdict(cfg.chc.features)}
    if out.exists():  # keep the (costly) features when only the clustering settings changed
        same_features = _same_config(out / "features.yaml", feature_settings)
        for p in out.iterdir():
            if not (same_features and p.name in ("features", "features.yaml")):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / "features.yaml").write_text(yaml.safe_dump(feature_settings))
    start = time.perf_counter()
    h = run_chc(cfg.pairs, cfg.backbone, out, cfg.chc, backbone=backbone)
    (out / "demo.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    kept = int(h.kept.sum())
    tqdm.write(f"CHC: {len(h.topics)} topics over {kept} kept pairs ({time.perf_counter() - start:.0f} s)")
    return out


def _variant_meta(cfg: DemoConfig, v: Variant) -> MetaConfig:
    return replace(cfg.meta, mode=v.mode, use_regulator=v.use_regulator,
                   tasks=replace(cfg.meta.tasks, domain_shift=v.domain_shift))


def meta_stage(cfg: DemoConfig, backbone, name: str, hierarchy: Path) -> Path:
    """The variant's ``gram.safetensors``, meta-trained unless an identical run already wrote it."""
    from .meta.run import GRAM_FILE, meta_train

    v = VARIANTS[name]
    meta = _variant_meta(cfg, v)
    out = cfg.out / "meta" / name
    settings = {"source": v.supervised or str(hierarchy), "method": v.method, "prompt": asdict(v.prompt),
                "meta": asdict(meta)}
    if not _same_config(out / "demo.yaml", settings) and out.exists():
        shutil.rmtree(out)  # other settings: a resumed checkpoint would mix two runs
    if (out / GRAM_FILE).is_file():
        return out / GRAM_FILE
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    start = time.perf_counter()
    path, state = meta_train(v.supervised or hierarchy, backbone, v.method, out, meta, v.prompt,
                             supervised=v.supervised is not None)
    tqdm.write(f"meta-trained {name}: {state.iteration} iterations, {state.skipped} skipped "
               f"({time.perf_counter() - start:.0f} s)")
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows_stage(cfg: DemoConfig, backbone, rows: tuple[Row, ...], checkpoints: dict[str, Path],
               datasets: dict, cache: FeatureCache) -> None:
    """Base-to-new runs of every row, dataset and seed; finished runs with the same config are kept."""
    jobs = [(d, r, s) for d in cfg.datasets for r in rows for s in cfg.seeds]
    for name, row, seed in tqdm(jobs, desc="base-to-new runs"):
        init = checkpoints[row.variant] if row.variant else None
        fs = FewShotConfig(method=row.method, label=row.label, shots=cfg.shots, seed=seed,
                           init=str(init) if init else None, allow_fewer_shots=True,
                           max_test_per_class=cfg.max_test_per_class, prompt=row.prompt, tune=cfg.tune)
        config = run_config(backbone, [name], fs, "base2new")
        if init is not None:
            config["init_sha256"] = _sha256(init)  # a retrained checkpoint invalidates the run
        run_dir = cfg.out / "runs" / name / row.label / f"seed{seed}"
        if is_finished(run_dir) and _same_config(run_dir / CONFIG, config):
            continue
        if run_dir.exists():  # unfinished, or made with other settings: start it afresh
            shutil.rmtree(run_dir)
        s = base_to_new(backbone, datasets[name], fs, run=RunDir.create(run_dir, config), cache=cache)
        tqdm.write(f"  {name:14s} {row.label:22s} seed {seed}: base {s['base']:6.2f}  new {s['new']:6.2f}  "
                   f"H {s['h']:6.2f}  ({s['seconds']:.1f} s)")


def _tables(cfg: DemoConfig, tables: list[tuple[str, tuple[Row, ...]]]) -> str:
    summaries = [s for s in collect([cfg.out / "runs"]) if s["dataset"] in cfg.datasets
                 and s.get("seed") in cfg.seeds]
    parts = []
    for title, rows in tables:
        parts.append(f"## {title}\n\n" + paper_table(summaries, [(r.label, r.title) for r in rows],
                                                     list(cfg.datasets)))
    return "\n\n".join(parts)


def _pipeline(cfg: DemoConfig, tables: list[tuple[str, tuple[Row, ...]]], device=None) -> str:
    start = time.perf_counter()
    backbone = load_backbone(cfg.backbone, device=device)
    rows = tuple(dict((r.label, r) for _, t in tables for r in t).values())
    print(f"backbone {backbone.name}; pairs {cfg.pairs}; datasets {', '.join(cfg.datasets)}; seeds {list(cfg.seeds)}; "
          f"{cfg.shots} shots (fewer where a class has fewer); test images per class <= "
          f"{cfg.max_test_per_class or 'all'}; rows {', '.join(r.label for r in rows)}", flush=True)
    cfg.out.mkdir(parents=True, exist_ok=True)
    hierarchy = hierarchy_stage(cfg, backbone)
    variants = list(dict.fromkeys(r.variant for r in rows if r.variant))
    checkpoints = {v: meta_stage(cfg, backbone, v, hierarchy) for v in variants}
    cache = FeatureCache(backbone)
    datasets = {name: load_dataset(name) for name in cfg.datasets}
    rows_stage(cfg, backbone, rows, checkpoints, datasets, cache)
    zs = [zero_shot_all_classes(backbone, ds, max_per_class=cfg.max_test_per_class, cache=cache)
          for ds in datasets.values()]
    (cfg.out / "zeroshot.json").write_text(json.dumps(zs, indent=2) + "\n")
    h = Hierarchy.load(hierarchy)
    report = (f"Meta-training data: CHC on `{cfg.pairs}`: {len(h.topics)} topics over {int(h.kept.sum())} pairs.\n\n"
              "## Zero-shot, all classes\n\n" + zero_shot_table(zs) + "\n\n" + _tables(cfg, tables) +
              f"\n\ntotal time {time.perf_counter() - start:.0f} s; runs in {cfg.out / 'runs'}")
    return report


def run_demo(cfg: DemoConfig, device=None) -> str:
    """Table 1 (base-to-new, per dataset and average) for the paper's methods, with and without GRAM."""
    report = _pipeline(cfg, [("Table 1: base-to-new generalization", TABLE1)], device)
    (cfg.out / "report.md").write_text(report + "\n")
    return report


ABLATION_TABLES = {6: ("Table 6: ablations", TABLE6), 7: ("Table 7: prompt token counts", TABLE7)}


def run_ablations(cfg: DemoConfig, device=None, tables: tuple[int, ...] = (6, 7)) -> str:
    """Table 6 (ablations of UNIGRAM) and/or Table 7 (prompt token counts), same protocol as the demo."""
    report = _pipeline(cfg, [ABLATION_TABLES[t] for t in tables], device)
    (cfg.out / f"ablations-{'-'.join(map(str, tables))}.md").write_text(report + "\n")
    return report


__all__ = ["DEMO_DATASETS", "TABLE1", "TABLE6", "TABLE7", "VARIANTS", "DemoConfig", "Row", "Variant",
           "run_ablations", "run_demo"]
