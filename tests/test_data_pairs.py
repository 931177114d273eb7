"""Image-text pairs: caption rules on fabricated SVG trees, emoji-test parsing, rendering,
and the full counts of the installed packages (skipped when a package is missing)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gramprompt.data import cache_dir
from gramprompt.data.dataset import DatasetError
from gramprompt.data.images import load_image
from gramprompt.data.pairs import PAIR_SOURCES, scan_noto_emoji, scan_openclipart
from gramprompt.data.pairs.noto_emoji import (
    EMOJI_CANVAS,
    EMOJI_TEST,
    NOTO_EMOJI_FONT,
    load_emoji_font,
    parse_emoji_test,
    render_emoji,
)
from gramprompt.data.pairs.openclipart import (
    OPENCLIPART_PNG,
    OPENCLIPART_SVG,
    build_caption,
    filename_words,
    read_svg_metadata,
    truncate_words,
)

HAVE_OPENCLIPART = os.path.isdir(OPENCLIPART_PNG) and os.path.isdir(OPENCLIPART_SVG)
HAVE_EMOJI = os.path.isfile(NOTO_EMOJI_FONT) and os.path.isfile(EMOJI_TEST)
needs_emoji = pytest.mark.skipif(
    not HAVE_EMOJI, reason="needs Debian packages fonts-noto-color-emoji and unicode-data: "
    "sudo apt-get install fonts-noto-color-emoji unicode-data")


def _svg(title: str = "", description: str = "", keywords: tuple[str, ...] = (),
         padding: int = 0) -> str:
    """An Inkscape-style SVG: namespaces on the root, author titles inside cc:Agent."""
    items = "".join(f"<rdf:li>{k}</rdf:li>" for k in keywords)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/"
     xmlns:cc="http://web.resource.org/cc/"
     xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <!-- {"x" * padding} -->
  <metadata><rdf:RDF><cc:Work rdf:about="">
    <dc:title>{title}</dc:title>
    <dc:description>{description}</dc:description>
    <dc:subject><rdf:Bag>{items}<rdf:li></rdf:li></rdf:Bag></dc:subject>
    <dc:creator><cc:Agent><dc:title>Some Author</dc:title></cc:Agent></dc:creator>
  </cc:Work></rdf:RDF></metadata>
  <rect width="1" height="1"/>
</svg>"""


def _png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((3, 3, 4), value, dtype=np.uint8), "RGBA").save(path)


def _put(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_caption_rules() -> None:
    caption = build_caption(" Red\n apple ", "A  shiny apple.", ["food", "", "Food", "fruit_salad"])
    assert caption == "Red apple. A shiny apple. food, fruit salad"
    assert build_caption("Apple", "apple", []) == "Apple"  # placeholder description
    assert build_caption("Pen", "see http://example.org", ["pen"]) == "Pen. pen"
    assert build_caption("", "", []) == ""
    long = build_caption("word " * 100, "", [])
    assert len(long) <= 300 and long.endswith("word")
    assert truncate_words("abc def", 5) == "abc"
    assert filename_words("a/smiley119_architetto_fr_01.png") == "smiley architetto fr"
    assert filename_words("shapes/star_22pt03step.png") == "star"


def test_read_svg_metadata_fields_and_late_metadata(tmp_path: Path) -> None:
    _put(tmp_path, "a.svg", _svg("Cat", "A black cat", ("animal", "cat")))
    meta = read_svg_metadata(tmp_path / "a.svg")
    assert (meta.title, meta.description) == ("Cat", "A black cat")  # not the author's title
    assert meta.keywords == ["animal", "cat", ""]
    # Metadata past the first 64 KB forces the full read.
    _put(tmp_path, "b.svg", _svg("Late", keywords=("x",), padding=70_000))
    assert read_svg_metadata(tmp_path / "b.svg").title == "Late"


def _fabricated_clipart(root: Path) -> tuple[Path, Path]:
    png, svg = root / "png", root / "svg"
    _png(png / "animals/cat_01.png", 1)
    _put(svg, "animals/cat_01.svg", _svg("Cat", "Cat", ("animal", "pet")))
    _png(png / "animals/broken_dog_02.png", 2)
    _put(svg, "animals/broken_dog_02.svg", "<svg><metadata><dc:title>unclosed")
    _png(png / "food/apple_pie.png", 3)  # no SVG twin
    _png(png / "food/01.png", 4)
    _put(svg, "food/01.svg", "not xml at all <<<")
    _png(png / "zoo/cat_copy.png", 1)  # byte-identical to animals/cat_01.png
    _put(svg, "zoo/cat_copy.svg", _svg("Cat copy"))
    for i in range(10):  # a collection title shared by 10 files
        _png(png / f"shapes/icons/bell_{i:02d}.png", 10 + i)
        title = f"Icon Collection - v{i}"
        _put(svg, f"shapes/icons/bell_{i:02d}.svg", _svg(title, keywords=("icon",)))
    return png, svg


def test_openclipart_fabricated_tree(tmp_path: Path) -> None:
    png, svg = _fabricated_clipart(tmp_path)
    scan = scan_openclipart(png, svg, cache=tmp_path / "cache")
    by_key = {p.key: p for p in scan.pairs}
    assert list(by_key) == sorted(by_key)
    assert by_key["animals/cat_01"].caption == "Cat. animal, pet"
    assert by_key["animals/cat_01"].meta == {
        "category": "animals", "title": "Cat", "keywords": ["animal", "pet"], "name": "cat"}
    assert by_key["animals/cat_01"].source == str(png / "animals/cat_01.png")
    assert by_key["animals/broken_dog_02"].caption == "broken dog"  # malformed -> file name
    assert by_key["food/apple_pie"].caption == "apple pie"  # missing SVG -> file name
    assert by_key["shapes/icons/bell_03"].caption == "bell. icon"  # collection title replaced
    assert "food/01" not in by_key and "zoo/cat_copy" not in by_key
    assert scan.counts == {"png_files": 15, "pairs": 13, "malformed_svg": 2, "missing_svg": 1,
                           "duplicate_png": 1, "no_caption": 1, "filename_title": 12}


def test_openclipart_second_call_uses_cache(tmp_path: Path) -> None:
    png, svg = _fabricated_clipart(tmp_path)
    cache = tmp_path / "cache"
    first = scan_openclipart(png, svg, cache)
    (svg / "animals/cat_01.svg").unlink()  # a re-parse would change this caption
    second = scan_openclipart(png, svg, cache)
    assert second.pairs == first.pairs and second.counts == first.counts
    assert [p.meta for p in second.pairs] == [p.meta for p in first.pairs]
    assert len(list(cache.glob("pairs-*.json"))) == 1
    _png(png / "animals/new_owl.png", 9)  # a new file changes the count: rebuilt
    third = scan_openclipart(png, svg, cache)
    assert "animals/new_owl" in {p.key for p in third.pairs}
    assert next(p for p in third.pairs if p.key == "animals/cat_01").caption == "cat"


def test_missing_packages_raise_one_line(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="apt-get install openclipart-png openclipart-svg"):
        scan_openclipart(tmp_path / "png", tmp_path / "svg")
    with pytest.raises(DatasetError, match="apt-get install fonts-noto-color-emoji unicode-data"):
        scan_noto_emoji(tmp_path / "c", font_path=tmp_path / "none.ttf")


EMOJI_SNIPPET = """\
# group: Smileys & Emotion

# subgroup: face-smiling
1F600                                  ; fully-qualified     # 😀 E1.0 grinning face
263A FE0F                              ; fully-qualified     # ☺️ E0.6 smiling face
263A                                   ; unqualified         # ☺ E0.6 smiling face

# group: Component
# subgroup: skin-tone
1F3FB                                  ; component           # 🏻 E1.0 light skin tone

# group: Symbols
# subgroup: keycap
0023 FE0F 20E3                         ; fully-qualified     # #️⃣ E0.6 keycap: #
0023 20E3                              ; unqualified         # #⃣ E0.6 keycap: #
E000                                   ; fully-qualified     # \ue000 E0.0 private use test
#EOF
"""


def test_parse_emoji_test_snippet() -> None:
    entries = parse_emoji_test(EMOJI_SNIPPET.splitlines())
    assert [(e.key, e.name, e.group, e.subgroup) for e in entries] == [
        ("1f600", "grinning face", "Smileys & Emotion", "face-smiling"),
        ("263a-fe0f", "smiling face", "Smileys & Emotion", "face-smiling"),
        ("23-fe0f-20e3", "keycap: #", "Symbols", "keycap"),
        ("e000", "private use test", "Symbols", "keycap"),
    ]
    assert entries[0].text == "😀"


@needs_emoji
def test_render_one_real_emoji() -> None:
    img = render_emoji("😀", load_emoji_font())
    assert img is not None and img.mode == "RGB" and img.size == EMOJI_CANVAS
    arr = np.asarray(img).astype(int)
    assert arr[0, 0].tolist() == [255, 255, 255]  # transparent corner -> white
    r, g, b = arr[64, 40]  # left cheek of the yellow face
    assert r > 200 and g > 150 and b < 120
    assert render_emoji("A", load_emoji_font()) is None  # not in the font: blank


@needs_emoji
def test_scan_noto_emoji_slice_renders_once(tmp_path: Path) -> None:
    snippet = tmp_path / "emoji-test.txt"
    snippet.write_text(EMOJI_SNIPPET, encoding="utf-8")
    out = tmp_path / "render"
    first = scan_noto_emoji(out, emoji_test=snippet)
    assert first.counts == {"entries": 4, "rendered": 3, "unrenderable": 1, "pairs": 3}
    assert [p.caption for p in first.pairs] == ["grinning face", "smiling face", "keycap: #"]
    assert first.pairs[2].meta == {"group": "Symbols", "subgroup": "keycap", "name": "keycap: #"}
    assert load_image(first.pairs[0].source).size == EMOJI_CANVAS
    mtime = os.stat(first.pairs[0].source).st_mtime_ns
    second = scan_noto_emoji(out, emoji_test=snippet)
    assert second.counts == {"entries": 4, "unrenderable": 1, "pairs": 3}  # nothing re-drawn
    assert second.pairs == first.pairs and os.stat(first.pairs[0].source).st_mtime_ns == mtime


# ---------------------------------------------------------------- installed packages


# The full-package checks use the real cache dir (GRAMPROMPT_CACHE or ~/.cache/gramprompt)
# so the one-off parsing and rendering is paid once across test runs, not per run.


@pytest.fixture(scope="module")
def clipart_scan():
    if not HAVE_OPENCLIPART:
        pytest.skip("needs Debian packages openclipart-png and openclipart-svg: "
                    "sudo apt-get install openclipart-png openclipart-svg")
    return scan_openclipart()


@pytest.fixture(scope="module")
def emoji_pairs():
    if not HAVE_EMOJI:
        pytest.skip("needs Debian packages fonts-noto-color-emoji and unicode-data: "
                    "sudo apt-get install fonts-noto-color-emoji unicode-data")
    return PAIR_SOURCES["noto-emoji"]()


def test_openclipart_package_counts(clipart_scan) -> None:
    assert clipart_scan.counts == {"png_files": 8121, "pairs": 6883, "duplicate_png": 1219,
                                   "oversized_png": 19, "filename_title": 3988}
    pairs = clipart_scan.pairs
    pair = next(p for p in pairs if p.key == "food/fruit/pesca_architetto_frances_01")
    assert pair.caption == "Pesca. food, fruit" and pair.meta["category"] == "food"
    assert all(0 < len(p.caption) <= 300 for p in pairs)
    assert len({p.key for p in pairs}) == len(pairs) == len({p.source for p in pairs})
    assert [p.key for p in pairs] == sorted(p.key for p in pairs)


def test_noto_emoji_package_counts(emoji_pairs) -> None:
    assert len(emoji_pairs) == 3655
    first, last = emoji_pairs[0], emoji_pairs[-1]
    assert first.caption == "grinning face" and first.meta["group"] == "Smileys & Emotion"
    assert last.caption == "flag: Wales" and last.meta["subgroup"] == "subdivision-flag"
    assert all(Path(p.source).is_file() for p in emoji_pairs[::100])


def test_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GRAMPROMPT_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("GRAMPROMPT_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "gramprompt"
