"""Experiment configs: one YAML file per setting (e.g. ``vit_b16/base2new.yaml``) -> a checked dataclass.

A config names everything a table needs: the backbone, the datasets (or a source and targets), the
seeds and shots, how the GRAM checkpoints ("variants") are meta-trained, and the table rows. Shared
parts live in files that others ``extends:`` (deep-merged, the child wins, lists are replaced).
Strings may use ``${VAR}`` or ``${VAR:-default}`` from the environment, e.g. the data root.
"""
from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..chc.config import CHCConfig
from ..data.registry import spec_name
from ..eval.protocols import FewShotConfig
from ..meta.trainer import MetaConfig
from ..prompts import PromptConfig

PROTOCOLS = ("base2new", "transfer")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """An experiment config is malformed; the message names the file and the key."""


# --------------------------------------------------------------------------- dataclasses from dicts


def build(cls: type, data: dict | None, where: str = "") -> Any:
    """``cls(**data)`` recursively for nested dataclasses; unknown keys are an error, lists become
    tuples where the field is a tuple."""
    data = dict(data or {})
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown key(s) {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kind = _dataclass_in(hints[name])
        if kind is not None and isinstance(value, dict):
            value = build(kind, value, f"{where}.{name}" if where else name)
        elif isinstance(value, list) and _is_tuple(hints[name]):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where or cls.__name__}: {err}") from err


def _options(hint: Any) -> tuple:
    return typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)


def _dataclass_in(hint: Any) -> type | None:
    return next((h for h in _options(hint) if dataclasses.is_dataclass(h)), None)


def _is_tuple(hint: Any) -> bool:
    return any(typing.get_origin(h) is tuple or h is tuple for h in _options(hint))


# --------------------------------------------------------------------------- the config


@dataclass(frozen=True)
class Variant:
    """A meta-trained checkpoint (theta*, phi*): the method GRAM wraps and what differs from ``meta``.

    ``checkpoint`` names an existing ``gram.safetensors`` instead (nothing is trained)."""

    method: str
    prompt: PromptConfig = field(default_factory=PromptConfig)
    meta: dict = field(default_factory=dict)  # overrides of the experiment's MetaConfig, e.g. {mode: pretrain}
    supervised: str | None = None  # a labelled dataset's classes instead of the CHC hierarchy (the "- CHC" row)
    checkpoint: str | None = None


@dataclass(frozen=True)
class Row:
    """One table row: a few-shot method, optionally started from a variant's theta* (regulated by its phi*)."""

    label: str  # run folder name and summary label; unique within a root
    method: str
    title: str = ""  # as printed in the table (default: the label)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    variant: str | None = None
    regulator: bool = True  # False: theta* only, plain updates
    init_seed: int | None = None  # seed of a fresh random initialization (None: the run's seed)
    init: str | None = None  # start from this prompts file (e.g. a checkpoint made elsewhere)


@dataclass(frozen=True)
class Table:
    """One printed table: a subset of the rows and of the datasets (base2new) or targets (transfer)."""

    title: str
    rows: tuple[str, ...] = ()  # labels; () = all rows
    columns: tuple[str, ...] = ()  # dataset or target names (as in the table header); () = all


@dataclass(frozen=True)
class Hierarchy:
    """The CHC stage: cluster ``pairs`` (a pair-source spec), or use the existing hierarchy at ``path``."""

    pairs: str | None = None
    path: str | None = None
    chc: dict = field(default_factory=dict)  # CHCConfig overrides

    def __post_init__(self) -> None:
        if (self.pairs is None) == (self.path is None):
            raise ValueError("hierarchy needs exactly one of 'pairs' (run CHC) and 'path' (an existing one)")

    def chc_config(self) -> CHCConfig:
        return build(CHCConfig, self.chc, "hierarchy.chc")


@dataclass
class Experiment:
    """A resolved config. Stages live under ``root`` (shared by configs that extend the same base):
    ``root/chc``, ``root/meta/<variant>``, ``root/runs/<group>/<dataset>/<label>/seed<k>``."""

    name: str
    protocol: str
    backbone: str
    root: str
    rows: tuple[Row, ...]
    group: str = ""  # run folder group; configs with the same group share runs (default: the name)
    description: str = ""
    seeds: tuple[int, ...] = (1, 2, 3)
    shots: int = 16
    datasets: tuple[str, ...] = ()  # base2new
    source: str | None = None  # transfer
    targets: tuple[str, ...] = ()  # transfer
    fewshot: dict = field(default_factory=dict)  # FewShotConfig fields shared by every run (tune, max_test_per_class, ...)
    hierarchy: Hierarchy | None = None
    meta: dict = field(default_factory=dict)  # MetaConfig overrides shared by every variant
    variants: dict[str, Variant] = field(default_factory=dict)
    tables: tuple[Table, ...] = ()
    dtype: str = "fp32"
    source_file: str = ""

    def __post_init__(self) -> None:
        self.group = self.group or self.name
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.protocol == "base2new" and not self.datasets:
            raise ValueError("a base2new experiment needs 'datasets'")
        if self.protocol == "transfer" and not (self.source and self.targets):
            raise ValueError("a transfer experiment needs 'source' and 'targets'")
        labels = [r.label for r in self.rows]
        if len(set(labels)) != len(labels):
            raise ValueError(f"duplicate row labels in {labels}")
        for r in self.rows:
            if r.variant is not None and r.variant not in self.variants:
                raise ValueError(f"row {r.label!r} uses variant {r.variant!r}, not among {sorted(self.variants)}")
        needs_chc = [n for n, v in self.variants.items() if not (v.supervised or v.checkpoint)]
        if needs_chc and self.used_variants() & set(needs_chc) and self.hierarchy is None:
            raise ValueError(f"variant(s) {needs_chc} are meta-trained on a CHC hierarchy: add 'hierarchy'")
        for t in self.tables:
            missing = sorted(set(t.rows) - set(labels))
            if missing:
                raise ValueError(f"table {t.title!r} lists unknown rows {missing}")
            missing = sorted(set(t.columns) - {spec_name(c) for c in self.columns})
            if missing:
                raise ValueError(f"table {t.title!r} lists columns {missing} that are not in the experiment")
        self.meta_config()  # fail early on a bad key
        self.fewshot_config(self.rows[0], self.seeds[0]) if self.rows else None

    @property
    def columns(self) -> tuple[str, ...]:
        return self.datasets if self.protocol == "base2new" else self.targets

    def used_variants(self) -> set[str]:
        return {r.variant for r in self.rows if r.variant is not None}

    def meta_config(self, variant: Variant | None = None) -> MetaConfig:
        merged = _merge(self.meta, variant.meta) if variant is not None else self.meta
        return build(MetaConfig, merged, "meta")

    def fewshot_config(self, row: Row, seed: int, init: str | None = None) -> FewShotConfig:
        shared = dict(self.fewshot)
        for key in ("method", "label", "shots", "seed", "init", "regulator", "prompt", "init_seed"):
            if key in shared:
                raise ConfigError(f"fewshot.{key} is set per row or per experiment, not under 'fewshot'")
        extra = {"init_seed": row.init_seed} if row.init_seed is not None else {}
        fs = build(FewShotConfig, {**shared, "method": row.method, "label": row.label, "shots": self.shots,
                                   "seed": seed, "init": init or row.init, "regulator": row.regulator, **extra},
                   "fewshot")
        fs.prompt = row.prompt
        return fs

    def tables_or_default(self) -> tuple[Table, ...]:
        return self.tables or (Table(self.description or self.name),)


# --------------------------------------------------------------------------- loading


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        return _VAR.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) if m.group(2) is not None else
                                                                 _missing_var(m.group(1))), value)
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def _missing_var(name: str) -> str:
    raise ConfigError(f"environment variable {name} is not set (the config uses ${{{name}}})")


def packaged_configs() -> Path:
    """The configs shipped with the package (``configs/`` in the repository is a link to it)."""
    return Path(str(resources.files("gramprompt") / "configs"))


def resolve_path(ref: str | os.PathLike) -> Path:
    """A config file path, or a packaged config's name such as ``offline/base2new``."""
    path = Path(ref)
    if path.is_file():
        return path
    for candidate in (packaged_configs() / ref, packaged_configs() / f"{ref}.yaml"):
        if candidate.is_file():
            return candidate
    names = sorted(str(p.relative_to(packaged_configs()).with_suffix(""))
                   for p in packaged_configs().rglob("*.yaml") if not p.name.startswith("_"))
    raise ConfigError(f"no config {ref!r}: not a file, nor a packaged config ({', '.join(names)})")


def read_raw(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The YAML with its ``extends`` chain merged (paths relative to the file that names them)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"extends cycle: {' -> '.join(map(str, (*seen, path)))}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    parents = data.pop("extends", [])
    merged: dict = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        merged = _merge(merged, read_raw(path.parent / parent, (*seen, path)))
    return _merge(merged, data)


def apply_override(data: dict, assignment: str) -> dict:
    """``a.b.c=value`` (value parsed as YAML) onto a raw config."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {assignment!r} is not KEY=VALUE (e.g. seeds=[1] or fewshot.tune.epochs=2)")
    value = yaml.safe_load(text)
    for part in reversed(key.split(".")):
        value = {part: value}
    return _merge(data, value)


def load_experiment(ref: str | os.PathLike, overrides: typing.Sequence[str] = ()) -> Experiment:
    """Read, merge, override, expand and check a config."""
    path = resolve_path(ref)
    data = read_raw(path)
    for assignment in overrides:
        data = apply_override(data, assignment)
    data = _expand(data)
    data.setdefault("name", path.stem)
    data["source_file"] = str(path)
    data["rows"] = [_row(r, path) for r in data.get("rows", [])]
    data["variants"] = {n: build(Variant, v, f"variants.{n}") for n, v in (data.get("variants") or {}).items()}
    data["tables"] = [build(Table, t, "tables") for t in data.get("tables", [])]
    try:
        return build(Experiment, data, str(path))
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{path}: {err}") from err


def _row(data: Any, path: Path) -> Row:
    if not isinstance(data, dict) or "label" not in data or "method" not in data:
        raise ConfigError(f"{path}: each row needs 'label' and 'method', got {data!r}")
    row = build(Row, data, f"rows.{data['label']}")
    return row if row.title else dataclasses.replace(row, title=row.label)
