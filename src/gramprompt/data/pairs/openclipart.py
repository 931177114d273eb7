"""Openclipart image-text pairs, built from locally installed Debian packages (no download).

The openclipart-png images are captioned from the Dublin Core metadata (title, description,
keywords) of their openclipart-svg twins. Parsed captions and a PNG index are cached under
``gramprompt.data.cache_dir()`` so only the first call pays for them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gramprompt.data import cache_dir
from gramprompt.data.dataset import DatasetError
from gramprompt.data.pairs._cache import _read_json, _write_json, normalize_text
from gramprompt.data.pairs.base import ImageTextPair, PairScan

logger = logging.getLogger(__name__)

OPENCLIPART_PNG = "/usr/share/openclipart/png"
OPENCLIPART_SVG = "/usr/share/openclipart/svg"

OPENCLIPART_INSTALL = (
    "openclipart pairs need the Debian packages openclipart-png and openclipart-svg: "
    "sudo apt-get install openclipart-png openclipart-svg"
)

MAX_CAPTION_CHARS = 300
# A few openclipart PNGs are 10k-30k pixels a side (up to 623 Mpx); decoding one takes
# seconds and gigabytes, so images above 4096 x 4096 pixels are left out.
MAX_PIXELS = 4096 * 4096
# Titles shared by this many files name a collection ("Lemon SVG theme"), not the picture.
COLLECTION_TITLE_MIN_FILES = 10

_HEAD_BYTES = 64 * 1024
_CACHE_VERSION = 4  # bump when caption or index rules change, to invalidate old caches
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DC = "{http://purl.org/dc/elements/1.1/}"
_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"


# --------------------------------------------------------------------------- caching


def _cache_file(cache: str | os.PathLike | None, stem: str, *key: object) -> Path:
    digest = hashlib.sha1(json.dumps([_CACHE_VERSION, *key]).encode()).hexdigest()[:16]
    base = Path(cache) if cache is not None else cache_dir() / "openclipart"
    return base / f"{stem}-{digest}.json"


# --------------------------------------------------------------------------- PNG index


@dataclass(frozen=True)
class PngInfo:
    """A PNG under a root: posix path relative to it, IHDR size and content digest."""

    rel: str
    width: int
    height: int
    sha1: str


def _png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the IHDR chunk, without decoding (and without PIL's bomb check)."""
    if len(data) < 24 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _list_files(root: Path, suffix: str) -> list[str]:
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.lower().endswith(suffix):
                found.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(found)


def png_index(root: str | os.PathLike, cache: str | os.PathLike | None = None) -> list[PngInfo]:
    """Every ``*.png`` under ``root`` in sorted order; unreadable headers get size (0, 0).

    Cached per (root, file count): reading 8121 clipart files for their digests is the
    slow part, and the digests are what exposes the package's byte-identical copies.
    """
    root = Path(root)
    rels = _list_files(root, ".png")
    path = _cache_file(cache, "png-index", str(root.resolve()), len(rels))
    cached = _read_json(path)
    if cached is not None:
        return [PngInfo(**row) for row in cached]
    index = []
    for rel in rels:
        data = (root / rel).read_bytes()
        width, height = _png_size(data) or (0, 0)
        index.append(PngInfo(rel, width, height, hashlib.sha1(data).hexdigest()))
    _write_json(path, [asdict(info) for info in index])
    return index


def usable_pngs(index: Iterable[PngInfo], counts: Counter[str] | None = None) -> list[PngInfo]:
    """Drop files that are not PNGs or exceed ``MAX_PIXELS``, counting each reason."""
    counts = counts if counts is not None else Counter()
    kept = []
    for info in index:
        if info.width <= 0 or info.height <= 0:
            counts["bad_png"] += 1
        elif info.width * info.height > MAX_PIXELS:
            counts["oversized_png"] += 1
        else:
            kept.append(info)
    return kept


# --------------------------------------------------------------------------- SVG captions


@dataclass
class SvgMeta:
    """Dublin Core fields of an SVG's ``<metadata>`` block (the ``cc:Work`` ones)."""

    title: str = ""
    description: str = ""
    keywords: list[str] = field(default_factory=list)


def _closing_metadata_end(data: bytes) -> int:
    """Index just past the first ``</metadata>`` (any namespace prefix), or -1."""
    start = 0
    while (i := data.find(b"metadata>", start)) >= 0:
        lt = data.rfind(b"<", 0, i)
        tag = data[lt + 1 : i]
        if lt >= 0 and tag.startswith(b"/") and not any(c in tag for c in b" \t\r\n>"):
            return i + len(b"metadata>")
        start = i + 1
    return -1


def _metadata_bytes(path: Path) -> bytes:
    """The file up to the end of its metadata block: the first 64 KB usually suffice."""
    with open(path, "rb") as fh:
        data = fh.read(_HEAD_BYTES)
        end = _closing_metadata_end(data)
        if end < 0:
            data += fh.read()
            end = _closing_metadata_end(data)
    return data[:end] if end >= 0 else data


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def read_svg_metadata(path: str | os.PathLike) -> SvgMeta:
    """Parse title, description and ``dc:subject`` keywords; raises ``ET.ParseError``/``OSError``.

    An incremental parser is fed only the bytes up to ``</metadata>``, so the drawing
    itself (often megabytes) is never read. Titles inside ``cc:Agent`` (author names) are
    ignored by requiring the parent to be ``cc:Work``.
    """
    parser = ET.XMLPullParser(events=("start", "end"))
    parser.feed(_metadata_bytes(Path(path)))
    meta = SvgMeta()
    stack: list[str] = []
    for event, elem in parser.read_events():
        if event == "start":
            stack.append(elem.tag)
            continue
        stack.pop()
        parent = _local(stack[-1]) if stack else ""
        if elem.tag == f"{_DC}title" and parent == "Work" and not meta.title:
            meta.title = normalize_text(elem.text)
        elif elem.tag == f"{_DC}description" and parent == "Work" and not meta.description:
            meta.description = normalize_text(elem.text)
        elif elem.tag == f"{_RDF}li" and f"{_DC}subject" in stack:
            meta.keywords.append(normalize_text(elem.text))
        elif elem.tag == f"{_DC}subject" and len(elem) == 0:  # plain "a, b" subject text
            meta.keywords.extend(normalize_text(k) for k in (elem.text or "").split(","))
        if _local(elem.tag) == "metadata":
            break
    return meta


def clean_keywords(keywords: Iterable[str]) -> list[str]:
    """Drop empties and case-insensitive repeats; ``signs_and_symbols`` -> ``signs and symbols``."""
    seen: set[str] = set()
    out = []
    for kw in keywords:
        kw = normalize_text(kw.replace("_", " "))
        if kw and kw.casefold() not in seen:
            seen.add(kw.casefold())
            out.append(kw)
    return out


def filename_words(rel: str) -> str:
    """Readable words of a file name: ``smiley119_architetto_01.png`` -> ``smiley architetto``.

    Trailing numbering is stripped from each token; tokens that still hold digits
    (``22pt03step``) and single letters carry no meaning and are dropped.
    """
    stem = Path(rel).stem
    for sep in "_-.":
        stem = stem.replace(sep, " ")
    words = (t.rstrip("0123456789") for t in stem.split())
    return " ".join(w for w in words if len(w) > 1 and not any(c.isdigit() for c in w))


def _title_family(title: str) -> str:
    """``Clipart by Nicu Buculei - fc23`` -> ``clipart by nicu buculei``: collections often
    share a title prefix (with a suffix that is not even reliably the right picture)."""
    return title.split(" - ", 1)[0].casefold()


def _is_placeholder(description: str, title: str) -> bool:
    """Descriptions that repeat the title or are just a URL/e-mail add nothing to a caption."""
    low = description.casefold()
    return low == title.casefold() or any(m in low for m in ("http://", "https://", "www.", "@"))


def truncate_words(text: str, limit: int = MAX_CAPTION_CHARS) -> str:
    """Cut at a word boundary so captions stay short enough for a 77-token text encoder."""
    if len(text) <= limit:
        return text
    cut = text[: limit + 1].rsplit(" ", 1)[0] if " " in text[:limit] else text[:limit]
    return cut.rstrip(" ,.;:")


def build_caption(title: str, description: str, keywords: Iterable[str]) -> str:
    """``title. description. kw1, kw2`` with empty or placeholder parts dropped."""
    title, description = normalize_text(title), normalize_text(description)
    if _is_placeholder(description, title):
        description = ""
    parts = [p.rstrip(" .") for p in (title, description, ", ".join(clean_keywords(keywords)))]
    return truncate_words(". ".join(p for p in parts if p))


def _svg_meta_or_empty(svg: Path, counts: Counter[str]) -> SvgMeta:
    """A missing or malformed SVG is counted and gives empty metadata (file-name fallback)."""
    if not svg.is_file():
        counts["missing_svg"] += 1
        return SvgMeta()
    try:
        return read_svg_metadata(svg)
    except (ET.ParseError, OSError, UnicodeError, ValueError) as exc:
        counts["malformed_svg"] += 1
        logger.debug("unparseable SVG %s: %s", svg, exc)
        return SvgMeta()


def _build_openclipart(root_png: Path, root_svg: Path, index: list[PngInfo]) -> PairScan:
    counts: Counter[str] = Counter(png_files=len(index))
    images = usable_pngs(index, counts)
    first_of: dict[str, str] = {}
    records = []
    for info in images:
        if info.sha1 in first_of:  # byte-identical copy filed under another path
            counts["duplicate_png"] += 1
            continue
        first_of[info.sha1] = info.rel
        svg = root_svg / (info.rel[: -len(".png")] + ".svg")
        records.append((info.rel, _svg_meta_or_empty(svg, counts)))
    family_files = Counter(_title_family(m.title) for _, m in records if m.title)
    pairs = []
    for rel, meta in records:
        name = filename_words(rel)
        title = meta.title
        if not title or family_files[_title_family(title)] >= COLLECTION_TITLE_MIN_FILES:
            counts["filename_title"] += bool(name)
            title = name
        caption = build_caption(title, meta.description, meta.keywords)
        if not caption:
            counts["no_caption"] += 1
            continue
        pairs.append(ImageTextPair(
            key=rel[: -len(".png")],
            source=str(root_png / rel),
            caption=caption,
            meta={"category": rel.split("/", 1)[0], "title": meta.title,
                  "keywords": clean_keywords(meta.keywords), "name": name},
        ))
    pairs.sort(key=lambda p: p.key)  # path order differs: "a-b.png" < "a.png" but "a" < "a-b"
    counts["pairs"] = len(pairs)
    return PairScan(pairs, dict(sorted(counts.items())))


def scan_openclipart(
    root_png: str | os.PathLike = OPENCLIPART_PNG,
    root_svg: str | os.PathLike = OPENCLIPART_SVG,
    cache: str | os.PathLike | None = None,
) -> PairScan:
    """Openclipart pairs with skip counts; cached as JSON per (roots, PNG count).

    Captions follow ``build_caption``. The title is replaced by the file-name words when it
    is empty, when the SVG is missing or malformed, or when it is a collection title (its
    part before `` - `` shared by ``COLLECTION_TITLE_MIN_FILES`` or more files). Oversized
    images, non-PNGs and byte-identical copies (first sorted path kept) are left out and
    counted.
    """
    root_png, root_svg = Path(root_png), Path(root_svg)
    if not root_png.is_dir() or not root_svg.is_dir():
        raise DatasetError(OPENCLIPART_INSTALL)
    index = png_index(root_png, cache)
    path = _cache_file(cache, "pairs", str(root_png.resolve()), str(root_svg.resolve()), len(index))
    cached = _read_json(path)
    if cached is not None:
        return PairScan([ImageTextPair(**p) for p in cached["pairs"]], cached["counts"])
    scan = _build_openclipart(root_png, root_svg, index)
    _write_json(path, {"counts": scan.counts, "pairs": [asdict(p) for p in scan.pairs]})
    logger.info("openclipart pairs: %s", scan.counts)
    return scan


def openclipart_pairs(
    root_png: str | os.PathLike = OPENCLIPART_PNG,
    root_svg: str | os.PathLike = OPENCLIPART_SVG,
    cache: str | os.PathLike | None = None,
) -> list[ImageTextPair]:
    """Openclipart PNGs captioned from their SVG twins' metadata, sorted by key."""
    return scan_openclipart(root_png, root_svg, cache).pairs
