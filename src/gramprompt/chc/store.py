"""Row-aligned sharded feature arrays + parquet metadata, the on-disk hand-off between CHC stages.

Layout (DESIGN section 5), one file of each kind per pair-source shard ``i``::

    img_emb/img_emb_{i:05d}.npy       (n_i, D) frozen image features, L2-normalized
    text_emb/text_emb_{i:05d}.npy     (n_i, d) caption (Sentence-BERT) embeddings, L2-normalized
    metadata/metadata_{i:05d}.parquet key, caption, source, sim, meta (JSON); the shard's skip
                                      counts in the file's key-value metadata
    stem_emb/stem_emb_{i:05d}.npy     optional (n_i, S) float16 cacheable image stems (backbones
                                      with ``cache_stems``), so visual-prompt meta-training need
                                      not decode the images again

Row r of every file of shard i is the same pair. The parquet file is written last and atomically,
so a shard is complete exactly when its metadata file exists: that is what makes extraction
resumable shard by shard, from any process or machine.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

COLUMNS = ("key", "caption", "source", "sim", "meta")
_SHARD = re.compile(r"metadata_(\d+)\.parquet$")


class StoreError(ValueError):
    """A feature store is missing, incomplete or inconsistent."""


def shard_paths(root: Path, index: int) -> dict[str, Path]:
    return {"img": root / "img_emb" / f"img_emb_{index:05d}.npy",
            "text": root / "text_emb" / f"text_emb_{index:05d}.npy",
            "stem": root / "stem_emb" / f"stem_emb_{index:05d}.npy",
            "meta": root / "metadata" / f"metadata_{index:05d}.parquet"}


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def write_shard(root: str | os.PathLike, index: int, image: np.ndarray, text: np.ndarray,
                rows: dict[str, Sequence], counts: dict[str, int], stems: np.ndarray | None = None) -> None:
    """Write one complete shard: arrays first, the metadata file (the completion mark) last."""
    root = Path(root)
    n = len(rows["key"])
    if (image.shape[0] != n or text.shape[0] != n or any(len(rows[c]) != n for c in COLUMNS)
            or (stems is not None and stems.shape[0] != n)):
        raise StoreError(f"shard {index}: rows are not aligned ({image.shape[0]}, {text.shape[0]}, {n})")
    paths = shard_paths(root, index)
    _atomic_save_npy(paths["img"], image)
    _atomic_save_npy(paths["text"], text)
    if stems is not None:
        _atomic_save_npy(paths["stem"], stems)
    table = pa.table({"key": pa.array(rows["key"], pa.string()),
                      "caption": pa.array(rows["caption"], pa.string()),
                      "source": pa.array(rows["source"], pa.string()),
                      "sim": pa.array(rows["sim"], pa.float32()),
                      "meta": pa.array(rows["meta"], pa.string())})
    table = table.replace_schema_metadata({"counts": json.dumps(counts, sort_keys=True),
                                           "digests": json.dumps({"img": array_digest(image), "text": array_digest(text)})})
    paths["meta"].parent.mkdir(parents=True, exist_ok=True)
    tmp = paths["meta"].with_name(paths["meta"].name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, paths["meta"])


def array_digest(array: np.ndarray) -> str:
    """Of an array's dtype, shape and values: what the metadata file records of the arrays beside it."""
    array = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    h.update(array.tobytes())
    return h.hexdigest()


def _file_metadata(root: Path, index: int) -> dict[bytes, bytes]:
    path = shard_paths(root, index)["meta"]
    try:
        return pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException) as err:
        raise StoreError(f"{path} is damaged ({' '.join(str(err).split())}): delete the shard's files to extract "
                         "it again") from None


def shard_counts(root: str | os.PathLike, index: int) -> dict[str, int]:
    """A complete shard's counts (pairs kept, and what the source and extraction skipped)."""
    return json.loads(_file_metadata(Path(root), index).get(b"counts", b"{}"))


def holds_shards(root: str | os.PathLike) -> bool:
    """Whether ``root`` holds any shard file, complete or not (a killed run's arrays included)."""
    return any(p.is_file() for kind in ("img", "text", "stem", "meta")
               for p in shard_paths(Path(root), 0)[kind].parent.glob("*"))


@dataclass(frozen=True)
class ShardInfo:
    index: int
    rows: int
    offset: int  # global row index of this shard's first row


class FeatureStore:
    """Read access to a complete store; global row ids run over shards in index order.

    ``FeatureStore.open(root)`` reuses one instance per process while the shard files stay the
    same (workers run many jobs on one store and would otherwise re-read every shard's parquet
    footer per job)."""

    _open: dict[tuple, FeatureStore] = {}

    @classmethod
    def open(cls, root: str | os.PathLike) -> FeatureStore:
        folder = Path(root).resolve() / "metadata"
        key = (str(folder), tuple(sorted(os.listdir(folder))) if folder.is_dir() else ())
        if key not in cls._open:
            cls._open.clear()
            cls._open[key] = cls(root)
        return cls._open[key]

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        indices = sorted(int(m.group(1)) for p in (self.root / "metadata").glob("metadata_*.parquet")
                         if (m := _SHARD.search(p.name)))
        if not indices:
            raise StoreError(f"no feature shards in {self.root} (run the features stage first)")
        shards, offset = [], 0
        for i in indices:
            try:
                rows = pq.ParquetFile(shard_paths(self.root, i)["meta"]).metadata.num_rows
            except (OSError, pa.ArrowException) as err:
                raise StoreError(f"{shard_paths(self.root, i)['meta']} is damaged ({' '.join(str(err).split())}): "
                                 "delete the shard's files to extract it again") from None
            shards.append(ShardInfo(i, rows, offset))
            offset += rows
        self.shards: list[ShardInfo] = shards
        self.num_rows = offset
        self._verified: set[tuple[str, int]] = set()

    def __len__(self) -> int:
        return self.num_rows

    def has(self, kind: str) -> bool:
        """Whether every shard holds ``kind`` (stems are optional)."""
        return all(shard_paths(self.root, s.index)[kind].exists() for s in self.shards)

    def array(self, kind: str, index: int) -> np.ndarray:
        """``kind`` is "img", "text" or "stem"; memory-mapped, so only the rows touched are read. The first
        time a process reads a shard's image or text features they are checked against the digests its
        metadata file recorded (stores written since it does), so a swapped or replaced file is an error,
        not features of other pairs."""
        path = shard_paths(self.root, index)[kind]
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError, EOFError) as err:
            raise StoreError(f"{path} is damaged or missing ({' '.join(str(err).split())}): delete the shard's "
                             "files to extract it again") from None
        info = next(s for s in self.shards if s.index == index)
        if arr.shape[0] != info.rows:
            raise StoreError(f"shard {index}: {kind} has {arr.shape[0]} rows, metadata {info.rows}")
        if kind in ("img", "text") and (kind, index) not in self._verified:
            recorded = json.loads(_file_metadata(self.root, index).get(b"digests", b"{}")).get(kind)
            if recorded is not None and array_digest(np.asarray(arr)) != recorded:
                raise StoreError(f"{path} is not the array its shard's metadata was written with (files swapped "
                                 f"or replaced?): delete the shard's files to extract it again")
            self._verified.add((kind, index))
        return arr

    def dim(self, kind: str) -> int:
        return int(self.array(kind, self.shards[0].index).shape[1])

    def metadata(self, index: int, columns: Sequence[str] | None = None) -> pa.Table:
        return pq.read_table(shard_paths(self.root, index)["meta"], columns=list(columns) if columns else None)

    def column(self, name: str) -> list:
        """One metadata column over all shards (keys, captions: small next to the arrays)."""
        return [v for s in self.shards for v in self.metadata(s.index, [name]).column(name).to_pylist()]

    def counts(self) -> dict[str, int]:
        """Skip counts summed over shards."""
        total: Counter[str] = Counter()
        for s in self.shards:
            total.update(shard_counts(self.root, s.index))
        return dict(sorted(total.items()))

    def chunks(self, kind: str, chunk_rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """(global offset, rows) blocks of ``kind`` in row order, at most ``chunk_rows`` each."""
        for s in self.shards:
            arr = self.array(kind, s.index)
            for start in range(0, s.rows, chunk_rows):
                yield s.offset + start, np.asarray(arr[start:start + chunk_rows], dtype=np.float32)

    def gather(self, kind: str, rows: np.ndarray) -> np.ndarray:
        """The given global rows of ``kind`` (float32), in the order given."""
        rows = np.asarray(rows, dtype=np.int64)
        bad = rows[(rows < 0) | (rows >= self.num_rows)]
        if len(bad):
            raise StoreError(f"rows {bad[:5].tolist()} are outside the {self.num_rows} rows of the feature store "
                             f"{self.root} (a hierarchy made from another store?)")
        out = np.empty((len(rows), self.dim(kind)), dtype=np.float32)
        starts = np.array([s.offset for s in self.shards])
        shard_of = np.searchsorted(starts, rows, side="right") - 1
        for j in np.unique(shard_of):
            s = self.shards[j]
            where = np.flatnonzero(shard_of == j)
            local = rows[where] - s.offset
            order = np.argsort(local)
            out[where[order]] = self.array(kind, s.index)[local[order]]
        return out
