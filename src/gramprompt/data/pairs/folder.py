"""Image-text pairs from a folder of images plus a captions file (JSONL, CSV or Parquet).

The listing is read once and cut into fixed-size shards in file order, so a shard index
always names the same rows. Rows are only checked here (caption, image file present, key
unique); images are decoded, and corrupt ones counted, by whoever consumes the pairs.
"""
from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gramprompt.data.dataset import DatasetError
from gramprompt.data.pairs.base import ImageTextPair, PairShard, clean_caption

CAPTION_FILES = ("captions.jsonl", "captions.csv", "captions.parquet")
CAPTION_SUFFIXES = (".jsonl", ".csv", ".parquet")
REQUIRED_COLUMNS = ("path", "caption")
# Every shard reports all of these, zeros included, so data cards list the same fields.
FOLDER_COUNT_KEYS = (
    "pairs", "empty_caption", "non_text_caption", "missing_image", "bad_row", "duplicate_key",
)
_RESERVED = {"path", "caption", "key"}


@dataclass(frozen=True)
class _Row:
    """One well-formed listing row; ``duplicate`` marks a key already used by an earlier row."""

    key: str
    path: str
    caption: object
    meta: dict[str, Any] = field(default_factory=dict)
    duplicate: bool = False


def find_captions_file(path: str | os.PathLike) -> Path:
    """The captions file itself, or the single ``captions.{jsonl,csv,parquet}`` in a folder."""
    path = Path(path).expanduser()
    if path.is_file():
        if path.suffix.lower() not in CAPTION_SUFFIXES:
            raise DatasetError(
                f"{path}: captions file must end in {', '.join(CAPTION_SUFFIXES)}")
        return path
    if not path.is_dir():
        raise DatasetError(f"{path}: no such captions file or folder")
    found = [path / name for name in CAPTION_FILES if (path / name).is_file()]
    if len(found) != 1:
        what = "no captions file" if not found else "several captions files"
        raise DatasetError(
            f"{path}: {what}; looked for exactly one of {', '.join(CAPTION_FILES)}"
            + (f" (found {', '.join(p.name for p in found)}; pass one file's path)" if found else ""))
    return found[0]


def _jsonl_records(path: Path) -> Iterator[object]:
    """Parsed lines; a malformed line yields ``None`` (a ``bad_row``) instead of failing.

    The first JSON object is checked like a CSV header: a listing whose objects name their fields
    otherwise (e.g. ``image``/``text``) is an error there, not a file of bad rows."""
    header_seen = False
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.removeprefix(b"\xef\xbb\xbf"))  # tolerate a UTF-8 BOM
            except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError; nesting too deep
                yield None
                continue
            if not header_seen and isinstance(record, dict):
                _check_columns(f"{path} line {number}", list(record), "field")
                header_seen = True
            yield record


def _check_columns(where: str, columns: list[str], what: str = "column") -> None:
    """``where`` names the file (and line), ``what`` the kind of name: a column or a JSON field."""
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DatasetError(
            f"{where}: missing {what}(s) {', '.join(missing)}; found {', '.join(columns) or 'none'}")


def _csv_records(path: Path) -> Iterator[object]:
    """Header-keyed rows; a row with more cells than the header is a ``bad_row``."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            _check_columns(str(path), list(reader.fieldnames or []))
            for row in reader:
                yield None if None in row else row
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc})") from None
    except csv.Error as exc:
        raise DatasetError(f"{path}: unreadable CSV ({exc})") from None


def _parquet_records(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a declared dependency
        raise DatasetError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow") from None
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DatasetError(f"{path}: unreadable Parquet ({exc})") from None
    _check_columns(str(path), list(table.column_names))
    return table.to_pylist()


def _read_records(path: Path) -> Iterator[object]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_records(path)
    if suffix == ".csv":
        return _csv_records(path)
    return iter(_parquet_records(path))


def _to_row(record: object) -> _Row | None:
    """A row with a usable ``path``, else ``None``.

    The key defaults to the normalized path, extension included: ``a.png`` and ``a.jpg`` are two
    images, hence two pairs, while the same file listed twice is one key (a ``duplicate_key``)."""
    if not isinstance(record, dict):
        return None
    path = record.get("path")
    if not isinstance(path, str) or not path.strip():
        return None
    key = record.get("key")
    key = str(key) if key is not None and str(key).strip() else os.path.normpath(path)
    meta = {k: v for k, v in record.items() if k not in _RESERVED}
    return _Row(key, path, record.get("caption"), meta)


def _mark_duplicates(rows: list[_Row | None]) -> list[_Row | None]:
    """The first row of each key wins, wherever it lands, so shards never disagree on it."""
    seen: set[str] = set()
    out: list[_Row | None] = []
    for row in rows:
        if row is not None and row.key in seen:
            row = _Row(row.key, row.path, row.caption, row.meta, duplicate=True)
        elif row is not None:
            seen.add(row.key)
        out.append(row)
    return out


class FolderPairSource:
    """Pairs listed in a captions file (columns ``path``, ``caption``, optional ``key``, which
    defaults to the image path as listed).

    ``path`` may be the captions file or a folder holding exactly one of ``CAPTION_FILES``.
    Image paths are relative to the captions file's folder (or absolute). Extra columns go
    to ``meta``. Shards are ``shard_size`` listing rows each, malformed rows included, so
    every row is counted in exactly one shard. Of rows sharing a key the first in file order
    is the one used (if it is then dropped for its caption or image, the key has no pair).
    """

    def __init__(self, path: str | os.PathLike, shard_size: int = 1000, name: str | None = None):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.captions_file = find_captions_file(path).absolute()
        self.root = self.captions_file.parent
        self.shard_size = shard_size
        self.name = name if name is not None else f"folder:{path}"
        self._rows: list[_Row | None] | None = None

    def _listing(self) -> list[_Row | None]:
        """The listing (``None`` for malformed rows), read on first use and kept."""
        if self._rows is None:
            records = _read_records(self.captions_file)
            self._rows = _mark_duplicates([_to_row(r) for r in records])
        return self._rows

    def num_shards(self) -> int:
        return max(1, math.ceil(len(self._listing()) / self.shard_size))

    def read_shard(self, index: int) -> PairShard:
        if not 0 <= index < self.num_shards():
            raise IndexError(f"{self.name}: shard {index} out of range 0..{self.num_shards() - 1}")
        counts: Counter[str] = Counter({k: 0 for k in FOLDER_COUNT_KEYS})
        pairs = []
        for row in self._listing()[index * self.shard_size:(index + 1) * self.shard_size]:
            pair, problem = self._to_pair(row)
            if pair is None:
                counts[problem] += 1
            else:
                pairs.append(pair)
        counts["pairs"] = len(pairs)
        return PairShard(index, pairs, dict(counts))

    def _to_pair(self, row: _Row | None) -> tuple[ImageTextPair | None, str]:
        """The pair for a row, or ``(None, reason)`` with one of ``FOLDER_COUNT_KEYS``."""
        if row is None:
            return None, "bad_row"
        if row.duplicate:
            return None, "duplicate_key"
        caption, problem = clean_caption(row.caption)
        if caption is None:
            return None, problem
        image = os.path.abspath(os.path.join(self.root, row.path))
        if not os.path.isfile(image):
            return None, "missing_image"
        return ImageTextPair(key=row.key, source=image, caption=caption, meta=dict(row.meta)), ""
