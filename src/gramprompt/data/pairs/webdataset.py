"""Image-text pairs from WebDataset tar shards, as written by img2dataset (one tar = one shard).

Tars are streamed with the standard library (``tarfile`` mode ``r|*``), so no extra package
is needed and compressed shards work too. Members are grouped into samples as webdataset
does: consecutive members sharing a key, the key being the member name up to the first dot
of its base name (``dir/000012.jpg`` -> ``dir/000012``). A damaged tar never raises: it is
counted as ``corrupt_shard`` and the samples completed before the damage are kept.
"""
from __future__ import annotations

import functools
import glob
import json
import logging
import lzma
import os
import re
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from gramprompt.data.dataset import DatasetError
from gramprompt.data.pairs.base import ARCHIVE_SUFFIXES, ImageTextPair, PairShard, clean_caption

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # first one present is the sample's image
TAR_SUFFIXES = ARCHIVE_SUFFIXES
# Every shard reports all of these, zeros included, so data cards list the same fields.
# ``bad_json`` does not drop the sample (its meta is just left empty).
WDS_COUNT_KEYS = (
    "pairs", "missing_image", "missing_caption", "empty_caption", "non_text_caption",
    "bad_json", "duplicate_key", "corrupt_shard",
)
_WANTED = {*IMAGE_EXTENSIONS, "txt", "json"}
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(\d+)\.\.(\d+)$")
# What a damaged or truncated stream raises from inside tarfile and its decompressors.
_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)


# --------------------------------------------------------------------------- shard lists


def _brace_items(body: str) -> list[str] | None:
    """``00..03`` -> ``00 01 02 03``, ``a,b`` -> ``a b``; ``None`` if not a brace expression.

    As in bash, a range is zero-padded to its longer end when either end has a leading zero.
    """
    if m := _RANGE.match(body):
        lo, hi = int(m[1]), int(m[2])
        padded = any(len(end) > 1 and end.startswith("0") for end in (m[1], m[2]))
        width = max(len(m[1]), len(m[2])) if padded else 0
        step = 1 if hi >= lo else -1
        return [str(i).zfill(width) for i in range(lo, hi + step, step)]
    if "," in body:
        return body.split(",")
    return None


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{A..B}`` ranges and ``{a,b}`` lists left to right (not nested), in order.

    Other braces are kept literally. ``shards-{000..002}.tar`` ->
    ``shards-000.tar``, ``shards-001.tar``, ``shards-002.tar``.
    """
    pos = 0
    while m := _BRACE.search(pattern, pos):
        items = _brace_items(m[1])
        if items is not None:
            head, tail = pattern[: m.start()], pattern[m.end():]
            return [head + item + rest for item in items for rest in expand_braces(tail)]
        pos = m.end()
    return [pattern]


def _has_magic(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def _is_tar(path: str) -> bool:
    return path.lower().endswith(TAR_SUFFIXES) and os.path.isfile(path)


def list_shards(pattern: str) -> list[str]:
    """Absolute tar paths matching ``pattern``: brace expansions in order, each glob sorted.

    Matches that are not ``.tar``/``.tar.gz``/``.tgz`` files (img2dataset's ``.parquet`` and
    ``_stats.json`` siblings) are left out.
    """
    found: dict[str, None] = {}
    for expanded in expand_braces(os.path.expanduser(pattern)):
        matches = sorted(glob.glob(expanded)) if _has_magic(expanded) else [expanded]
        found.update((os.path.abspath(p), None) for p in matches if _is_tar(p))
    return list(found)


# --------------------------------------------------------------------------- tar reading


def split_member_name(name: str) -> tuple[str, str] | None:
    """``dir/000012.jpg`` -> ``("dir/000012", "jpg")``; ``None`` without a usable dot."""
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not stem or not dot:
        return None
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


@dataclass
class _Sample:
    """The wanted members of one key: extension -> (member name, bytes)."""

    key: str
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)


def _end_tracking_tarinfo(ends: list[Exception]) -> type[tarfile.TarInfo]:
    """A TarInfo that records why header reading stopped.

    In stream mode ``tarfile`` ends iteration silently on a missing or truncated header, as if
    the archive were complete; only an all-zero block (``EOFHeaderError``) is a real end.
    """

    class _Info(tarfile.TarInfo):
        @classmethod
        def fromtarfile(cls, tf: tarfile.TarFile) -> tarfile.TarInfo:
            try:
                return super().fromtarfile(tf)
            except tarfile.HeaderError as exc:
                ends.append(exc)
                raise

    return _Info


def _iter_samples(path: str) -> Iterator[_Sample]:
    """Samples in tar order; raises one of ``_READ_ERRORS`` on damage after the last complete
    sample (the sample being read then is dropped: some of its members may be missing)."""
    ends: list[Exception] = []
    with tarfile.open(path, mode="r|*", tarinfo=_end_tracking_tarinfo(ends)) as tf:
        current: _Sample | None = None
        for member in tf:
            parts = split_member_name(member.name) if member.isfile() else None
            if parts is None:
                continue
            key, ext = parts
            if current is not None and current.key != key:
                yield current
                current = None
            current = current or _Sample(key)
            if ext in _WANTED and ext not in current.files:
                fh = tf.extractfile(member)
                current.files[ext] = (member.name, fh.read() if fh is not None else b"")
        if not ends or not isinstance(ends[-1], tarfile.EOFHeaderError):
            why = type(ends[-1]).__name__ if ends else "no header error"
            raise tarfile.ReadError(f"archive ends without its end-of-archive block ({why})")
        if current is not None:
            yield current


@functools.lru_cache(maxsize=1024)
def _shard_keys(path: str, mtime_ns: int, size: int) -> frozenset[str]:
    """The keys of a shard's samples, from its member names (no image is read; a damaged tail is ignored)."""
    keys = set()
    try:
        with tarfile.open(path, mode="r|*") as tf:
            for member in tf:
                parts = split_member_name(member.name) if member.isfile() else None
                if parts is not None and parts[1] in _WANTED:
                    keys.add(parts[0])
    except _READ_ERRORS:
        pass
    return frozenset(keys)


def _parse_meta(sample: _Sample) -> tuple[dict, bool]:
    """The ``.json`` member as a dict, and whether it was present but not a JSON object."""
    if "json" not in sample.files:
        return {}, False
    try:
        meta = json.loads(sample.files["json"][1])
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep to parse
        return {}, True
    return (meta, False) if isinstance(meta, dict) else ({}, True)


def _sample_to_pair(path: str, sample: _Sample, counts: Counter[str]) -> ImageTextPair | None:
    """The pair of one sample, or ``None`` with the reason counted."""
    meta, bad_json = _parse_meta(sample)
    counts["bad_json"] += int(bad_json)
    image_ext = next((e for e in IMAGE_EXTENSIONS if e in sample.files), None)
    if image_ext is None:
        counts["missing_image"] += 1
        return None
    if "txt" not in sample.files:
        counts["missing_caption"] += 1
        return None
    caption, problem = clean_caption(sample.files["txt"][1])
    if caption is None:
        counts[problem] += 1
        return None
    member, data = sample.files[image_ext]
    return ImageTextPair(key=sample.key, source=f"{path}#{member}", caption=caption,
                         meta=meta, data=data)


class WebDatasetPairSource:
    """img2dataset-style WebDataset shards (``.jpg/.png/.webp`` + ``.txt`` + optional ``.json``).

    ``pattern`` is a tar path or a glob, with ``{000..009}`` ranges expanded first. Each
    shard's image bytes are held in memory (``pair.data``) until the shard is dropped.
    A key met again, later in the same tar or in a later tar, is counted as ``duplicate_key`` (the first
    one is kept), so that one key names one pair of the corpus.
    """

    def __init__(self, pattern: str, name: str | None = None):
        self.pattern = pattern
        self.name = name if name is not None else f"wds:{pattern}"
        self.paths = list_shards(pattern)
        if not self.paths:
            raise DatasetError(
                f"{pattern}: no WebDataset shard matches (looked for {', '.join(TAR_SUFFIXES)} files)")

    def num_shards(self) -> int:
        return len(self.paths)

    def _earlier_keys(self, index: int) -> set[str]:
        """The sample keys of the shards before ``index`` (their member names only, cached per archive)."""
        keys: set[str] = set()
        for path in self.paths[:index]:
            st = os.stat(path)
            keys.update(_shard_keys(path, st.st_mtime_ns, st.st_size))
        return keys

    def read_shard(self, index: int) -> PairShard:
        if not 0 <= index < self.num_shards():
            raise IndexError(f"{self.name}: shard {index} out of range 0..{self.num_shards() - 1}")
        path = self.paths[index]
        counts: Counter[str] = Counter({k: 0 for k in WDS_COUNT_KEYS})
        pairs: list[ImageTextPair] = []
        seen: set[str] = set()
        earlier = self._earlier_keys(index)
        try:
            for sample in _iter_samples(path):
                if sample.key in seen or sample.key in earlier:
                    counts["duplicate_key"] += 1
                    continue
                seen.add(sample.key)
                if (pair := _sample_to_pair(path, sample, counts)) is not None:
                    pairs.append(pair)
        except _READ_ERRORS as exc:
            counts["corrupt_shard"] += 1
            logger.warning("%s: corrupt shard, kept %d pairs read before: %s", path, len(pairs), exc)
        counts["pairs"] = len(pairs)
        return PairShard(index, pairs, dict(counts))
