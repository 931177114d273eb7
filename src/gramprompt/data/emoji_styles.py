"""Cross-domain targets for ``emoji-groups``: the same emoji classes in other drawing styles.

The analogue of ImageNet -> ImageNet-Sketch/-R: train (or prompt-tune) on ``emoji-groups``
(Noto Color Emoji) and test on the same nine Unicode groups drawn otherwise, with nothing to
train on (``train=[]``, every usable image in ``test``):

- ``emoji-groups-symbola``: black outline glyphs of the monochrome font Symbola
  (Debian ``fonts-symbola``), rendered here with Pillow;
- ``emoji-groups-emojione``: EmojiOne 3 artwork (Debian ``ruby-gemojione``), composited on white.

Both label an emoji by its group in Unicode's emoji-test.txt, parsed by the Noto source, and
cache their PNGs under ``gramprompt.data.cache_dir()`` so only the first call draws anything.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageFont

from gramprompt.data import cache_dir
from gramprompt.data.dataset import ClassificationDataset, DatasetError, Sample
from gramprompt.data.images import load_image
from gramprompt.data.offline import load_emoji_groups, readable
from gramprompt.data.pairs._cache import _read_json, _write_json
from gramprompt.data.pairs.base import ImageTextPair, PairScan
from gramprompt.data.pairs.noto_emoji import (
    EMOJI_CANVAS,
    EMOJI_TEST,
    EmojiEntry,
    _save_png,
    glyph_ink,
    parse_emoji_test,
)

logger = logging.getLogger(__name__)

SYMBOLA_FONT = "/usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf"
EMOJIONE_PNG = "/usr/share/rubygems-integration/all/gems/gemojione-3.3.0/assets/png"

SYMBOLA_INSTALL = (
    "emoji-groups-symbola needs the Debian packages fonts-symbola and unicode-data: "
    "sudo apt-get install fonts-symbola unicode-data"
)
EMOJIONE_INSTALL = (
    "emoji-groups-emojione needs the Debian packages ruby-gemojione (3.3.0) and unicode-data: "
    "sudo apt-get install ruby-gemojione unicode-data"
)

# U+FE0F asks for emoji presentation and U+200D joins; neither is a picture by itself.
VARIATION_SELECTOR_16 = 0xFE0F
ZWJ = 0x200D
INVISIBLE = frozenset({VARIATION_SELECTOR_16, ZWJ})
REGIONAL_INDICATORS = range(0x1F1E6, 0x1F1FF + 1)
SKIN_TONES = range(0x1F3FB, 0x1F3FF + 1)

# Symbola is drawn at one size on Noto's 136 x 128 canvas so both domains share a frame: at
# 112 px the median glyph is ~100 px high, like Noto's; the few wider than the canvas less a
# 4 px margin are shrunk to fit rather than cut off.
SYMBOLA_FONT_SIZE = 112
SYMBOLA_MARGIN = 4
DRAWN = "drawn"  # the verdict of an emoji that has an image
VERDICTS_FILE = "verdicts.json"


def _entries(emoji_test: Path) -> list[EmojiEntry]:
    with open(emoji_test, encoding="utf-8") as fh:
        return parse_emoji_test(fh)


def emoji_group_classnames(emoji_test: str | os.PathLike | None = None) -> list[str]:
    """emoji-groups' class names, order included, from emoji-test.txt alone.

    ``load_emoji_groups`` labels pairs without opening their images, so feeding it one
    placeholder pair per fully-qualified emoji applies its exact rule (skipped groups, minimum
    size, sorting) without needing the Noto font or its renderings.
    """
    entries = _entries(Path(emoji_test or EMOJI_TEST))
    pairs = [ImageTextPair(e.key, e.key, e.name, {"group": e.group, "subgroup": e.subgroup})
             for e in entries]
    return load_emoji_groups(pairs=pairs).classnames


def _pair(entry: EmojiEntry, source: Path) -> ImageTextPair:
    return ImageTextPair(
        key=entry.key, source=str(source), caption=entry.name,
        meta={"group": entry.group, "subgroup": entry.subgroup, "name": entry.name},
    )


def _style_dir(cache: str | os.PathLike | None, style: str, source: Path, tag: str) -> Path:
    """Drawings depend on the installed files and our drawing constants: both pick the folder."""
    if cache is not None:
        return Path(cache)
    stat = source.stat()
    return cache_dir() / "emoji-styles" / style / f"{source.name}-{tag}-{stat.st_size}-{stat.st_mtime_ns}"


def target_dataset(name: str, scan: PairScan, classnames: Sequence[str]) -> ClassificationDataset:
    """All pairs as test samples labelled by group; groups outside ``classnames`` dropped."""
    index = {c: i for i, c in enumerate(classnames)}
    test = [Sample(p.source, index[readable(p.meta["group"])]) for p in scan.pairs
            if readable(p.meta["group"]) in index]
    return ClassificationDataset(name=name, classnames=list(classnames), train=[], test=test)


# --------------------------------------------------------------------------- Symbola


def symbola_verdict(codepoints: Sequence[int], cmap: Mapping[int, str],
                    advances: Mapping[str, int]) -> str:
    """``DRAWN`` when the font shows the emoji as one glyph, else why it is skipped.

    Symbola has no ligatures for emoji sequences (its GSUB holds none), so a sequence is one
    picture only when exactly one of its codepoints advances the pen: a base plus zero-width
    marks such as the enclosing keycap U+20E3. Otherwise the reason says what the font would
    have to join: a ZWJ sequence, a flag (regional-indicator pair) or a skin-tone modifier.
    """
    drawn = [cp for cp in codepoints if cp not in INVISIBLE]
    if not drawn or any(cp not in cmap for cp in drawn):
        return "not_in_font"
    if sum(advances[cmap[cp]] > 0 for cp in drawn) == 1:
        return DRAWN
    if ZWJ in codepoints:
        return "zwj_sequence"
    if all(cp in REGIONAL_INDICATORS for cp in drawn):
        return "flag_pair"
    if any(cp in SKIN_TONES for cp in drawn):
        return "skin_tone"
    return "multi_glyph"


def symbola_text(codepoints: Sequence[int]) -> str:
    """What is drawn: Symbola maps U+FE0F to an empty glyph, so leaving it out changes nothing."""
    return "".join(chr(cp) for cp in codepoints if cp not in INVISIBLE)


def font_glyphs(font_path: str | os.PathLike) -> tuple[dict[int, str], dict[str, int]]:
    """The font's cmap (codepoint -> glyph name) and advance widths, read with fontTools."""
    from fontTools.ttLib import TTFont  # installed with matplotlib; only needed when drawing

    with TTFont(os.fspath(font_path), lazy=True) as font:
        cmap = dict(font.getBestCmap())
        advances = {name: adv for name, (adv, _) in font["hmtx"].metrics.items()}
    return cmap, advances


def load_symbola(font_path: str | os.PathLike | None = None) -> ImageFont.FreeTypeFont:
    """Basic layout: no shaping is wanted (no ligatures exist) and it does not need libraqm."""
    return ImageFont.truetype(os.fspath(font_path or SYMBOLA_FONT), SYMBOLA_FONT_SIZE,
                              layout_engine=ImageFont.Layout.BASIC)


def render_outline(text: str, font: ImageFont.FreeTypeFont) -> Image.Image | None:
    """Black antialiased glyph centred on a white ``EMOJI_CANVAS``; ``None`` if it draws blank."""
    ink = glyph_ink(text, font)
    if ink is None:
        return None
    width, height = EMOJI_CANVAS
    room = (width - 2 * SYMBOLA_MARGIN, height - 2 * SYMBOLA_MARGIN)
    scale = min(1.0, room[0] / ink.width, room[1] / ink.height)
    if scale < 1.0:
        ink = ink.resize((max(1, round(ink.width * scale)), max(1, round(ink.height * scale))),
                         Image.Resampling.LANCZOS)
    canvas = Image.new("L", EMOJI_CANVAS, 255)
    canvas.paste(0, ((width - ink.width) // 2, (height - ink.height) // 2), mask=ink)
    return canvas.convert("RGB")


def scan_symbola(
    cache: str | os.PathLike | None = None,
    font_path: str | os.PathLike | None = None,
    emoji_test: str | os.PathLike | None = None,
) -> PairScan:
    """Draw (once) every fully-qualified emoji Symbola can show as one glyph; count the rest.

    The verdict of every emoji is cached with the PNGs, so later calls open neither the font
    nor any image. Counts: ``entries``, ``drawn`` and one key per skip reason.
    """
    font_path = Path(font_path or SYMBOLA_FONT)
    emoji_test = Path(emoji_test or EMOJI_TEST)
    if not font_path.is_file() or not emoji_test.is_file():
        raise DatasetError(SYMBOLA_INSTALL)
    entries = _entries(emoji_test)
    out_dir = _style_dir(cache, "symbola", font_path, f"s{SYMBOLA_FONT_SIZE}m{SYMBOLA_MARGIN}")
    out_dir.mkdir(parents=True, exist_ok=True)
    verdicts: dict[str, str] = _read_json(out_dir / VERDICTS_FILE) or {}
    present = set(os.listdir(out_dir))
    font: ImageFont.FreeTypeFont | None = None
    glyphs: tuple[dict[int, str], dict[str, int]] | None = None
    changed = False
    counts: Counter[str] = Counter(entries=len(entries))
    pairs = []
    for entry in entries:
        png = f"{entry.key}.png"
        verdict = verdicts.get(entry.key)
        if verdict is None or (verdict == DRAWN and png not in present):
            if glyphs is None:
                glyphs, font = font_glyphs(font_path), load_symbola(font_path)
            verdict = symbola_verdict(entry.codepoints, *glyphs)
            if verdict == DRAWN:
                img = render_outline(symbola_text(entry.codepoints), font)
                if img is None:
                    verdict = "blank"
                else:
                    _save_png(img, out_dir / png)
            verdicts[entry.key] = verdict
            changed = True
        counts[verdict] += 1
        if verdict == DRAWN:
            pairs.append(_pair(entry, out_dir / png))
    if changed:
        _write_json(out_dir / VERDICTS_FILE, verdicts)
        logger.info("symbola emoji: %s", dict(counts))
    return PairScan(pairs, dict(sorted(counts.items())))


def load_emoji_groups_symbola(scan: PairScan | None = None) -> ClassificationDataset:
    """emoji-groups' classes drawn in Symbola's black outlines; test-only."""
    return target_dataset("emoji-groups-symbola", scan_symbola() if scan is None else scan,
                          emoji_group_classnames())


# --------------------------------------------------------------------------- EmojiOne


def emojione_key(codepoints: Sequence[int]) -> tuple[int, ...]:
    """The codepoints an EmojiOne file is named by: without U+FE0F and U+200D.

    gemojione's own index.json (``unicode`` = file name, ``unicode_alternates`` = full
    sequence) confirms it, e.g. ``1F468-1F469-1F467.png`` is ``1F468 200D 1F469 200D 1F467``
    and ``0023-20E3.png`` is ``0023 FE0F 20E3``.
    """
    return tuple(cp for cp in codepoints if cp not in INVISIBLE)


def emojione_files(png_dir: str | os.PathLike) -> dict[tuple[int, ...], Path]:
    """``1F1E6-1F1E8.png`` -> ``(0x1F1E6, 0x1F1E8)``; names that are not hex codepoints ignored."""
    files = {}
    for path in sorted(Path(png_dir).glob("*.png")):
        try:
            files[tuple(int(part, 16) for part in path.stem.split("-"))] = path
        except ValueError:
            continue
    return files


def scan_emojione(
    cache: str | os.PathLike | None = None,
    png_dir: str | os.PathLike | None = None,
    emoji_test: str | os.PathLike | None = None,
) -> PairScan:
    """Every fully-qualified emoji with EmojiOne art, composited once on white into ``cache``.

    Counts: ``entries``, ``drawn``, ``no_art`` (emoji without a file: mostly newer than
    EmojiOne 3, ZWJ professions and their skin tones) and ``unmatched_files`` (files naming no
    fully-qualified emoji: skin-tone swatches, wrestlers with skin tones).
    """
    png_dir = Path(png_dir or EMOJIONE_PNG)
    emoji_test = Path(emoji_test or EMOJI_TEST)
    if not png_dir.is_dir() or not emoji_test.is_file():
        raise DatasetError(EMOJIONE_INSTALL)
    entries = _entries(emoji_test)
    files = emojione_files(png_dir)
    out_dir = _style_dir(cache, "emojione", png_dir, png_dir.parent.parent.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    present = set(os.listdir(out_dir))
    counts: Counter[str] = Counter(entries=len(entries))
    used: set[tuple[int, ...]] = set()
    pairs = []
    for entry in entries:
        key = emojione_key(entry.codepoints)
        art = files.get(key)
        if art is None:
            counts["no_art"] += 1
            continue
        used.add(key)
        png = f"{entry.key}.png"
        if png not in present:
            _save_png(load_image(art), out_dir / png)  # load_image composites alpha on white
            counts["composited"] += 1
        counts[DRAWN] += 1
        pairs.append(_pair(entry, out_dir / png))
    counts["unmatched_files"] = len(files) - len(used)
    if counts["composited"]:
        logger.info("emojione emoji: %s", dict(counts))
    del counts["composited"]
    return PairScan(pairs, dict(sorted(counts.items())))


def load_emoji_groups_emojione(scan: PairScan | None = None) -> ClassificationDataset:
    """emoji-groups' classes in EmojiOne 3 art (64 x 64); test-only."""
    return target_dataset("emoji-groups-emojione", scan_emojione() if scan is None else scan,
                          emoji_group_classnames())


EMOJI_STYLE_DATASETS: dict[str, Callable[[], ClassificationDataset]] = {
    "emoji-groups-symbola": load_emoji_groups_symbola,
    "emoji-groups-emojione": load_emoji_groups_emojione,
}
