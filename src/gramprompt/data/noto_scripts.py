"""``noto-scripts``: single letters rendered from Debian's Noto fonts, labelled by writing system.

A glyph-kind base-to-new set whose class names read well in a prompt ("a photo of a greek
letter"). Each letter (Unicode General Category Lu/Ll/Lo without a decomposition) is drawn in
every Noto font of its script that covers it; the label is its Unicode Script property.
Renderings are cached under ``gramprompt.data.cache_dir()`` so only the first call draws, and
the train/test split is grouped by code point: the Sans/Serif/Bold renderings of one letter
are near-duplicates and must never sit on both sides.
"""
from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

from PIL import Image, ImageFont

from gramprompt.data import cache_dir
from gramprompt.data.dataset import ClassificationDataset, DatasetError, Sample
from gramprompt.data.pairs.noto_emoji import _save_png, glyph_ink
from gramprompt.data.splits import grouped_split

logger = logging.getLogger(__name__)

NOTO_FONT_DIR = "/usr/share/fonts/truetype/noto"
UNICODE_DIR = "/usr/share/unicode"

NOTO_SCRIPTS_INSTALL = (
    "noto-scripts needs the Debian packages fonts-noto-core and unicode-data: "
    "sudo apt-get install fonts-noto-core unicode-data"
)

# Why these 24: well-known writing systems a text encoder can name, each with >= 30 letters in
# fonts-noto-core 20201225-1 (Hangul/Han are in fonts-noto-cjk; obscure Vai, Yi, Thaana left
# out; so is Mongolian: drawn horizontally, its vertical-layout glyphs lie on their side).
# Key: Unicode Script value (class name = lower-cased); value: Noto families in preference
# order, each read as its -Regular and -Bold file.
SCRIPTS: dict[str, tuple[str, ...]] = {
    "Arabic": ("NotoNaskhArabic", "NotoSansArabic", "NotoKufiArabic"),
    "Armenian": ("NotoSansArmenian", "NotoSerifArmenian"),
    "Bengali": ("NotoSansBengali", "NotoSerifBengali"),
    "Cherokee": ("NotoSansCherokee",),
    "Cyrillic": ("NotoSans", "NotoSerif"),
    "Devanagari": ("NotoSansDevanagari", "NotoSerifDevanagari"),
    "Ethiopic": ("NotoSansEthiopic", "NotoSerifEthiopic"),
    "Georgian": ("NotoSansGeorgian", "NotoSerifGeorgian"),
    "Greek": ("NotoSans", "NotoSerif"),
    "Gujarati": ("NotoSansGujarati", "NotoSerifGujarati"),
    "Gurmukhi": ("NotoSansGurmukhi", "NotoSerifGurmukhi"),
    "Hebrew": ("NotoSansHebrew", "NotoSerifHebrew", "NotoRashiHebrew"),
    "Kannada": ("NotoSansKannada", "NotoSerifKannada"),
    "Khmer": ("NotoSansKhmer", "NotoSerifKhmer"),
    "Lao": ("NotoSansLao", "NotoSerifLao", "NotoLoopedLao"),
    "Latin": ("NotoSans", "NotoSerif"),
    "Malayalam": ("NotoSansMalayalam", "NotoSerifMalayalam"),
    "Myanmar": ("NotoSansMyanmar", "NotoSerifMyanmar"),
    "Runic": ("NotoSansRunic",),
    "Sinhala": ("NotoSansSinhala", "NotoSerifSinhala"),
    "Tamil": ("NotoSansTamil", "NotoSerifTamil"),
    "Telugu": ("NotoSansTelugu", "NotoSerifTelugu"),
    "Thai": ("NotoSansThai", "NotoSerifThai", "NotoLoopedThai"),
    "Tibetan": ("NotoSerifTibetan",),
}
FONT_STYLES = ("Regular", "Bold")
MAX_FONTS = 4  # per script: Sans/Serif x Regular/Bold, so a script with many fonts cannot dominate
# Letters per script: the first N covered code points, which for most scripts is the core
# alphabet (A-Z a-n for Latin); keeps classes balanced (Latin alone has 627 covered letters).
MAX_LETTERS = 40
MIN_IMAGES = 20  # a script with fewer images after unreadable fonts are skipped is dropped
LETTER_CATEGORIES = frozenset({"Lu", "Ll", "Lo"})

# Drawn at one size with basic layout (no shaping library needed, identical on every machine),
# centred on the ink bounding box; the few glyphs taller or wider than the canvas less a margin
# (stacked Tibetan, wide Ethiopic) are shrunk to fit.
FONT_SIZE = 64
CANVAS = 96
MARGIN = 4


def unicode_letters(unicode_dir: str | os.PathLike) -> dict[int, str]:
    """Code point -> Script value of every letter (Lu/Ll/Lo) without a decomposition.

    Canonical decompositions are precomposed diacritic variants (é, Ё); compatibility ones are
    presentation forms, ligatures and super/subscripts (Arabic FExx, ª): all are variants of
    another letter. UnicodeData's ``<..., First>``/``<..., Last>`` ranges (Han, Hangul, Tangut)
    are skipped: no script of ``SCRIPTS`` lies in one.
    """
    folder = Path(unicode_dir)
    letters = set()
    with open(folder / "UnicodeData.txt", encoding="utf-8") as fh:
        for line in fh:
            fields = line.split(";")
            if (fields[2] in LETTER_CATEGORIES and not fields[5]
                    and not fields[1].endswith(("First>", "Last>"))):
                letters.add(int(fields[0], 16))
    scripts = {}
    with open(folder / "Scripts.txt", encoding="utf-8") as fh:
        for line in fh:
            data = line.partition("#")[0]
            if not data.strip():
                continue
            span, _, script = data.partition(";")
            first, _, last = span.strip().partition("..")
            for cp in range(int(first, 16), int(last or first, 16) + 1):
                if cp in letters:
                    scripts[cp] = script.strip()
    return scripts


def script_fonts(font_dir: str | os.PathLike, families: Iterable[str]) -> list[Path]:
    """The installed ``-Regular``/``-Bold`` files of ``families``, in order, at most ``MAX_FONTS``."""
    paths = (Path(font_dir) / f"{family}-{style}.ttf" for family in families for style in FONT_STYLES)
    return [p for p in paths if p.is_file()][:MAX_FONTS]


def font_codepoints(path: Path) -> set[int] | None:
    """The code points ``path``'s cmap maps, or ``None`` (with a warning) when it cannot be read."""
    from fontTools.ttLib import TTFont, TTLibError  # installed with matplotlib

    try:
        with TTFont(os.fspath(path), lazy=True) as font:
            return set(font.getBestCmap())
    except (OSError, TTLibError, KeyError, struct.error) as exc:  # KeyError: no cmap table
        logger.warning("noto-scripts: skipping unreadable font %s (%s)", path, exc)
        return None


def render_letter(char: str, font: ImageFont.FreeTypeFont) -> Image.Image | None:
    """Black glyph centred on its ink box on a white ``CANVAS`` square; ``None`` if it draws blank."""
    ink = glyph_ink(char, font)
    if ink is None:
        return None
    ink = ink.crop(ink.getbbox())
    room = CANVAS - 2 * MARGIN
    scale = min(1.0, room / ink.width, room / ink.height)
    if scale < 1.0:
        ink = ink.resize((max(1, round(ink.width * scale)), max(1, round(ink.height * scale))),
                         Image.Resampling.LANCZOS)
    canvas = Image.new("L", (CANVAS, CANVAS), 255)
    canvas.paste(0, ((CANVAS - ink.width) // 2, (CANVAS - ink.height) // 2), mask=ink)
    return canvas.convert("RGB")


def _font_cache(cache: Path, font: Path) -> Path:
    """Renderings depend on the font build, so its size and mtime pick the folder."""
    stat = font.stat()
    return cache / f"{font.stem}-{stat.st_size}-{stat.st_mtime_ns}"


def _render_font(font: Path, codepoints: Sequence[int], out_dir: Path) -> list[tuple[int, str]]:
    """(code point, PNG path) of ``codepoints`` drawn in ``font``; only missing PNGs are drawn."""
    out_dir.mkdir(parents=True, exist_ok=True)
    present = set(os.listdir(out_dir))
    pil_font: ImageFont.FreeTypeFont | None = None
    out = []
    for cp in codepoints:
        png = out_dir / f"{cp:04x}.png"
        if png.name not in present:
            if pil_font is None:
                try:
                    pil_font = ImageFont.truetype(os.fspath(font), FONT_SIZE,
                                                  layout_engine=ImageFont.Layout.BASIC)
                except OSError as exc:
                    logger.warning("noto-scripts: skipping unreadable font %s (%s)", font, exc)
                    return out
            img = render_letter(chr(cp), pil_font)
            if img is None:
                logger.warning("noto-scripts: U+%04X draws blank in %s; skipped", cp, font.name)
                continue
            _save_png(img, png)
        out.append((cp, str(png)))
    return out


def noto_script_images(
    scripts: Iterable[str] | None = None,
    max_letters: int = MAX_LETTERS,
    font_dir: str | os.PathLike | None = None,
    unicode_dir: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
) -> dict[str, list[tuple[int, str]]]:
    """Script -> (code point, PNG path) of its renderings, sorted by code point then font.

    ``scripts`` (Script values, default all of ``SCRIPTS``) and ``max_letters`` make subsets;
    scripts left with fewer than ``MIN_IMAGES`` images are dropped.
    """
    names = sorted(SCRIPTS if scripts is None else set(scripts))
    unknown = [s for s in names if s not in SCRIPTS]
    if unknown:
        raise ValueError(f"unknown script(s) {unknown}; known: {sorted(SCRIPTS)}")
    font_dir = Path(font_dir or NOTO_FONT_DIR)
    unicode_dir = Path(unicode_dir or UNICODE_DIR)
    fonts = {s: script_fonts(font_dir, SCRIPTS[s]) for s in names}
    if not any(fonts.values()) or not all(
            (unicode_dir / f).is_file() for f in ("UnicodeData.txt", "Scripts.txt")):
        raise DatasetError(NOTO_SCRIPTS_INSTALL)
    letters = unicode_letters(unicode_dir)
    root = Path(cache) if cache is not None else (
        cache_dir() / "noto-scripts" / f"s{FONT_SIZE}c{CANVAS}m{MARGIN}")
    out = {}
    for script in names:
        coverage = {path: font_codepoints(path) for path in fonts[script]}
        coverage = {path: cps for path, cps in coverage.items() if cps is not None}
        covered = set().union(*coverage.values())
        chosen = sorted(cp for cp, s in letters.items() if s == script and cp in covered)[:max_letters]
        images = [item for path, cps in coverage.items()
                  for item in _render_font(path, [cp for cp in chosen if cp in cps],
                                           _font_cache(root, path))]
        if len(images) < MIN_IMAGES:
            logger.warning("noto-scripts: dropping %s, %d image(s) < %d", script, len(images),
                           MIN_IMAGES)
            continue
        out[script] = sorted(images, key=lambda item: item[0])  # stable: font order kept
    return out


def load_noto_scripts(test_fraction: float = 0.3, seed: int = 0,
                      scripts: Iterable[str] | None = None, max_letters: int = MAX_LETTERS,
                      font_dir: str | os.PathLike | None = None,
                      unicode_dir: str | os.PathLike | None = None,
                      cache: str | os.PathLike | None = None) -> ClassificationDataset:
    """Letters labelled by script (classes sorted by name), split grouped by code point."""
    images = noto_script_images(scripts, max_letters, font_dir, unicode_dir, cache)
    classnames = [s.lower() for s in images]
    samples, groups = [], []
    for label, items in enumerate(images.values()):
        for cp, path in items:
            samples.append(Sample(path, label))
            groups.append(cp)
    train, test = grouped_split(samples, groups, classnames, test_fraction, seed)
    return ClassificationDataset(name="noto-scripts", classnames=classnames, train=train, test=test)
