"""Icon sets of the Iconify collection (npm ``@iconify/json``) as image-text pairs.

The package holds ~276 open icon sets (~480k icons) as SVG bodies in ``json/<prefix>.json`` and each
set's licence, author and category in ``collections.json``. Many concepts recur across sets drawn in
different styles, which is what CHC needs: semantic topics, each in several visual domains.

This module reads the files and decides what a pair is (selection, SVG, caption); rendering, hashing,
de-duplication and the sharded source are in ``iconify_render``, ``image_hash`` and
``iconify_source``. Captions hold what the data says about an icon and nothing else: its name as words
(with the set's style words removed where they only mark a style variant, see ``caption_name``) and
the set's own theme category of the icon where the set has categories.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gramprompt.data.dataset import DatasetError

ICONIFY_VERSION = "2.2.553"  # the pinned npm version `make setup` installs
ICONIFY_PACKAGE = f"@iconify/json@{ICONIFY_VERSION}"
ICONIFY_ENV = "GRAM_ICONIFY"  # an unpacked copy of the package (the folder holding collections.json)

# SPDX identifiers allowed by default: permissive licences only (no non-commercial, no copyleft).
PERMISSIVE_LICENSES = frozenset({
    "MIT", "Apache-2.0", "ISC", "BSD-2-Clause", "BSD-3-Clause", "Unlicense", "OFL-1.1", "CC0-1.0",
    "CC-BY-3.0", "CC-BY-4.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0",
})

# Words that name how an icon is drawn, not what it shows (icon-set naming conventions: Material's
# baseline/outline/round/sharp/twotone, Fluent's regular/filled and sizes, Phosphor's thin/light/bold/
# duotone, Iconsax's linear/bulk/broken, ...). They are removed only at either end of a name and only
# where the remaining name is shared by another icon of the set (see ``caption_name``).
STYLE_WORDS = frozenset({
    "outline", "outlined", "line", "linear", "fill", "filled", "solid", "bold", "regular", "light", "thin",
    "sharp", "round", "rounded", "duotone", "twotone", "duo", "duocolor", "bulk", "broken",
    "flat", "alt", "baseline", "sketch", "blueprint", "gloss", "engrave", "stroke", "glyph", "o",
})
_NUMBER = re.compile(r"^(10|12|16|20|24|28|32|36|40|48|64|96|\d+px)$")  # pixel sizes (16, 24px)


@dataclass(frozen=True)
class IconSet:
    """One icon set of ``collections.json``: its prefix and the fields recorded for attribution."""

    prefix: str
    name: str
    license: str  # SPDX id ("" when the set gives none)
    license_title: str
    author: str
    url: str
    category: str  # the collection's category ("UI 24px", "Emoji", "Logos", ...)
    total: int
    palette: bool  # multicolour

    def attribution(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "name": self.name, "license": self.license or self.license_title,
                "author": self.author, "url": self.url}


@dataclass(frozen=True)
class Icon:
    """One icon as a pair to render: ``key`` = ``prefix/name``, a full SVG document, its caption."""

    key: str
    svg: str
    caption: str
    meta: dict[str, Any] = field(hash=False, compare=False)


@dataclass
class Selection:
    """Which sets to use. Empty tuples mean "no restriction"; ``licenses`` None = the permissive set."""

    sets: tuple[str, ...] = ()  # only these prefixes
    categories: tuple[str, ...] = ()  # only sets of these collection categories (case-insensitive)
    licenses: tuple[str, ...] | None = None  # SPDX ids; None = PERMISSIVE_LICENSES
    exclude_sets: tuple[str, ...] = ()  # never these prefixes

    def allowed_licenses(self) -> frozenset[str]:
        return PERMISSIVE_LICENSES if self.licenses is None else frozenset(self.licenses)


# --------------------------------------------------------------------------- the package on disk


def find_iconify_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding ``collections.json`` and ``json/``: ``root`` if given, else ``$GRAM_ICONIFY``,
    else the copy `make setup` installs (``.cache/npm`` of the checkout, or the user cache)."""
    from gramprompt.data import cache_dir

    if root is None and os.environ.get(ICONIFY_ENV):
        root = os.environ[ICONIFY_ENV]
    if root is not None:
        candidates = [Path(root).expanduser(), Path(root).expanduser() / "node_modules" / "@iconify" / "json"]
    else:
        repo = Path(__file__).resolve().parents[4]
        candidates = [base / "node_modules" / "@iconify" / "json" for base in (repo / ".cache" / "npm", cache_dir() / "npm")]
    for path in candidates:
        if (path / "collections.json").is_file() and (path / "json").is_dir():
            return path
    raise DatasetError(
        f"no Iconify icon sets found (looked in {', '.join(str(p) for p in candidates)}). Install them with "
        f"`npm install --prefix {cache_dir() / 'npm'} {ICONIFY_PACKAGE}` (`make setup` does), or point "
        f"${ICONIFY_ENV} or `root=` at an unpacked copy of the package")


def read_collections(root: Path) -> list[IconSet]:
    """Every set listed in ``collections.json``, sorted by prefix."""
    try:
        data = json.loads((root / "collections.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{root / 'collections.json'}: not a readable Iconify collections file ({exc})") from exc
    sets = []
    for prefix, info in sorted(data.items()):
        lic, author = info.get("license") or {}, info.get("author") or {}
        sets.append(IconSet(prefix, str(info.get("name", prefix)), str(lic.get("spdx", "")), str(lic.get("title", "")),
                            str(author.get("name", "")), str(author.get("url", "")), str(info.get("category", "")),
                            int(info.get("total", 0)), bool(info.get("palette", False))))
    return sets


def select_sets(sets: Sequence[IconSet], sel: Selection, counts: Counter[str] | None = None) -> list[IconSet]:
    """The sets ``sel`` keeps, counting the icons (``total``) each rule leaves out."""
    counts = counts if counts is not None else Counter()
    known = {s.prefix for s in sets}
    unknown = sorted(set(sel.sets) - known)
    if unknown:
        raise DatasetError(f"unknown Iconify set prefix(es): {', '.join(unknown)}")
    allowed = sel.allowed_licenses()
    cats = {c.casefold() for c in sel.categories}
    kept = []
    for s in sets:
        if sel.sets and s.prefix not in sel.sets:
            continue  # not asked for: not counted as an exclusion
        if s.prefix in sel.exclude_sets:
            counts["excluded_set_icons"] += s.total
        elif cats and s.category.casefold() not in cats:
            continue
        elif s.license not in allowed:
            counts["licence_icons"] += s.total
        else:
            kept.append(s)
    if not kept:
        raise DatasetError("the Iconify selection keeps no icon set (check the sets, categories and licences)")
    return kept


def read_set(root: Path, prefix: str) -> dict[str, Any]:
    path = root / "json" / f"{prefix}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable Iconify set ({exc})") from exc
    if not isinstance(data.get("icons"), dict):
        raise DatasetError(f"{path}: no `icons` object")
    return data


# --------------------------------------------------------------------------- SVG and captions


def icon_svg(icon: dict[str, Any], defaults: dict[str, Any], size: int) -> str:
    """A standalone SVG of ``size`` x ``size`` px: the icon's view box fitted and centred, and
    ``currentColor`` (monochrome sets) drawn black."""
    box = [icon.get(k, defaults.get(k, d)) for k, d in (("left", 0), ("top", 0), ("width", 16), ("height", 16))]
    view = " ".join(f"{float(v):g}" for v in box)
    body = str(icon["body"]).replace("currentColor", "#000")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'width="{size}" height="{size}" viewBox="{view}">{body}</svg>')


def _core(tokens: list[str]) -> list[str]:
    """``tokens`` without style words and pixel sizes at either end (at least one token kept)."""
    lo, hi = 0, len(tokens)
    while hi - lo > 1 and (tokens[hi - 1] in STYLE_WORDS or _NUMBER.match(tokens[hi - 1])):
        hi -= 1
    while hi - lo > 1 and (tokens[lo] in STYLE_WORDS or _NUMBER.match(tokens[lo])):
        lo += 1
    return tokens[lo:hi]


def caption_names(names: Iterable[str], drop_style: bool = True) -> dict[str, str]:
    """Each icon name of one set as caption words: ``arrow-left-bold`` -> ``arrow left``.

    A name's style words (``STYLE_WORDS``) and pixel sizes at either end are dropped only
    where what remains is shared, i.e. it is itself a name of the set or the remainder of at least two
    names (``home-outline`` and ``home-fill`` -> ``home``): there they mark a variant of one concept.
    Elsewhere the word may be the concept (``format-bold``, ``line``) and is kept.
    """
    names = list(names)
    tokens = {n: [t for t in re.split(r"[-_:\s]+", n.lower()) if t] for n in names}
    cores = {n: _core(t) for n, t in tokens.items()}
    shared = Counter(" ".join(c) for c in cores.values())
    plain = {" ".join(t) for t in tokens.values()}
    out = {}
    for n in names:
        core = " ".join(cores[n])
        keep = drop_style and (shared[core] >= 2 or core in plain)
        out[n] = core if keep else " ".join(tokens[n])
    return out


def readable_category(text: str) -> str:
    """``Account / User`` -> ``account, user``; ``Arrows & Directions`` -> ``arrows and directions``."""
    text = text.replace("&", " and ").replace("/", ",").replace("_", " ").replace("-", " ")
    parts = (" ".join(p.lower().split()) for p in text.split(","))
    return ", ".join(p for p in parts if p)


def icon_categories(data: dict[str, Any]) -> dict[str, str]:
    """name -> the first theme category (in the set's order) that lists the icon."""
    out: dict[str, str] = {}
    for theme, names in (data.get("categories") or {}).items():
        for name in names if isinstance(names, list) else ():
            out.setdefault(str(name), str(theme))
    return out


def set_icons(data: dict[str, Any], iconset: IconSet, size: int, drop_style: bool = True,
              counts: Counter[str] | None = None) -> list[Icon]:
    """The drawable icons of one parsed set, sorted by name. Aliases (other names, or flipped and
    rotated copies, of an icon) and hidden (deprecated) icons are left out and counted."""
    counts = counts if counts is not None else Counter()
    counts["aliases"] += len(data.get("aliases") or {})
    defaults = {k: data[k] for k in ("left", "top", "width", "height") if k in data}
    icons = {}
    for name, icon in data["icons"].items():
        if not isinstance(icon, dict) or not isinstance(icon.get("body"), str) or not icon["body"].strip():
            counts["bad_icon"] += 1
        elif icon.get("hidden"):
            counts["hidden_icon"] += 1
        else:
            icons[str(name)] = icon
    words = caption_names(icons, drop_style)
    themes = icon_categories(data)
    out = []
    for name in sorted(icons):
        theme = themes.get(name, "")
        caption = words[name] + (f". {readable_category(theme)}" if theme else "")
        meta = {"set": iconset.prefix, "name": name, "category": theme, "set_category": iconset.category,
                "license": iconset.license, "palette": iconset.palette}
        out.append(Icon(f"{iconset.prefix}/{name}", icon_svg(icons[name], defaults, size), caption, meta))
    return out
