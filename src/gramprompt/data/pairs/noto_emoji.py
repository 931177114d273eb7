"""Noto emoji image-text pairs, rendered from locally installed Debian packages (no download).

Every fully-qualified emoji of Unicode's emoji-test.txt is rendered once from Noto Color
Emoji and captioned with its CLDR name. Renderings are cached under
``gramprompt.data.cache_dir()`` so only the first call pays for them.
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from gramprompt.data import cache_dir
from gramprompt.data.dataset import DatasetError
from gramprompt.data.pairs._cache import _read_json, _write_json, normalize_text
from gramprompt.data.pairs.base import ImageTextPair, PairScan

logger = logging.getLogger(__name__)

NOTO_EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
EMOJI_TEST = "/usr/share/unicode/emoji/emoji-test.txt"

EMOJI_INSTALL = (
    "noto-emoji pairs need the Debian packages fonts-noto-color-emoji and unicode-data: "
    "sudo apt-get install fonts-noto-color-emoji unicode-data"
)

# Noto Color Emoji is a bitmap (CBDT) font whose strikes exist at size 109 only,
# drawn into a 136 x 128 glyph box.
EMOJI_FONT_SIZE = 109
EMOJI_CANVAS = (136, 128)


@dataclass(frozen=True)
class EmojiEntry:
    """One fully-qualified line of emoji-test.txt."""

    codepoints: tuple[int, ...]
    name: str
    group: str
    subgroup: str

    @property
    def text(self) -> str:
        return "".join(map(chr, self.codepoints))

    @property
    def key(self) -> str:
        """File-name-safe id, e.g. ``1f469-200d-1f4bc``."""
        return "-".join(f"{cp:x}" for cp in self.codepoints)


def parse_emoji_test(lines: Iterable[str]) -> list[EmojiEntry]:
    """Fully-qualified entries in file order, with their ``# group:``/``# subgroup:`` headers.

    Data lines look like ``1F600 ; fully-qualified # 😀 E1.0 grinning face``; the keycap
    ``#️⃣`` shows why only the first ``#`` separates the comment.
    """
    group = subgroup = ""
    entries = []
    for raw in lines:
        line = raw.strip()
        if line.startswith("# group:"):
            group = line.removeprefix("# group:").strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.removeprefix("# subgroup:").strip()
        elif line and not line.startswith("#"):
            data, _, comment = line.partition("#")
            cps, _, status = data.partition(";")
            if status.strip() != "fully-qualified":
                continue
            fields = comment.split(maxsplit=2)  # emoji, E<version>, name
            if len(fields) < 3 or not cps.split():
                continue
            entries.append(EmojiEntry(
                tuple(int(cp, 16) for cp in cps.split()), normalize_text(fields[2]), group, subgroup
            ))
    return entries


def load_emoji_font(path: str | os.PathLike = NOTO_EMOJI_FONT) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(os.fspath(path), EMOJI_FONT_SIZE)


def render_emoji(text: str, font: ImageFont.FreeTypeFont) -> Image.Image | None:
    """Centred RGB rendering on white, or ``None`` when the font cannot draw it as one glyph.

    Unsupported sequences come out either blank or as several glyphs side by side (wider
    than one glyph box); neither is a picture of the named emoji.
    """
    width, height = EMOJI_CANVAS
    left, top, right, bottom = font.getbbox(text)
    if right - left > 1.5 * width:
        return None
    canvas = Image.new("RGBA", EMOJI_CANVAS, (255, 255, 255, 0))
    xy = ((width - (right - left)) // 2 - left, (height - (bottom - top)) // 2 - top)
    ImageDraw.Draw(canvas).text(xy, text, font=font, embedded_color=True)
    if canvas.getchannel("A").getbbox() is None:
        return None
    background = Image.new("RGBA", EMOJI_CANVAS, (255, 255, 255, 255))
    background.alpha_composite(canvas)
    return background.convert("RGB")


def _save_png(img: Image.Image, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        img.save(fh, format="PNG", compress_level=1)
    os.replace(tmp, path)


def glyph_ink(text: str, font: ImageFont.FreeTypeFont) -> Image.Image | None:
    """``text`` drawn white on black ("L") in its own bounding box; ``None`` when it draws nothing."""
    left, top, right, bottom = font.getbbox(text)
    if right <= left or bottom <= top:
        return None
    ink = Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(ink).text((-left, -top), text, font=font, fill=255)
    return ink if ink.getbbox() is not None else None


def _emoji_render_dir(cache: str | os.PathLike | None, font_path: Path) -> Path:
    """Renderings depend on the font build, so its size and mtime pick the folder."""
    if cache is not None:
        return Path(cache)
    stat = font_path.stat()
    return cache_dir() / "noto-emoji" / f"{font_path.stem}-{stat.st_size}-{stat.st_mtime_ns}"


def scan_noto_emoji(
    cache: str | os.PathLike | None = None,
    font_path: str | os.PathLike = NOTO_EMOJI_FONT,
    emoji_test: str | os.PathLike = EMOJI_TEST,
) -> PairScan:
    """Render (once) every fully-qualified emoji into ``cache`` and pair it with its name.

    Later calls reuse the PNG files and a manifest of the emoji found unrenderable, so no
    glyph is drawn twice.
    """
    font_path, emoji_test = Path(font_path), Path(emoji_test)
    if not font_path.is_file() or not emoji_test.is_file():
        raise DatasetError(EMOJI_INSTALL)
    with open(emoji_test, encoding="utf-8") as fh:
        entries = parse_emoji_test(fh)
    out_dir = _emoji_render_dir(cache, font_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "unrenderable.json"
    unrenderable = set(_read_json(manifest_path) or [])
    present = set(os.listdir(out_dir))
    font: ImageFont.FreeTypeFont | None = None
    counts: Counter[str] = Counter(entries=len(entries))
    pairs = []
    for entry in entries:
        png = f"{entry.key}.png"
        if entry.key in unrenderable:
            counts["unrenderable"] += 1
            continue
        if png not in present:
            font = font or load_emoji_font(font_path)
            img = render_emoji(entry.text, font)
            if img is None:
                unrenderable.add(entry.key)
                counts["unrenderable"] += 1
                continue
            _save_png(img, out_dir / png)
            counts["rendered"] += 1
        pairs.append(ImageTextPair(
            key=entry.key,
            source=str(out_dir / png),
            caption=entry.name,
            meta={"group": entry.group, "subgroup": entry.subgroup, "name": entry.name},
        ))
    if font is not None:
        _write_json(manifest_path, sorted(unrenderable))
        logger.info("noto emoji: %s", dict(counts))
    counts["pairs"] = len(pairs)
    return PairScan(pairs, dict(sorted(counts.items())))


def noto_emoji_pairs(cache: str | os.PathLike | None = None) -> list[ImageTextPair]:
    """Fully-qualified emoji rendered from Noto Color Emoji, captioned with their names."""
    return scan_noto_emoji(cache).pairs
