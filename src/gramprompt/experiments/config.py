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

from ..backbones.registry import DTYPES
from ..chc.config import CHCConfig
from ..data.dataset import DatasetError
from ..data.registry import parse_spec, spec_name
from ..eval.protocols import FewShotConfig
from ..meta.trainer import MetaConfig
from ..prompts import METHODS, PromptConfig

PROTOCOLS = ("base2new", "transfer")
# names that become folders under an experiment's root (and file names): no separator, no "..", no hidden file
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@=-]*")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """An experiment config is malformed. It lists every problem found (each naming its key), so that
    one ``gram experiment plan`` shows all there is to fix."""

    def __init__(self, *problems: str, where: str = ""):
        self.problems = problems
        text = problems[0] if len(problems) == 1 else f"{len(problems)} problems:" + "".join(
            f"\n  - {p}" for p in problems)
        super().__init__(f"{where}: {text}" if where else text)


def _gather(items: typing.Iterable[tuple[str, typing.Callable[[], Any]]]) -> tuple[dict[str, Any], list[str]]:
    """Call each maker and keep going past ConfigErrors: their results by key, and every problem."""
    results, problems = {}, []
    for key, make in items:
        try:
            results[key] = make()
        except ConfigError as err:
            problems += err.problems
    return results, list(dict.fromkeys(problems))  # shared settings checked per row or variant: once


def _all(items: typing.Iterable[tuple[str, typing.Callable[[], Any]]]) -> dict[str, Any]:
    """:func:`_gather` that raises every problem at once."""
    results, problems = _gather(items)
    if problems:
        raise ConfigError(*problems)
    return results


# --------------------------------------------------------------------------- dataclasses from dicts


def build(cls: type, data: Any, where: str = "") -> Any:
    """``cls(**data)``, recursively for nested dataclasses (also inside lists and mappings), with every
    value checked against its field's type: each unknown or missing key and each value of the wrong
    type is reported, all at once, as one ConfigError rather than a traceback later in a job."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(_at(where, f"expected a mapping, got {data!r}"))
    fields = {f.name: f for f in dataclasses.fields(cls)}
    problems = []
    unknown = sorted(str(k) for k in data if k not in fields)
    if unknown:
        problems.append(_at(where, f"unknown key(s) {unknown}; known: {sorted(fields)}"))
    missing = [n for n, f in fields.items() if n not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        problems.append(_at(where, f"missing key(s) {missing}"))
    hints = typing.get_type_hints(cls)
    kwargs, wrong = _gather((name, lambda name=name: _convert(data[name], hints[name], _key(where, name)))
                            for name in data if name in fields)
    if problems or wrong:
        raise ConfigError(*problems, *wrong)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(_at(where, str(err))) from err


def _convert(value: Any, hint: Any, where: str) -> Any:
    """YAML data -> a value of type ``hint``: mappings become dataclasses, lists tuples (item by item),
    and a string that spells a number a float (YAML 1.1 reads ``1e-3`` as a string)."""
    for option in _options(hint):
        kind, args = typing.get_origin(option) or option, typing.get_args(option)
        if dataclasses.is_dataclass(option) and isinstance(value, dict):
            return build(option, value, where)
        if kind is tuple and args and isinstance(value, (list, tuple)):  # tuple[X, ...]
            return tuple(_all((str(i), lambda v=v, i=i: _convert(v, args[0], f"{where}[{i}]"))
                              for i, v in enumerate(value)).values())
        if kind is dict and args and isinstance(value, dict):
            return _all((k, lambda v=v, k=k: _convert(v, args[1], _key(where, k))) for k, v in value.items())
        if option is float and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if _is_a(value, option):
            return value
    raise ConfigError(f"{where}: expected {_describe(hint)}, got {value!r}")


def _is_a(value: Any, option: Any) -> bool:
    if option is float:  # an int is a float here, a bool is neither
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if option is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, typing.get_origin(option) or option)


def _describe(hint: Any) -> str:
    """A type as the YAML author sees it: ``int or null``, ``a mapping``, ``a list``."""
    return " or ".join(map(_describe_one, _options(hint)))


def _describe_one(option: Any) -> str:
    kind = typing.get_origin(option) or option
    if dataclasses.is_dataclass(option) or kind is dict:
        return "a mapping"
    return "a list" if kind is tuple else "null" if option is type(None) else option.__name__


def _key(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _at(where: str, text: str) -> str:
    return f"{where}: {text}" if where else text


def _options(hint: Any) -> tuple:
    return typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)


# --------------------------------------------------------------------------- dataset specs


def spec_problem(spec: str) -> str | None:
    """Why ``spec`` names no dataset, judged by its form as ``load_dataset`` reads it (nothing is loaded);
    None when it may."""
    try:
        parse_spec(spec)
    except DatasetError as err:
        return str(err)
    return None


def spec_path(spec: str) -> Path | None:
    """The local folder a well-formed spec reads: an image folder or a CoOp data root."""
    kind, fields = parse_spec(spec)
    if kind == "val":
        return spec_path(fields[0])
    return Path(fields[-1]) if kind in ("imagefolder", "coop") else None


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
    compare: tuple[str, ...] = ()  # labels of the rows this one is tested against (paired H difference, 95% interval)
    fewshot: dict = field(default_factory=dict)  # this row's changes to the experiment's fewshot settings, e.g.
    # {tune: {lr_scale: {visual: 0.3}}}; merged into them key by key

    def __post_init__(self) -> None:
        if not self.title:
            object.__setattr__(self, "title", self.label)  # frozen


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
    # CHC clustering seeds (they replace chc.seed): one hierarchy each, and every GRAM row is run on
    # each, so a table shows how much a result depends on the clustering. () = the one chc.seed
    seeds: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if (self.pairs is None) == (self.path is None):
            raise ValueError("hierarchy needs exactly one of 'pairs' (run CHC) and 'path' (an existing one)")
        if self.seeds and self.path is not None:
            raise ValueError("hierarchy.seeds makes one hierarchy per seed from 'pairs'; 'path' names one")
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ValueError(f"hierarchy.seeds must be distinct and >= 0, got {list(self.seeds)}")

    def chc_config(self, seed: int | None = None) -> CHCConfig:
        """The CHC settings of the hierarchy of clustering ``seed`` (default: the first)."""
        cfg = build(CHCConfig, self.chc, "hierarchy.chc")
        seed = self.seeds[0] if seed is None and self.seeds else seed
        if seed is not None:
            cfg.seed = seed
        return cfg

    def all_seeds(self) -> tuple[int, ...]:
        """The clustering seed of every hierarchy; the first one's folder also holds the shared features."""
        return self.seeds or (self.chc_config().seed,)


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
        problems = self.problems()
        if problems:
            raise ConfigError(*problems)

    def problems(self) -> list[str]:
        """What is wrong beyond the value types, found without loading any data, so that ``plan`` lists
        it all and ``run`` starts no job of a config that would fail halfway."""
        return [*self._structure_problems(), *self._name_problems(), *self._settings_problems()]

    def _structure_problems(self) -> list[str]:
        out = []
        if self.protocol not in PROTOCOLS:
            out.append(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.protocol == "base2new" and not self.datasets:
            out.append("a base2new experiment needs 'datasets'")
        if self.protocol == "transfer" and not (self.source and self.targets):
            out.append("a transfer experiment needs 'source' and 'targets'")
        if not self.seeds:
            out.append("seeds: needs at least one seed")
        if any(s < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            out.append(f"seeds must be distinct and >= 0, got {list(self.seeds)}")
        if self.dtype not in DTYPES:
            out.append(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        labels = [r.label for r in self.rows]
        if len(set(labels)) != len(labels):
            out.append(f"duplicate row labels in {labels}")
        out += [f"row {r.label!r} uses variant {r.variant!r}, not among {sorted(self.variants)}"
                for r in self.rows if r.variant is not None and r.variant not in self.variants]
        out += [f"row {r.label!r} compares with unknown row {c!r} (rows: {labels})"
                for r in self.rows for c in r.compare if c not in labels or c == r.label]
        needs_chc = [n for n, v in self.variants.items() if not (v.supervised or v.checkpoint)]
        if self.used_variants() & set(needs_chc) and self.hierarchy is None:
            out.append(f"variant(s) {needs_chc} are meta-trained on a CHC hierarchy: add 'hierarchy'")
        for t in self.tables:
            unknown = sorted(set(t.rows) - set(labels))
            if unknown:
                out.append(f"table {t.title!r} lists unknown rows {unknown}")
            missing = sorted(set(t.columns) - {spec_name(c) for c in self.columns})
            if missing:
                out.append(f"table {t.title!r} lists columns {missing} that are not in the experiment")
        return out

    def _name_problems(self) -> list[str]:
        """Unknown prompt methods, dataset specs that cannot name a dataset, and names that become folders
        under ``root`` but could leave it or share one folder."""
        valid = ", ".join(METHODS)
        out = [f"{what} {name!r} is used as a folder name: use letters, digits and . _ + @ = - only (no path "
               "separators, no leading dot)" for what, name in self._folder_names() if not SAFE_NAME.fullmatch(name)]
        folders = [spec_name(c) for c in self.columns]
        out += [f"datasets {[c for c in self.columns if spec_name(c) == f]} would share the run folder {f!r}: give "
                "one of them another folder name (e.g. rename its directory)" for f in sorted(set(folders))
                if folders.count(f) > 1]
        out += [f"row {r.label!r}: unknown method {r.method!r} (valid: {valid})"
                for r in self.rows if r.method not in METHODS]
        out += [f"variant {n!r}: unknown method {v.method!r} (valid: {valid})"
                for n, v in self.variants.items() if v.method not in METHODS]
        return out + [f"{key}: {spec!r}: {why}" for key, spec in self._dataset_specs(self.variants)
                      if (why := spec_problem(spec)) is not None]

    def _folder_names(self) -> list[tuple[str, str]]:
        return [("name", self.name), ("group", self.group), *(("row label", r.label) for r in self.rows),
                *(("variant", v) for v in self.variants), *(("dataset folder", spec_name(c)) for c in (*self.columns, *([self.source] if self.source else []))
                  if spec_problem(c) is None)]  # a spec that names no dataset is reported as such

    def _settings_problems(self) -> list[str]:
        """The settings each job builds its config from: few-shot per row, CHC, meta-training per variant."""
        makers = [(r.label, lambda r=r: self.fewshot_config(r, 0)) for r in self.rows]  # the seed is not checked
        if self.hierarchy is not None:
            makers.append(("hierarchy", self.hierarchy.chc_config))
        return _gather(makers)[1] + self._meta_problems()

    def _meta_problems(self) -> list[str]:
        """The shared meta settings' problems once, then what each variant's own overrides add."""
        shared = _gather([("meta", self.meta_config)])[1]
        out = []
        for name, variant in self.variants.items():
            own = _gather([(name, lambda v=variant: self.meta_config(v))])[1]
            out += [f"variants.{name}: {p}" for p in own if p not in shared]
        return shared + out

    def _dataset_specs(self, variants: typing.Iterable[str]) -> list[tuple[str, str]]:
        """(key, spec) of every dataset the jobs load: the columns, and the named variants' supervised sets."""
        if self.protocol == "base2new":
            columns = [("datasets", d) for d in self.datasets]
        else:
            columns = [("source", self.source)] * bool(self.source) + [("targets", t) for t in self.targets]
        return columns + [(f"variants.{n}.supervised", self.variants[n].supervised) for n in variants
                          if self.variants[n].supervised]

    def missing_inputs(self) -> list[str]:
        """The local datasets and prompt files the jobs read that do not exist."""
        trained = [n for n in sorted(self.used_variants()) if self.variants[n].checkpoint is None]
        out = [f"{key}: {spec!r} reads {path}, which does not exist" for key, spec in self._dataset_specs(trained)
               if (path := spec_path(spec)) is not None and not path.exists()]
        out += [f"variant {n!r}: checkpoint {self.variants[n].checkpoint} does not exist"
                for n in sorted(self.used_variants()) if self.variants[n].checkpoint
                and not Path(self.variants[n].checkpoint).exists()]
        return out + [f"row {r.label!r}: init {r.init} does not exist" for r in self.rows
                      if r.init and not Path(r.init).exists()]

    def check_inputs(self) -> None:
        """Raise one ConfigError naming every missing input, before any job starts (not at load: the
        tables of finished runs need no data)."""
        missing = self.missing_inputs()
        if missing:
            raise ConfigError(*missing, where=self.source_file)

    @property
    def columns(self) -> tuple[str, ...]:
        return self.datasets if self.protocol == "base2new" else self.targets

    def used_variants(self) -> set[str]:
        return {r.variant for r in self.rows if r.variant is not None}

    def meta_config(self, variant: Variant | None = None) -> MetaConfig:
        merged = _merge(self.meta, variant.meta) if variant is not None else self.meta
        return build(MetaConfig, merged, "meta")

    def fewshot_config(self, row: Row, seed: int, init: str | None = None) -> FewShotConfig:
        shared = _merge(self.fewshot, row.fewshot)
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


# what each environment variable the packaged configs read should hold (docs/REPRODUCE.md)
ENV_VARS = {
    "GRAM_DATA": "the folder holding the 11 datasets in CoOp's layout (imagenet/, caltech-101/, ...; docs/DATASETS.md), "
                 "e.g. export GRAM_DATA=/data",
    "GRAM_RUNS": "where runs go (default runs/)",
    "GRAM_CC3M": "the folder of CC3M's WebDataset shards 00000.tar ... (default /data/cc3m)",
    "GRAM_CLIP": "a Hugging Face CLIP name or local folder (default openai/clip-vit-base-patch16)",
    "GRAM_HIERARCHY": "an existing CHC hierarchy folder (default runs/vit_b16/chc)",
    "GRAM_WEBVISION": "WebVision's training images in class folders (default /data/webvision/train)",
}


def _missing_var(name: str) -> str:
    what = ENV_VARS.get(name)
    raise ConfigError(f"environment variable {name} is not set (the config uses ${{{name}}})"
                      + (f": set it to {what}" if what else ""))


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


MAX_DEPTH = 32  # nesting of configs' mappings and lists; far deeper than any config, far below Python's recursion limit


class _StrictLoader(yaml.SafeLoader):
    """YAML for configs: no anchors or aliases (a kilobyte of nested aliases expands to gigabytes: the
    "billion laughs"; ``extends`` shares settings instead), no duplicate keys (not "the last one wins"),
    and no nesting deeper than ``MAX_DEPTH`` (refused before Python's recursion limit)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "anchors and aliases (*name) are not allowed in configs; "
                                              "use extends to share settings", event.start_mark)
        if self.check_event(yaml.MappingStartEvent, yaml.SequenceStartEvent):
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key].line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


def load_yaml(text: str, where: str) -> Any:
    """A config's YAML (``_StrictLoader``), errors naming ``where``."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML: {err}") from None


def read_raw(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The YAML with its ``extends`` chain merged (paths relative to the file that names them)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"extends cycle: {' -> '.join(map(str, (*seen, path)))}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read it: {err.strerror or err}") from None
    data = load_yaml(text, str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    parents = data.pop("extends", [])
    parents = [parents] if isinstance(parents, str) else parents
    if not isinstance(parents, list) or not all(isinstance(p, str) and p for p in parents):
        raise ConfigError(f"{path}: extends must be a file name or a list of file names, got {parents!r}")
    merged: dict = {}
    for parent in parents:
        merged = _merge(merged, read_raw(path.parent / parent, (*seen, path)))
    return _merge(merged, data)


def apply_override(data: dict, assignment: str) -> dict:
    """``a.b.c=value`` (value parsed as YAML) onto a raw config."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {assignment!r} is not KEY=VALUE (e.g. seeds=[1] or fewshot.tune.epochs=2)")
    try:
        value = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {assignment}: not valid YAML ({' '.join(str(err).split())})") from err
    for part in reversed(key.split(".")):
        value = {part: value}
    return _merge(data, value)


def load_experiment(ref: str | os.PathLike, overrides: typing.Sequence[str] = ()) -> Experiment:
    """Read, merge, override, expand and check a config (every problem at once, see :class:`ConfigError`)."""
    path = resolve_path(ref)
    data = read_raw(path)
    for assignment in overrides:
        data = apply_override(data, assignment)
    data = _expand(data)
    data.setdefault("name", path.stem)
    data["source_file"] = str(path)
    try:
        return build(Experiment, data)
    except ConfigError as err:
        raise ConfigError(*err.problems, where=str(path)) from None
