"""Run folders: the on-disk record of one training/evaluation run.

Layout of a run directory::

    config.yaml          resolved config, written once at start
    metrics.jsonl        one JSON object per logged step (append-only, survives a kill)
    prompts.safetensors  learned prompt tensors (+ metadata under the "gramprompt" key)
    prompts.json         the same metadata as a readable sidecar
    summary.json         final results; its presence marks the run as finished

A folder holds one run. :meth:`RunDir.create` refuses a folder that holds another run (other
settings, or run files without a config) unless told to overwrite it, and never leaves an old
``summary.json`` or old prompts beside a new run: a run with the same settings is resumed (when the
caller can resume) or its outputs are removed before it is redone.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import GramError, RunFolderError

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
PROMPTS = "prompts.safetensors"
PROMPTS_META = "prompts.json"
META_KEY = "gramprompt"
# what runs write into their folder (meta-training adds its checkpoint folders and gram.safetensors);
# other files (e.g. the experiment runner's stage.yaml) are left alone
RUN_FILES = (SUMMARY, CONFIG, METRICS, PROMPTS, PROMPTS_META, "gram.safetensors", "checkpoint", "checkpoint.old",
             "checkpoint.tmp")


def _plain(obj: Any) -> Any:
    """Convert values yaml/json cannot represent (paths, tensors, numpy scalars) to plain ones."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist") and callable(obj.tolist):  # torch.Tensor, np.ndarray, np scalars
        return obj.tolist()
    return obj


def flat_settings(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested settings as {dotted.key: value}, so settings compare key by key (an option added to a nested
    config since they were recorded shows as one missing key)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flat_settings(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _atomic_write(path: Path, write: Any) -> None:
    """Write via a temp file in the same dir + os.replace, so readers never see a partial file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_text(path: Path, text: str) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    _atomic_write(path, write)


@dataclass(frozen=True)
class RunDir:
    """Handle on one run folder; cheap to construct, all state lives on disk."""

    path: Path

    @classmethod
    def create(cls, path: str | os.PathLike, config: dict, *, resume: bool = False, overwrite: bool = False,
               may_differ: Iterable[str] = ()) -> RunDir:
        """Make the folder (parents too) and record the resolved config.

        A folder that already holds this run (the same config, up to the dotted keys ``may_differ``)
        is kept as it is with ``resume`` (the caller continues from its checkpoint), else its outputs are
        removed and the run is redone. A folder holding another run is an error unless ``overwrite``."""
        run = cls(Path(path))
        config = _plain(config)
        if run.path.exists() and not run.path.is_dir():
            raise RunFolderError(f"--out {run.path} is a file, not a folder")
        held = [p.name for p in run.path.iterdir() if p.name in RUN_FILES] if run.path.is_dir() else []
        if held == [CONFIG]:  # a run that failed before writing anything: nothing to keep or mix
            held = []
        if held and not overwrite:
            diff = run._differences(config, set(may_differ))
            if diff:
                raise RunFolderError(f"{run.path} holds another run ({diff}); use another --out, or --overwrite "
                                     "to replace it")
        if held and not (resume and not overwrite):
            run.clear()
        try:
            run.path.mkdir(parents=True, exist_ok=True)
            _atomic_text(run.path / CONFIG, yaml.safe_dump(config, sort_keys=False))
        except OSError as err:
            raise RunFolderError(f"cannot write the run folder {run.path}: {err.strerror or err}") from err
        return run

    def _differences(self, config: dict, may_differ: set[str]) -> str:
        """Why the folder's run is another run ('' when it is this one)."""
        if not (self.path / CONFIG).is_file():
            return "run files without a config.yaml"
        try:
            stored = self.config
        except (OSError, yaml.YAMLError) as err:
            return f"an unreadable config.yaml: {err}"
        old, new = flat_settings(stored), flat_settings(config)
        # a key missing on disk whose value is now None is an option added since, left unset: the same run
        keys = sorted(k for k in old.keys() | new.keys()
                      if k not in may_differ and old.get(k) != new.get(k) and not (k not in old and new[k] is None))
        if not keys:
            return ""
        shown = ", ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in keys[:3])
        return f"other settings: {shown}" + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    def clear(self) -> None:
        """Remove the run's outputs, summary first: a kill midway leaves an unfinished run, never a stale result."""
        for name in RUN_FILES:
            target = self.path / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()

    @property
    def config(self) -> dict:
        with open(self.path / CONFIG, encoding="utf-8") as f:
            return yaml.safe_load(f) or {}

    def log(self, record: dict) -> None:
        """Append one JSON line; opened per call and flushed so a killed run keeps its log."""
        line = json.dumps(_plain(record), sort_keys=False)
        with open(self.path / METRICS, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()

    def keep_metrics(self, keep) -> None:
        """Rewrite the log with only the records ``keep(record)`` accepts (a resumed run redoing steps)."""
        records = self.read_metrics()
        kept = [r for r in records if keep(r)]
        if len(kept) < len(records):
            _atomic_text(self.path / METRICS, "".join(json.dumps(_plain(r)) + "\n" for r in kept))

    def read_metrics(self) -> list[dict]:
        """Logged records in order; a torn final line (from a kill mid-write) is skipped."""
        path = self.path / METRICS
        if not path.exists():
            return []
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def write_summary(self, summary: dict) -> None:
        _atomic_text(self.path / SUMMARY, json.dumps(_plain(summary), indent=2) + "\n")

    def read_summary(self) -> dict:
        return read_summary(self.path)

    @property
    def finished(self) -> bool:
        return is_finished(self.path)

    def save_prompts(self, params: dict[str, torch.Tensor], metadata: dict) -> Path:
        return save_prompts(self.path / PROMPTS, params, metadata)

    def load_prompts(self) -> tuple[dict[str, torch.Tensor], dict]:
        return load_prompts(self.path)


def save_prompts(path: str | os.PathLike, params: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Write prompt tensors to ``path`` (a .safetensors file) plus a ``prompts.json`` sidecar.

    Tensors are detached, moved to CPU and cloned contiguous: safetensors refuses views that
    share storage. Its metadata must be str->str, so ``metadata`` is embedded as one JSON string.
    """
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in params.items()}
    meta_json = json.dumps(_plain(metadata))
    _atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={META_KEY: meta_json}))
    _atomic_text(path.parent / PROMPTS_META, json.dumps(_plain(metadata), indent=2) + "\n")
    return path


def load_prompts(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Load ``(tensors, metadata)`` from a .safetensors file or a run dir containing one.

    Metadata comes from inside the file (it travels with the tensors); the sidecar is a fallback.
    """
    path = Path(path)
    if path.is_dir():
        path = path / PROMPTS
    if not path.is_file():
        raise FileNotFoundError(f"no prompts file {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            embedded = (f.metadata() or {}).get(META_KEY)
        if embedded is not None:
            return tensors, json.loads(embedded)
    except (SafetensorError, json.JSONDecodeError, OSError) as err:
        raise GramError(f"{path} is not a readable prompts file (damaged or truncated?): {err}") from err
    sidecar = path.parent / PROMPTS_META
    return tensors, json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.exists() else {}


def _summary_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / SUMMARY if path.is_dir() else path


def read_summary(path: str | os.PathLike) -> dict:
    """Read ``summary.json`` given the run dir or the file itself."""
    with open(_summary_path(path), encoding="utf-8") as f:
        return json.load(f)


def is_finished(path: str | os.PathLike) -> bool:
    """A run is finished once its summary exists (written last, atomically)."""
    return (Path(path) / SUMMARY).is_file()
