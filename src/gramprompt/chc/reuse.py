"""Feature shards shared across feature stores: a pair is encoded once per machine.

The scale study's corpora are nested (``openclipart``, ``openclipart+iconify:10000``, ...: each one's
shards begin with the previous one's), and several configs cluster the same pairs under other roots.
A finished shard is hard-linked (copied where links are impossible) into ``$GRAM_FEATURE_CACHE`` or
``cache_dir()/chc-features``, under a digest of everything its files depend on: the backbone's weights
and preprocessing, the feature settings that change what is computed, the extraction path, and the
shard's pairs (key, caption, source, metadata, and the image bytes or the file's size and time)
with the source's skip counts. A later store whose shard has the same digest links those files in
instead of encoding. Entries are written atomically (a folder renamed into place), so a killed run
leaves none half-written; deleting the folder only costs time.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from gramprompt.chc.store import shard_paths
from gramprompt.data.pairs import ImageTextPair


def reuse_dir() -> Path:
    from gramprompt.data import cache_dir

    env = os.environ.get("GRAM_FEATURE_CACHE")
    return Path(env).expanduser() if env else cache_dir() / "chc-features"


def shard_digest(settings: dict, pairs: Sequence[ImageTextPair], counts: dict[str, int]) -> str:
    """What a shard's files depend on, as a hex digest (``settings``: backbone fingerprint and feature settings)."""
    h = hashlib.sha256(json.dumps({"settings": settings, "counts": counts}, sort_keys=True, default=str).encode())
    for p in pairs:
        h.update(json.dumps([p.key, p.caption, p.source, p.meta], sort_keys=True, default=str).encode())
        if p.data is not None:
            h.update(hashlib.sha256(p.data).digest())
        else:
            try:
                st = os.stat(p.source)
                h.update(f"|{st.st_size}|{st.st_mtime_ns}".encode())
            except OSError:
                h.update(b"|missing")
        h.update(b"\n")
    return h.hexdigest()[:40]


def _link(src: Path, dst: Path) -> None:
    """``dst`` as a hard link of ``src`` (a copy across file systems), appearing at once and complete."""
    tmp = dst.with_name(dst.name + f".link{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def fetch(digest: str, out: Path, index: int) -> bool:
    """Link the cached shard ``digest`` into ``out`` as shard ``index``; False when it is not cached."""
    entry = reuse_dir() / digest
    if not (entry / "metadata").is_dir():
        return False
    src, dst = shard_paths(entry, 0), shard_paths(out, index)
    for kind in ("img", "text", "stem", "meta"):  # the metadata file, the completion mark, last
        if src[kind].exists():
            dst[kind].parent.mkdir(parents=True, exist_ok=True)
            _link(src[kind], dst[kind])
    return True


def keep(digest: str, out: Path, index: int) -> None:
    """Record shard ``index`` of ``out`` (complete) under ``digest``."""
    root = reuse_dir()
    entry = root / digest
    if entry.exists():
        return
    tmp = root / f"{digest}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    src, dst = shard_paths(out, index), shard_paths(tmp, 0)
    for kind in ("img", "text", "stem", "meta"):
        if src[kind].exists():
            dst[kind].parent.mkdir(parents=True, exist_ok=True)
            _link(src[kind], dst[kind])
    try:
        os.rename(tmp, entry)
    except OSError:  # another process kept the same shard first
        shutil.rmtree(tmp, ignore_errors=True)
