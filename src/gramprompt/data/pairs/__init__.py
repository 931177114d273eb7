"""Image-text pair sources: the offline Debian-packaged sets, caption folders, WebDataset shards.

One module per source (``openclipart``, ``noto_emoji``, ``folder``, ``webdataset``);
``open_pair_source`` turns a command-line spec into a sharded ``PairSource``.
"""
from __future__ import annotations

from collections.abc import Callable

from gramprompt.data.dataset import DatasetError
from gramprompt.data.pairs.base import (
    ConcatPairSource,
    ImageTextPair,
    ListPairSource,
    PairScan,
    PairShard,
    PairSource,
    clean_caption,
    load_pair_image,
)
from gramprompt.data.pairs.folder import FOLDER_COUNT_KEYS, FolderPairSource
from gramprompt.data.pairs.noto_emoji import noto_emoji_pairs, scan_noto_emoji
from gramprompt.data.pairs.openclipart import openclipart_pairs, scan_openclipart
from gramprompt.data.pairs.webdataset import WDS_COUNT_KEYS, WebDatasetPairSource, expand_braces

PAIR_SOURCES: dict[str, Callable[[], list[ImageTextPair]]] = {
    "openclipart": openclipart_pairs,
    "noto-emoji": noto_emoji_pairs,
}

PAIR_SPECS = (
    "openclipart | noto-emoji (NAME:N: an evenly spaced subset of N pairs) | folder:PATH (a "
    "captions.jsonl/.csv/.parquet file with columns path, caption[, key], or a folder holding one) | "
    "wds:GLOB (WebDataset .tar shards; {000..009} ranges allowed) | iconify[:N][?key=value&...] (the Iconify "
    "icon sets, see docs/DATA.md) | A+B (one source after another, e.g. openclipart+iconify:50000)"
)


_KINDS = {*PAIR_SOURCES, "folder", "wds", "iconify"}  # what may stand on either side of "+" (paths may hold "+")


def open_pair_source(spec: str, shard_size: int = 1000) -> PairSource:
    """The source a spec names; ``shard_size`` applies to listed sources (one tar = one shard)."""
    parts = spec.split("+")
    if len(parts) > 1 and all(p.partition(":")[0].partition("?")[0] in _KINDS for p in parts):
        return ConcatPairSource(spec, [open_pair_source(part, shard_size) for part in parts])
    if spec.startswith("iconify"):
        from gramprompt.data.pairs.iconify_source import IconifyPairSource

        return IconifyPairSource(spec, shard_size)
    if spec in PAIR_SOURCES:
        return ListPairSource(spec, PAIR_SOURCES[spec](), shard_size)
    kind, sep, arg = spec.partition(":")
    if kind in PAIR_SOURCES and sep:
        if not arg.isdigit() or int(arg) < 1:
            raise DatasetError(f"{spec!r}: expected {kind}:N with N >= 1 pairs")
        pairs = PAIR_SOURCES[kind]()
        n = min(int(arg), len(pairs))  # evenly spaced, so a subset still spans every folder/category
        return ListPairSource(spec, [pairs[i * len(pairs) // n] for i in range(n)], shard_size)
    if sep and arg and kind == "folder":
        return FolderPairSource(arg, shard_size, name=spec)
    if sep and arg and kind == "wds":
        return WebDatasetPairSource(arg, name=spec)
    raise DatasetError(f"unknown pair source {spec!r}; expected one of: {PAIR_SPECS}")


__all__ = [
    "FOLDER_COUNT_KEYS", "PAIR_SOURCES", "PAIR_SPECS", "WDS_COUNT_KEYS", "ConcatPairSource", "FolderPairSource",
    "ImageTextPair", "ListPairSource", "PairScan", "PairShard", "PairSource",
    "WebDatasetPairSource", "clean_caption", "load_pair_image", "expand_braces", "noto_emoji_pairs",
    "open_pair_source", "openclipart_pairs", "scan_noto_emoji", "scan_openclipart",
]
