"""The ``iconify`` pair source: selected, rendered, de-duplicated Iconify icons, with no evaluation image.

``iconify[:N][?key=value&...]`` names a corpus completely (so a feature store records exactly which
pairs it holds); ``gram chc`` flags such as ``--exclude-images`` add to it. The selected sets' icons
are put in one seeded random order and walked in blocks; each block is rendered where it is not yet
(``iconify_render``), then

1. every icon whose thumbnail is within ``match`` grey levels (RMS) of an image of a shipped
   evaluation set (``data.exclusion``) or of an image under an ``exclude-images`` folder is removed;
2. exact duplicates (equal pixels) and near duplicates (picture hash within ``dedupe`` bits) of an
   icon earlier in that order are removed: a style variant that the hash calls the same picture is one pair;
3. the walk stops once ``N`` pairs are kept (all icons without ``N``).

Whether an icon is kept depends only on the icons before it, so ``iconify:N`` is exactly the first N
pairs of ``iconify`` in that order: corpora of one seed are nested (each a prefix of the next), and a
small corpus renders only about the icons it needs.

What each step removed, and every set's licence and author, is in ``report()`` (``gram chc`` writes it
to ``features/source.json``). The result is cached per selection, so workers reopen it at once.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np

from gramprompt.data.dataset import DatasetError
from gramprompt.data.image_hash import THUMB, NearIndex, nearest_within, thumbnail_files
from gramprompt.data.pairs._cache import _read_json, _write_json
from gramprompt.data.pairs.base import ImageTextPair, PairShard, _tar_index, clean_caption
from gramprompt.data.pairs.iconify import (
    IconSet,
    Selection,
    find_iconify_root,
    read_collections,
    read_set,
    select_sets,
    set_icons,
)
from gramprompt.data.pairs.iconify_render import CHUNK, RENDERERS, RenderSpec, read_renders, render_missing

logger = logging.getLogger(__name__)

# Chosen on measured distances (docs/DATA.md). Evaluation images: RMS difference of 16 x 16 thumbnails
# in grey levels (the same emoji re-rasterized: median 3.0, 90th percentile 4.0; the nearest other
# emoji: median 20.4; two different simple icons: 98 and more) and their correlation (RMS alone matched
# pale icons to pale clip art). Duplicates: Hamming distance of
# 256-bit picture hashes (one icon framed or rasterized two ways: 0).
MATCH_DISTANCE = 12.0  # an evaluation image redrawn by an icon set: removed (erring towards removal) when
MATCH_CORRELATION = 0.95  # its thumbnail is also this correlated (same picture 0.995+; pale look-alikes less)
DEDUPE_DISTANCE = 0  # two icons of the corpus that are the same picture
SELECTION_VERSION = 3

_LIST_KEYS = {"sets", "categories", "licenses", "exclude-sets", "exclude-images"}
_INT_KEYS = {"seed", "size", "dedupe"}
_FLOAT_KEYS = {"match", "match-corr"}
_STR_KEYS = {"root", "renderer", "style"}


@dataclass
class IconifyOptions:
    """Everything that decides which pairs ``iconify`` yields."""

    n: int | None = None
    seed: int = 0
    root: str | None = None
    selection: Selection = field(default_factory=Selection)
    exclude_images: tuple[str, ...] = ()
    size: int = 224
    renderer: str = "resvg"
    style: str = "drop"  # "drop": style words removed from captions where they mark a variant; "keep"
    match: float = MATCH_DISTANCE
    match_corr: float = MATCH_CORRELATION
    dedupe: int = DEDUPE_DISTANCE


def parse_iconify_spec(spec: str) -> IconifyOptions:
    """``iconify``, ``iconify:N``, ``iconify:N?sets=mdi,tabler&exclude-images=/a,/b`` -> options.

    Keys: sets, categories, licenses (SPDX ids, or ``any``), exclude-sets, exclude-images (folders),
    root, seed, size, renderer, style (drop|keep), match, match-corr, dedupe.
    """
    head, _, query = spec.partition("?")
    kind, sep, n = head.partition(":")
    if kind != "iconify":
        raise DatasetError(f"{spec!r} is not an iconify spec")
    opts = IconifyOptions()
    if sep:
        if not n.isdigit() or int(n) < 1:
            raise DatasetError(f"{spec!r}: expected iconify:N with N >= 1 pairs")
        opts.n = int(n)
    sel: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)) if query else ():
        if key in _LIST_KEYS:
            items = tuple(v.strip() for v in value.split(",") if v.strip())
            if key == "exclude-images":
                opts.exclude_images = tuple(sorted({*opts.exclude_images, *items}))
            elif key == "licenses" and items == ("any",):
                sel["licenses"] = ("*",)
            else:
                name = key.replace("-", "_")
                sel[name] = tuple(sorted({*sel.get(name, ()), *items}))
        elif key in _INT_KEYS:
            if not value.lstrip("-").isdigit():
                raise DatasetError(f"{spec!r}: {key} must be an integer, got {value!r}")
            setattr(opts, key, int(value))
        elif key in _FLOAT_KEYS:
            try:
                setattr(opts, key.replace("-", "_"), float(value))
            except ValueError:
                raise DatasetError(f"{spec!r}: {key} must be a number, got {value!r}") from None
        elif key in _STR_KEYS:
            setattr(opts, key, value)
        else:
            known = ", ".join(sorted(_LIST_KEYS | _INT_KEYS | _FLOAT_KEYS | _STR_KEYS))
            raise DatasetError(f"{spec!r}: unknown iconify option {key!r} (known: {known})")
    opts.selection = Selection(**sel)
    if opts.renderer not in RENDERERS:
        raise DatasetError(f"{spec!r}: renderer must be one of {', '.join(RENDERERS)}")
    if opts.style not in ("drop", "keep"):
        raise DatasetError(f"{spec!r}: style must be drop or keep")
    if opts.size < 8:
        raise DatasetError(f"{spec!r}: size must be >= 8 pixels")
    return opts


def with_exclusions(spec: str, images: list[str] | None = None, sets: list[str] | None = None) -> str:
    """``spec`` with ``exclude-images``/``exclude-sets`` added to its iconify parts (``A+B`` specs too);
    other sources do not take them (refused)."""
    if not images and not sets:
        return spec
    parts = spec.split("+")
    if not any(p.startswith("iconify") for p in parts):
        raise DatasetError("--exclude-images and --exclude-sets apply to the iconify pair source only")
    extra = []
    if images:
        extra.append("exclude-images=" + ",".join(str(Path(d).resolve()) for d in images))
    if sets:
        extra.append("exclude-sets=" + ",".join(sets))
    out = [p + ("&" if "?" in p else "?") + "&".join(extra) if p.startswith("iconify") else p for p in parts]
    return "+".join(out)


def exclusion_summary(report: dict[str, Any]) -> str:
    """A few lines saying what an iconify selection removed, per rule (``report()``, or a dict of them)."""
    if "counts" not in report:
        return "\n".join(exclusion_summary(r) for r in report.values() if isinstance(r, dict))
    c, ev = report["counts"], report["excluded_by_evaluation_set"]
    per_set = ", ".join(f"{k} {v}" for k, v in ev["removed"].items()) or "none"
    lines = [f"{report.get('spec', 'iconify')}: {report.get('pairs', c.get('pairs'))} pairs from {len(report['sets'])} sets "
             f"(the first {c.get('scanned', 0)} of {c.get('candidates', 0)} icons in corpus order)",
             f"  removed: evaluation images {c.get('excluded_evaluation', 0)} ({per_set}); your --exclude-images "
             f"{c.get('excluded_user_images', 0)}; exact duplicates {c.get('duplicate_exact', 0)}; same-hash "
             f"duplicates {c.get('duplicate_near', 0)}; blank {c.get('blank_render', 0)}; render errors "
             f"{c.get('render_error', 0)}",
             f"  left out before rendering: icons of non-permissive sets {c.get('licence_icons', 0)}, of "
             f"--exclude-sets {c.get('excluded_set_icons', 0)}; hidden {c.get('hidden_icon', 0)}; aliases "
             f"{c.get('aliases', 0)}"]
    if ev.get("not_installed"):
        lines.append(f"  evaluation sets not installed (not checked): {', '.join(ev['not_installed'])}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- building the selection


def _folder_digest(dirs: tuple[str, ...]) -> str:
    """Which files the exclusion folders hold now (paths, sizes, times), so a changed folder is rehashed."""
    h = hashlib.sha1()
    for d in dirs:
        for p in sorted(Path(d).rglob("*")) if Path(d).is_dir() else ():
            if p.is_file():
                st = p.stat()
                h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _cache_root(cache: str | os.PathLike | None) -> Path:
    from gramprompt.data import cache_dir

    return Path(cache) if cache is not None else cache_dir() / "iconify"


def build_selection(opts: IconifyOptions, cache: str | os.PathLike | None = None, workers: int | None = None,
                    evaluation: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Order, render, exclude, de-duplicate until ``opts.n`` pairs are kept: ``{"entries": [...],
    "report": {...}}``, entries in corpus order, cached per options.

    ``evaluation``: ``{name: thumbnails}`` to exclude instead of the shipped evaluation sets (tests)."""
    cache = _cache_root(cache)
    root = find_iconify_root(opts.root)
    spec = RenderSpec(str(root), opts.size, opts.renderer, opts.style == "drop")
    folder = spec.folder(cache / "renders")
    key = {"v": SELECTION_VERSION, "folder": str(folder), **asdict(replace(opts, root=str(root))),
           "exclude_digest": _folder_digest(opts.exclude_images),
           "evaluation": None if evaluation is None else sorted((k, hashlib.sha1(v.tobytes()).hexdigest())
                                                                for k, v in evaluation.items())}
    path = cache / "selections" / (hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16] + ".json")
    if (cached := _read_json(path)) is not None:
        return cached

    counts: Counter[str] = Counter()
    all_sets = read_collections(root)
    sel = opts.selection
    if sel.licenses == ("*",):
        sel = replace(sel, licenses=tuple(sorted({s.license for s in all_sets})))
    sets = select_sets(all_sets, sel, counts)
    candidates: list[tuple[str, str, dict, IconSet]] = []
    sizes: dict[str, int] = {}
    for s in sets:
        icons = set_icons(read_set(root, s.prefix), s, opts.size, opts.style == "drop", counts)
        sizes[s.prefix] = len(icons)
        candidates += [(f"iconify/{s.prefix}/{i.meta['name']}", i.caption, i.meta, s) for i in icons]
    candidates.sort(key=lambda c: c[0])
    order = np.random.default_rng(opts.seed).permutation(len(candidates))
    refs, excluded = _exclusion_refs(opts, cache, evaluation, counts)
    walk = _Walk(opts, refs)
    pos = 0
    while pos < len(order) and not walk.done():
        # a block a little larger than what is missing (about a fifth of the icons are removed)
        step = len(order) if opts.n is None else max(CHUNK, math.ceil(1.25 * (opts.n - len(walk.kept))))
        block = [candidates[i] for i in order[pos:pos + step]]
        pos += len(block)
        needs: dict[IconSet, list[str]] = {}
        for _, _, meta, s in block:
            needs.setdefault(s, []).append(meta["name"])
        render_missing(spec, needs, folder, workers)
        renders = {s.prefix: read_renders(folder, s.prefix) for s in needs}
        walk.add(block, renders)
    kept = walk.kept
    counts.update(walk.counts)
    counts["candidates"] = len(candidates)
    counts["pairs"] = len(kept)
    excluded["removed"] = dict(sorted(walk.owners.items()))
    report = {"package_root": str(root), "renders": str(folder), "options": asdict(opts),
              "counts": dict(sorted(counts.items())), "excluded_by_evaluation_set": excluded,
              "sets": [s.attribution() | {"icons": sizes[s.prefix]} for s in sets]}
    result = {"entries": kept, "report": report}
    _write_json(path, result)
    return result


@dataclass
class _Refs:
    """The thumbnails an icon must not match: the evaluation sets' (with each one's set name) and the user's."""

    evaluation: np.ndarray
    owner: list[str]
    user: np.ndarray | None


def _exclusion_refs(opts: IconifyOptions, cache: Path, evaluation: dict[str, np.ndarray] | None,
                    counts: Counter[str]) -> tuple[_Refs, dict[str, Any]]:
    from gramprompt.data.exclusion import evaluation_hashes

    missing: dict[str, str] = {}
    if evaluation is None:
        evaluation, missing = evaluation_hashes(cache / "evaluation")
    names = sorted(evaluation)
    refs = np.concatenate([evaluation[n] for n in names]) if names else np.zeros((0, THUMB * THUMB), np.uint8)
    owner = [n for n in names for _ in range(len(evaluation[n]))]
    user = None
    if opts.exclude_images:
        user, files, bad = thumbnail_files(opts.exclude_images)
        counts["exclude_images_files"] = len(files)
        counts["exclude_images_unreadable"] = bad
    report = {"removed": {}, "hashed_images": {k: int(len(v)) for k, v in evaluation.items()},
              "not_installed": missing, "match_distance": opts.match, "match_correlation": opts.match_corr}
    return _Refs(refs, owner, user), report


class _Walk:
    """Icons in corpus order through exclusion, de-duplication and caption cleaning, stopping at the
    ``opts.n``-th kept pair, so that what it counts is what the corpus's own icons lost."""

    def __init__(self, opts: IconifyOptions, refs: _Refs):
        self.opts, self.refs = opts, refs
        self.kept: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()  # removals, by rule
        self.owners: Counter[str] = Counter()  # evaluation removals, by evaluation set
        self._seen: set[str] = set()
        self._index = NearIndex(opts.dedupe)

    def done(self) -> bool:
        return self.opts.n is not None and len(self.kept) >= self.opts.n

    def add(self, block: list[tuple[str, str, dict, IconSet]], renders: dict) -> None:
        drawn = []
        for key, caption, meta, s in block:
            done, skipped = renders[s.prefix]
            name = meta["name"]
            if name in done:
                drawn.append((key, caption, meta, done[name]))
            else:  # no image: counted where the walk gets there
                drawn.append((key, caption, meta, skipped.get(name, "render_error")))
        images = [d for d in drawn if not isinstance(d[3], str)]
        thumbs = np.stack([d[3].thumb for d in images]) if images else np.zeros((0, THUMB * THUMB), np.uint8)
        hit = dict(zip((d[0] for d in images), nearest_within(thumbs, self.refs.evaluation, self.opts.match,
                                                              self.opts.match_corr), strict=True))
        user_hit: dict[str, int] = {}
        if self.refs.user is not None:
            user_hit = dict(zip((d[0] for d in images), nearest_within(thumbs, self.refs.user, self.opts.match,
                                                                       self.opts.match_corr), strict=True))
        for key, caption, meta, r in drawn:
            if self.done():
                return
            self.counts["scanned"] += 1
            reason = self._removal(key, r, hit, user_hit)
            if reason is None:
                caption, problem = clean_caption(caption)
                if caption is None:
                    reason = problem
            if reason is not None:
                self.counts[reason] += 1
                continue
            self.kept.append({"key": key, "caption": caption, "meta": meta, "tar": r.tar, "member": f"{meta['name']}.png"})

    def _removal(self, key: str, r, hit: dict[str, int], user_hit: dict[str, int]) -> str | None:
        if isinstance(r, str):
            return r
        if hit[key] >= 0:
            self.owners[self.refs.owner[hit[key]]] += 1
            return "excluded_evaluation"
        if user_hit.get(key, -1) >= 0:
            return "excluded_user_images"
        if r.digest in self._seen:
            return "duplicate_exact"
        self._seen.add(r.digest)
        h = int(r.hash, 16)
        if self._index.nearest(h)[0] >= 0:
            return "duplicate_near"
        self._index.add(h)
        return None


# --------------------------------------------------------------------------- the source


class IconifyPairSource:
    """The pairs of an ``iconify`` spec, ``shard_size`` per shard, images read from the render cache."""

    def __init__(self, spec: str, shard_size: int = 1000, cache: str | os.PathLike | None = None,
                 workers: int | None = None, evaluation: dict[str, np.ndarray] | None = None):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.name = spec
        self.options = parse_iconify_spec(spec)
        self.shard_size = shard_size
        built = build_selection(self.options, cache, workers, evaluation)
        self.entries = built["entries"]
        self._report = built["report"]

    def __len__(self) -> int:
        return len(self.entries)

    def report(self) -> dict[str, Any]:
        """What was selected and removed, and each set's attribution (licence, author, source)."""
        return {**self._report, "spec": self.name, "pairs": len(self.entries)}

    def num_shards(self) -> int:
        return max(1, math.ceil(len(self.entries) / self.shard_size))

    def read_shard(self, index: int) -> PairShard:
        if not 0 <= index < self.num_shards():
            raise IndexError(f"{self.name}: shard {index} out of range 0..{self.num_shards() - 1}")
        pairs = []
        counts: Counter[str] = Counter()
        for e in self.entries[index * self.shard_size:(index + 1) * self.shard_size]:
            st = os.stat(e["tar"])
            where = _tar_index(e["tar"], st.st_mtime_ns, st.st_size).get(e["member"])
            if where is None:
                counts["missing_image"] += 1
                continue
            with open(e["tar"], "rb") as f:
                f.seek(where[0])
                data = f.read(where[1])
            pairs.append(ImageTextPair(e["key"], f"{e['tar']}#{e['member']}", e["caption"], dict(e["meta"]), data))
        counts["pairs"] = len(pairs)
        return PairShard(index, pairs, dict(counts))
