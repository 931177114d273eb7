"""The CHC output: every pair's topic and visual domain, the topic table, and how to read them back.

Folder layout::

    hierarchy.parquet  key, row (in the feature store), source, status, kept, topic, word, domain
    topics.json        per topic: id, word (the class name), top words with Eq. 3 scores, size,
                       domain sizes
    config.json        the CHCConfig, the pair source, the backbone, the feature store and counts

``status`` is ``kept``, ``filtered`` (noisy pair), or ``noise`` (HDBSCAN noise, dropped); only
kept pairs have a topic and a domain (-1 otherwise).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gramprompt.chc.store import FeatureStore, StoreError

STATUS = ("kept", "filtered", "noise")


@dataclass
class Topic:
    id: int
    word: str
    top_words: list[tuple[str, float]]
    size: int
    domains: list[int]  # pairs per domain, domain 0 first (largest)


@dataclass
class Hierarchy:
    keys: list[str]
    rows: np.ndarray  # global row id in the feature store
    sources: list[str]
    status: list[str]
    topic: np.ndarray  # -1 unless kept
    domain: np.ndarray  # -1 unless kept
    topics: list[Topic]
    info: dict[str, Any]  # config, pair source, backbone, feature store path, counts
    _checked: bool = field(default=False, repr=False, compare=False)  # store() has checked the store's keys

    @property
    def kept(self) -> np.ndarray:
        return self.topic >= 0

    @property
    def features_dir(self) -> Path:
        return Path(self.info["features"])

    def store(self) -> FeatureStore:
        """The feature store the hierarchy was made from, checked to hold its pairs at its rows (shards
        swapped, replaced or re-extracted otherwise would silently pair other features with these topics)."""
        store = FeatureStore(self.features_dir)
        if not self._checked:
            keys = store.column("key")
            bad = next((i for i, (r, k) in enumerate(zip(self.rows.tolist(), self.keys, strict=True))
                        if not 0 <= r < len(keys) or keys[r] != k), None)
            if bad is not None:
                r = int(self.rows[bad])
                found = keys[r] if 0 <= r < len(keys) else "no such row"
                raise StoreError(f"the feature store {store.root} does not hold this hierarchy's pairs: row {r} is "
                                 f"{found!r} there, {self.keys[bad]!r} in the hierarchy (shards swapped or extracted "
                                 "again?); rerun gram chc on it")
            self._checked = True
        return store

    def class_names(self) -> list[str]:
        return [t.word for t in self.topics]

    def save(self, out: str | os.PathLike) -> None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        words = [self.topics[t].word if t >= 0 else None for t in self.topic.tolist()]
        table = pa.table({"key": pa.array(self.keys, pa.string()), "row": pa.array(self.rows, pa.int64()),
                          "source": pa.array(self.sources, pa.string()),
                          "status": pa.array(self.status, pa.string()), "kept": pa.array(self.kept),
                          "topic": pa.array(self.topic, pa.int32()), "word": pa.array(words, pa.string()),
                          "domain": pa.array(self.domain, pa.int32())})
        _atomic(out / "hierarchy.parquet", lambda p: pq.write_table(table, p))
        _atomic(out / "topics.json", lambda p: p.write_text(json.dumps([asdict(t) for t in self.topics], indent=1)))
        _atomic(out / "config.json", lambda p: p.write_text(json.dumps(self.info, indent=1, sort_keys=True)))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Hierarchy:
        folder = Path(folder)
        if not (folder / "hierarchy.parquet").exists():
            raise FileNotFoundError(f"{folder} holds no hierarchy.parquet (run `gram chc` first)")
        t = pq.read_table(folder / "hierarchy.parquet")
        topics = [Topic(d["id"], d["word"], [tuple(w) for w in d["top_words"]], d["size"], d["domains"])
                  for d in json.loads((folder / "topics.json").read_text())]
        return cls(t.column("key").to_pylist(), t.column("row").to_numpy(), t.column("source").to_pylist(),
                   t.column("status").to_pylist(), t.column("topic").to_numpy().astype(np.int64),
                   t.column("domain").to_numpy().astype(np.int64), topics,
                   json.loads((folder / "config.json").read_text()))


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)
