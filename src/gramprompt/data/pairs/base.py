"""What every image-text pair source yields: pairs read shard by shard, with skip counts.

A source is split into shards (a tar file, or a fixed-size slice of a listing) so that feature
extraction can run, resume and be distributed one shard at a time. Bad captions are dropped
here and counted; bad images are found (and counted) when they are decoded.
"""
from __future__ import annotations

import functools
import math
import os
import tarfile
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from gramprompt.data.images import ImageLoadError, load_image


@dataclass(frozen=True)
class ImageTextPair:
    """One image with its caption; ``meta`` holds source-specific fields.

    ``source`` is the image file path, or ``ARCHIVE#MEMBER`` for an image stored inside an
    archive, whose encoded bytes are then in ``data``.
    """

    key: str
    source: str
    caption: str
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    data: bytes | None = field(default=None, repr=False, hash=False, compare=False)

    @property
    def image(self) -> str | bytes:
        """What ``data.images.load_image`` takes: the bytes if held, else the path."""
        return self.source if self.data is None else self.data


@dataclass
class PairScan:
    """Pairs plus counts of what was read, skipped or repaired, for data cards and logs."""

    pairs: list[ImageTextPair]
    counts: dict[str, int]


@dataclass
class PairShard:
    """The pairs of one shard of a source and what was skipped while reading it."""

    index: int
    pairs: list[ImageTextPair]
    counts: dict[str, int]


class PairSource(Protocol):
    """A sharded, re-readable collection of image-text pairs (same shards, same order)."""

    name: str

    def num_shards(self) -> int: ...

    def read_shard(self, index: int) -> PairShard: ...


@dataclass
class ListPairSource:
    """A source over pairs already listed in memory, cut into shards of ``shard_size``."""

    name: str
    pairs: Sequence[ImageTextPair]
    shard_size: int = 1000

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")

    def num_shards(self) -> int:
        return max(1, math.ceil(len(self.pairs) / self.shard_size))

    def read_shard(self, index: int) -> PairShard:
        if not 0 <= index < self.num_shards():
            raise IndexError(f"{self.name}: shard {index} out of range 0..{self.num_shards() - 1}")
        counts: Counter[str] = Counter()
        pairs = []
        for pair in self.pairs[index * self.shard_size:(index + 1) * self.shard_size]:
            caption, problem = clean_caption(pair.caption)
            if caption is None:
                counts[problem] += 1
                continue
            pairs.append(pair)
        counts["pairs"] = len(pairs)
        return PairShard(index, pairs, dict(counts))


class ConcatPairSource:
    """Several sources one after the other (``openclipart+iconify:N``): their shards, in order."""

    def __init__(self, name: str, sources: Sequence[PairSource]):
        self.name = name
        self.sources = list(sources)
        self._starts = [0]
        for source in self.sources:
            self._starts.append(self._starts[-1] + source.num_shards())

    def num_shards(self) -> int:
        return self._starts[-1]

    def read_shard(self, index: int) -> PairShard:
        if not 0 <= index < self.num_shards():
            raise IndexError(f"{self.name}: shard {index} out of range 0..{self.num_shards() - 1}")
        part = max(i for i, start in enumerate(self._starts[:-1]) if start <= index)
        shard = self.sources[part].read_shard(index - self._starts[part])
        return PairShard(index, shard.pairs, shard.counts)

    def report(self) -> dict[str, Any]:
        return {s.name: s.report() for s in self.sources if hasattr(s, "report")}


def clean_caption(raw: object) -> tuple[str | None, str]:
    """``(caption, "")`` for a usable caption, else ``(None, reason)``.

    Reasons: ``empty_caption`` (missing, NaN, blank) and ``non_text_caption`` (not a string,
    undecodable bytes, or no letter at all, e.g. a number or a file hash). Whitespace is
    collapsed and control characters are removed.
    """
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return None, "empty_caption"
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None, "non_text_caption"
    if not isinstance(raw, str):
        return None, "non_text_caption"
    text = "".join(ch for ch in raw if unicodedata.category(ch)[0] != "C" or ch in "\t\n")
    text = " ".join(text.split())
    if not text:
        return None, "empty_caption"
    if not any(ch.isalpha() for ch in text):
        return None, "non_text_caption"
    return text, ""


def load_pair_image(source) -> Image.Image:
    """An image from a stored pair ``source``: a file path, ``ARCHIVE.tar#MEMBER`` (WebDataset
    pairs, whose bytes are not kept), or anything else ``load_image`` takes (e.g. arrays)."""
    if not isinstance(source, str):
        return load_image(source)
    split = split_archive_source(source)
    if split is None:
        return load_image(source)
    archive, member = split
    if archive.endswith(".tar"):
        st = os.stat(archive)
        where = _tar_index(archive, st.st_mtime_ns, st.st_size).get(member)
        if where is None:
            raise ImageLoadError(f"{member!r} is not a file in {archive}")
        with open(archive, "rb") as f:
            f.seek(where[0])
            return load_image(f.read(where[1]))
    with tarfile.open(archive) as tar:  # compressed: no offsets to seek to, the archive is read up to the member
        for m in tar:
            if m.name == member and m.isfile():  # the first copy, as the pair source read it
                return load_image(tar.extractfile(m).read())
    raise ImageLoadError(f"{member!r} is not a file in {archive}")


ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def split_archive_source(source: str) -> tuple[str, str] | None:
    """``ARCHIVE#MEMBER`` -> (archive, member) where ARCHIVE is an existing tar (its path may hold ``#`` too);
    None for a plain path."""
    at = source.find("#")
    while at >= 0:
        archive = source[:at]
        if archive.endswith(ARCHIVE_SUFFIXES) and os.path.isfile(archive):
            return archive, source[at + 1:]
        at = source.find("#", at + 1)
    return None


@functools.lru_cache(maxsize=512)  # CC3M has 332 shards
def _tar_index(archive: str, mtime_ns: int, size: int) -> dict[str, tuple[int, int]]:
    """member -> (data offset, size) of an uncompressed tar, read once per archive version: finding a member
    with ``tarfile`` reads every header before it (~0.6 s per image in a 10k-sample shard), a seek does not.
    A member name held twice maps to its first copy, the one the pair sources read."""
    index: dict[str, tuple[int, int]] = {}
    with tarfile.open(archive) as tar:
        for m in tar:
            if m.isfile():
                index.setdefault(m.name, (m.offset_data, m.size))
    return index
