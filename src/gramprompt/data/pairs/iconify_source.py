"""The ``iconify`` pair source: selected, rendered, de-duplicated Iconify icons, with no evaluation image.

``iconify[:N][?key=value&...]`` names a corpus completely (so a feature store records exactly which
pairs it holds); ``gram chc`` flags such as ``--exclude-images`` add to it. Opening the source the
first time renders what is missing (``iconify_render``), then:

1. removes every icon whose thumbnail is within ``match`` grey levels (RMS) of an image of a shipped
   evaluation set (``data.exclusion``) or of an image under an ``exclude-images`` folder;
2. removes exact duplicates (equal pixels) and near duplicates (picture hash within ``dedupe`` bits)
   of an icon earlier in key order: a style variant that the hash calls the same picture is one pair;
3. keeps ``N`` of the rest (a seeded permutation's prefix, so ``iconify:N`` corpora are nested).

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
from gramprompt.data.image_hash import NearIndex, nearest_within, thumbnail_files
from gramprompt.data.pairs._cache import _read_json, _write_json
from gramprompt.data.pairs.base import ImageTextPair, PairShard, _tar_index, clean_caption
from gramprompt.data.pairs.iconify import (
    Selection,
    find_iconify_root,
    read_collections,
    read_set,
    select_sets,
    set_icons,
)
from gramprompt.data.pairs.iconify_render import RENDERERS, RenderSpec, chunk_paths, num_chunks, read_sidecar, \
    render_sets

logger = logging.getLogger(__name__)

# Chosen on measured distances (docs/DATA.md). Evaluation images: RMS difference of 16 x 16 thumbnails
# in grey levels (the same emoji re-rasterized: median 3.0, 90th percentile 4.0; the nearest other
# emoji: median 20.4; two different simple icons: 98 and more) and their correlation (RMS alone matched
# pale icons to pale clip art). Duplicates: Hamming distance of
# 256-bit picture hashes (one icon framed or rasterized two ways: 0).
MATCH_DISTANCE = 12.0  # an evaluation image redrawn by an icon set: removed (erring towards removal) when
MATCH_CORRELATION = 0.95  # its thumbnail is also this correlated (same picture 0.995+; pale look-alikes less)
DEDUPE_DISTANCE = 0  # two icons of the corpus that are the same picture
SELECTION_VERSION = 2

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
             f"({c.get('rendered', 0)} icons rendered)",
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
    """Render, exclude, de-duplicate (all N): ``{"entries": [...], "report": {...}}``, cached.

    ``evaluation``: ``{name: hashes}`` to exclude instead of the shipped evaluation sets (tests)."""
    cache = _cache_root(cache)
    root = find_iconify_root(opts.root)
    spec = RenderSpec(str(root), opts.size, opts.renderer, opts.style == "drop")
    folder = spec.folder(cache / "renders")
    key = {"v": SELECTION_VERSION, "folder": str(folder), **asdict(replace(opts, n=None, seed=0, root=str(root))),
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
    entries: list[dict[str, Any]] = []
    sizes: dict[str, int] = {}
    by_set: dict[str, list] = {}
    for s in sets:
        icons = set_icons(read_set(root, s.prefix), s, opts.size, opts.style == "drop", counts)
        sizes[s.prefix] = len(icons)
        by_set[s.prefix] = [(i.key, i.caption, i.meta) for i in icons]
    render_sets(spec, sets, sizes, folder, workers)
    thumbs = []
    for s in sets:
        info = {meta["name"]: (caption, meta) for _, caption, meta in by_set.pop(s.prefix)}
        for c in range(num_chunks(sizes[s.prefix])):
            side, chunk_thumbs = read_sidecar(folder, s.prefix, c)
            thumbs.append(chunk_thumbs)
            counts.update(side.get("counts", {}))
            tar = str(chunk_paths(folder, s.prefix, c)[0])
            for name, ph, dg in zip(side["name"], side["hash"], side["digest"], strict=True):
                caption, meta = info[name]
                entries.append({"key": f"iconify/{s.prefix}/{name}", "caption": caption, "meta": meta,
                                "tar": tar, "member": f"{name}.png", "hash": ph, "digest": dg, "row": len(entries)})
    counts["rendered"] = len(entries)
    entries.sort(key=lambda e: e["key"])
    thumbs = np.concatenate(thumbs) if thumbs else np.zeros((0, 256), np.uint8)
    entries, excluded = _exclude(entries, thumbs, opts, cache, evaluation, counts)
    entries = _dedupe(entries, opts.dedupe, counts)
    kept = []
    for e in entries:
        caption, problem = clean_caption(e["caption"])
        if caption is None:
            counts[problem] += 1
            continue
        kept.append({k: v for k, v in e.items() if k not in ("hash", "digest", "row")} | {"caption": caption})
    counts["pairs"] = len(kept)
    report = {"package_root": str(root), "renders": str(folder), "options": asdict(replace(opts, n=None)),
              "counts": dict(sorted(counts.items())), "excluded_by_evaluation_set": excluded,
              "sets": [s.attribution() | {"icons": sizes[s.prefix]} for s in sets]}
    result = {"entries": kept, "report": report}
    _write_json(path, result)
    return result


def _exclude(entries: list[dict], thumbs: np.ndarray, opts: IconifyOptions, cache: Path,
             evaluation: dict[str, np.ndarray] | None, counts: Counter[str]) -> tuple[list[dict], dict[str, Any]]:
    """Drop icons matching an evaluation image (shipped sets, then ``exclude_images``)."""
    from gramprompt.data.exclusion import evaluation_hashes

    missing: dict[str, str] = {}
    if evaluation is None:
        evaluation, missing = evaluation_hashes(cache / "evaluation")
    names = sorted(evaluation)
    refs = np.concatenate([evaluation[n] for n in names]) if names else np.zeros((0, thumbs.shape[1]), np.uint8)
    owner = np.repeat(np.arange(len(names)), [len(evaluation[n]) for n in names])
    queries = thumbs[[e["row"] for e in entries]] if entries else thumbs[:0]
    hit = nearest_within(queries, refs, opts.match, opts.match_corr)
    user_hit = np.full(len(entries), -1)
    if opts.exclude_images:
        user, files, bad = thumbnail_files(opts.exclude_images)
        user_hit = nearest_within(queries, user, opts.match, opts.match_corr)
        counts["exclude_images_files"] = len(files)
        counts["exclude_images_unreadable"] = bad
    per_set = Counter(names[owner[i]] for i in hit[hit >= 0])
    counts["excluded_user_images"] = int(((hit < 0) & (user_hit >= 0)).sum())
    kept = [e for e, a, b in zip(entries, hit, user_hit) if a < 0 and b < 0]
    counts["excluded_evaluation"] = sum(per_set.values())
    report = {"removed": dict(sorted(per_set.items())), "hashed_images": {k: int(len(v)) for k, v in evaluation.items()},
              "not_installed": missing, "match_distance": opts.match, "match_correlation": opts.match_corr}
    return kept, report


def _dedupe(entries: list[dict], max_distance: int, counts: Counter[str]) -> list[dict]:
    """Keep the first (key order) of each group of equal pictures: same pixels, or hashes within
    ``max_distance`` of a kept one."""
    seen: set[str] = set()
    index = NearIndex(max_distance)
    kept = []
    for e in entries:
        if e["digest"] in seen:
            counts["duplicate_exact"] += 1
            continue
        seen.add(e["digest"])
        h = int(e["hash"], 16)
        if index.nearest(h)[0] >= 0:
            counts["duplicate_near"] += 1
            continue
        index.add(h)
        kept.append(e)
    return kept


def nested_subset(n_total: int, n: int | None, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` of ``n_total`` items: a prefix of one seeded permutation, so a smaller
    subset is always inside a larger one of the same seed."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).permutation(n_total)[:n])


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
        entries = built["entries"]
        self.entries = [entries[i] for i in nested_subset(len(entries), self.options.n, self.options.seed)]
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
