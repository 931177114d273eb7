"""Which settings made each stage's files, so that a rerun never mixes stages made differently.

The feature store and the ``topics`` folder each get a ``settings.json`` before their first file.
A rerun with the same settings resumes or reuses them; a rerun with settings they depend on changed
is refused, naming the differences and what to delete, rather than silently returning results
made otherwise (while config.json claimed the new settings). Nothing is deleted automatically: a
typo must not cost hours of feature extraction. The cluster stage (topic words, domains, the
hierarchy files) is redone on every run, so its settings need no record.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gramprompt.backbones.registry import backbone_name
from gramprompt.chc.config import WORD_SETTINGS, CHCConfig
from gramprompt.errors import GramError
from gramprompt.runs import flat_settings

SETTINGS_FILE = "settings.json"


def feature_settings(pairs: str, backbone: str, cfg: CHCConfig) -> dict[str, Any]:
    """What the stored features depend on, the shard layout included (another ``shard_size`` would
    cut the pairs differently and repeat some). The batch size and shard reuse are left out
    (``FeatureConfig.recorded``): they set speed and memory, not what is computed, and must stay free to change
    on a resume (e.g. after running out of memory)."""
    return {"pairs": pairs, "backbone": backbone_name(backbone), "shard_size": cfg.shard_size,
            "features": cfg.features.recorded()}


def topic_settings(store, cfg: CHCConfig, reducer=None, clusterer=None) -> dict[str, Any]:
    """What the fitted topic model and the raw labels depend on: the features (their record and
    shard layout), the noisy-pair filter, the seed, every topic setting but the topic words', and a
    plugged-in reducer or clusterer."""
    topics = {k: v for k, v in asdict(cfg.topics).items() if k not in WORD_SETTINGS}
    return {"features": read_settings(store.root), "shards": [[s.index, s.rows] for s in store.shards],
            "filter": asdict(cfg.filter), "topics": topics, "seed": cfg.seed,
            "reducer": _type_name(reducer), "clusterer": _type_name(clusterer)}


def _type_name(obj) -> str | None:
    return None if obj is None else f"{type(obj).__module__}.{type(obj).__qualname__}"


def read_settings(folder: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(folder) / SETTINGS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def claim(folder: Path, settings: dict[str, Any], made: bool, redo: str) -> None:
    """Tie ``folder`` to ``settings``: record them while it holds no result yet, else refuse others.

    ``made`` says whether the folder holds results (complete or not); results without a record (an
    older ``gram chc``, or files copied in) cannot be checked and are refused too. Without results
    there is nothing to protect, so a failed start (a typo) never blocks the corrected command.
    ``redo`` tells the user how to start over."""
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as they read back
    recorded = read_settings(folder)
    if not made:
        if recorded != settings:
            _write(folder / SETTINGS_FILE, settings)
        return
    if recorded is None:
        raise GramError(f"{folder} holds results but no {SETTINGS_FILE} saying which settings made them "
                        f"(an older gram chc?): {redo}")
    if recorded != settings:
        raise GramError(f"{folder} was made with other settings ({_differences(recorded, settings)}): "
                        f"rerun with those to resume, or {redo}")


def _write(path: Path, settings: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(settings, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _differences(recorded: dict[str, Any], settings: dict[str, Any]) -> str:
    old, new = flat_settings(recorded), flat_settings(settings)
    keys = [k for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k)]
    return "; ".join(f"{k}: {_short(old.get(k))} on disk, {_short(new.get(k))} now" for k in keys)
