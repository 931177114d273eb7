"""Cross-domain emoji targets (Symbola outlines, EmojiOne art): skip and naming rules on
fabricated inputs, and the documented counts of the installed packages (skipped, naming the
install command, when a package is missing)."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gramprompt.data import emoji_styles
from gramprompt.data.dataset import DatasetError
from gramprompt.data.emoji_styles import (
    DRAWN,
    EMOJIONE_PNG,
    SYMBOLA_FONT,
    emoji_group_classnames,
    emojione_files,
    emojione_key,
    font_glyphs,
    load_emoji_groups_emojione,
    load_emoji_groups_symbola,
    scan_emojione,
    scan_symbola,
    symbola_text,
    symbola_verdict,
)
from gramprompt.data.images import load_image
from gramprompt.data.offline import load_emoji_groups
from gramprompt.data.pairs import noto_emoji_pairs
from gramprompt.data.pairs.noto_emoji import EMOJI_CANVAS, EMOJI_TEST, NOTO_EMOJI_FONT
from gramprompt.data.registry import dataset_names, load_dataset

GROUPS = ["activities", "animals and nature", "flags", "food and drink", "objects",
          "people and body", "smileys and emotion", "symbols", "travel and places"]
# Measured with fonts-symbola 2.60-1.1, ruby-gemojione 3.3.0-1, unicode-data 15.0.0-1;
# the same numbers are in docs/DATA.md.
SYMBOLA_PER_CLASS = [67, 111, 5, 104, 197, 124, 138, 206, 200]
SYMBOLA_COUNTS = {"drawn": 1152, "entries": 3655, "flag_pair": 258, "not_in_font": 563,
                  "skin_tone": 540, "zwj_sequence": 1142}
EMOJIONE_PER_CLASS = [64, 105, 263, 91, 192, 538, 129, 203, 199]
EMOJIONE_COUNTS = {"drawn": 1784, "entries": 3655, "no_art": 1871, "unmatched_files": 10}

GRINNING = (0x1F600,)
US_FLAG = (0x1F1FA, 0x1F1F8)
FAMILY = (0x1F468, 0x200D, 0x1F469, 0x200D, 0x1F467)  # family: man, woman, girl
WAVE_TONE = (0x1F44B, 0x1F3FB)  # waving hand: light skin tone
KEYCAP_HASH = (0x23, 0xFE0F, 0x20E3)
SMILING = (0x263A, 0xFE0F)
MELTING = (0x1FAE0,)  # Emoji 14: newer than Symbola 2.60 and EmojiOne 3

SYMBOLA_NEEDS = ("Debian packages fonts-symbola and unicode-data: "
                 "sudo apt-get install fonts-symbola unicode-data")
EMOJIONE_NEEDS = ("Debian packages ruby-gemojione (3.3.0) and unicode-data: "
                  "sudo apt-get install ruby-gemojione unicode-data")


def _require(ok: bool, what: str) -> None:
    if not ok:
        pytest.skip(f"needs {what}")


def _have_symbola() -> bool:
    return os.path.isfile(SYMBOLA_FONT) and os.path.isfile(EMOJI_TEST)


def _have_emojione() -> bool:
    return os.path.isdir(EMOJIONE_PNG) and os.path.isfile(EMOJI_TEST)


def _emoji_test(path: Path, *rows: tuple[str, str, tuple[int, ...], str]) -> Path:
    """A small emoji-test.txt: (group, subgroup, codepoints, name) rows, fully-qualified."""
    lines, group, subgroup = [], None, None
    for g, s, cps, name in rows:
        if g != group:
            lines.append(f"# group: {g}")
            group = g
        if s != subgroup:
            lines.append(f"# subgroup: {s}")
            subgroup = s
        seq = " ".join(f"{cp:04X}" for cp in cps)
        lines.append(f"{seq} ; fully-qualified # {''.join(map(chr, cps))} E1.0 {name}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


SMALL_TEST_ROWS = (
    ("Smileys & Emotion", "face-smiling", GRINNING, "grinning face"),
    ("Smileys & Emotion", "face-affection", SMILING, "smiling face"),
    ("Smileys & Emotion", "face-hand", MELTING, "melting face"),
    ("People & Body", "hand-fingers-open", WAVE_TONE, "waving hand: light skin tone"),
    ("People & Body", "family", FAMILY, "family: man, woman, girl"),
    ("Symbols", "keycap", KEYCAP_HASH, "keycap: #"),
    ("Flags", "country-flag", US_FLAG, "flag: United States"),
)


# ---------------------------------------------------------------- rules on fabricated inputs


def test_symbola_verdict_on_fabricated_font() -> None:
    cmap = {0x41: "A", 0x1F1FA: "U", 0x1F1F8: "S", 0x1F468: "man", 0x1F469: "woman",
            0x1F3FB: "tone", 0x20E3: "keycap", 0xFE0F: "vs16", 0x200D: "zwj"}
    advances = {"A": 1000, "U": 900, "S": 900, "man": 1800, "woman": 1800, "tone": 2048,
                "keycap": 0, "vs16": 0, "zwj": 0}
    assert symbola_verdict((0x41,), cmap, advances) == DRAWN
    assert symbola_verdict((0x41, 0xFE0F, 0x20E3), cmap, advances) == DRAWN  # mark: no advance
    assert symbola_verdict((0x1F468, 0x200D, 0x1F469), cmap, advances) == "zwj_sequence"
    assert symbola_verdict((0x1F1FA, 0x1F1F8), cmap, advances) == "flag_pair"
    assert symbola_verdict((0x1F468, 0x1F3FB), cmap, advances) == "skin_tone"
    assert symbola_verdict((0x1F468, 0x1F469), cmap, advances) == "multi_glyph"
    assert symbola_verdict((0x1F600,), cmap, advances) == "not_in_font"
    assert symbola_verdict((0x1F468, 0x200D, 0x1F600), cmap, advances) == "not_in_font"
    assert symbola_text((0x41, 0xFE0F, 0x20E3)) == "A\u20e3"


def test_emojione_naming(tmp_path: Path) -> None:
    assert emojione_key(KEYCAP_HASH) == (0x23, 0x20E3)
    assert emojione_key(FAMILY) == (0x1F468, 0x1F469, 0x1F467)
    for name in ("0023-20E3.png", "1F600.png", "1f1fa-1F1F8.png", "notes.png", "1F601.txt"):
        (tmp_path / name).write_bytes(b"")
    assert {k: p.name for k, p in emojione_files(tmp_path).items()} == {
        (0x23, 0x20E3): "0023-20E3.png", (0x1F600,): "1F600.png",
        (0x1F1FA, 0x1F1F8): "1f1fa-1F1F8.png"}


def test_missing_packages_raise_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emoji_styles, "SYMBOLA_FONT", str(tmp_path / "Symbola_hint.ttf"))
    monkeypatch.setattr(emoji_styles, "EMOJIONE_PNG", str(tmp_path / "gemojione-3.3.0/assets/png"))
    with pytest.raises(DatasetError, match="apt-get install fonts-symbola") as err:
        load_dataset("emoji-groups-symbola")
    assert "\n" not in str(err.value)
    with pytest.raises(DatasetError, match="apt-get install ruby-gemojione") as err:
        load_dataset("emoji-groups-emojione")
    assert "\n" not in str(err.value)
    with pytest.raises(DatasetError, match="unicode-data"):
        scan_emojione(png_dir=tmp_path, emoji_test=tmp_path / "emoji-test.txt")


def test_registered() -> None:
    assert {"emoji-groups", "emoji-groups-symbola", "emoji-groups-emojione"} <= set(dataset_names())


def test_emojione_scan_composites_on_white(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAMPROMPT_CACHE", str(tmp_path / "cache"))
    art = tmp_path / "png"
    art.mkdir()
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[16:48, 16:48] = (200, 0, 0, 255)  # a red square on transparent black
    for name in ("1F600.png", "0023-20E3.png", "1F468-1F469-1F467.png", "1F3FB.png"):
        Image.fromarray(rgba, "RGBA").save(art / name)
    test_file = _emoji_test(tmp_path / "emoji-test.txt", *SMALL_TEST_ROWS)
    scan = scan_emojione(png_dir=art, emoji_test=test_file)
    assert scan.counts == {"drawn": 3, "entries": 7, "no_art": 4, "unmatched_files": 1}
    assert [p.meta["name"] for p in scan.pairs] == ["grinning face", "family: man, woman, girl",
                                                    "keycap: #"]
    img = Image.open(scan.pairs[0].source)
    assert img.mode == "RGB" and img.size == (64, 64)
    assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((32, 32)) == (200, 0, 0)
    assert Path(scan.pairs[0].source).is_relative_to(tmp_path / "cache" / "emoji-styles")
    assert scan_emojione(png_dir=art, emoji_test=test_file).counts == scan.counts


# ---------------------------------------------------------------- installed packages


def test_symbola_scan_draws_and_skips_hand_picked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _require(_have_symbola(), SYMBOLA_NEEDS)
    test_file = _emoji_test(tmp_path / "emoji-test.txt", *SMALL_TEST_ROWS)
    scan = scan_symbola(cache=tmp_path / "out", emoji_test=test_file)
    assert scan.counts == {"drawn": 3, "entries": 7, "flag_pair": 1, "not_in_font": 1,
                           "skin_tone": 1, "zwj_sequence": 1}
    assert [p.meta["name"] for p in scan.pairs] == ["grinning face", "smiling face", "keycap: #"]
    assert scan.pairs[0].meta["group"] == "Smileys & Emotion"
    for pair in scan.pairs:
        img = load_image(pair.source)
        assert img.mode == "RGB" and img.size == EMOJI_CANVAS
        grey = np.asarray(img.convert("L"))
        assert grey.min() < 64 and grey[0, 0] == 255  # black ink on a white canvas
    # the cached verdicts answer the second call: the font is not read again
    monkeypatch.setattr(emoji_styles, "font_glyphs", lambda path: pytest.fail("font re-read"))
    assert scan_symbola(cache=tmp_path / "out", emoji_test=test_file).counts == scan.counts


def test_symbola_verdicts_of_the_real_font() -> None:
    _require(_have_symbola(), SYMBOLA_NEEDS)
    glyphs = font_glyphs(SYMBOLA_FONT)
    assert symbola_verdict(GRINNING, *glyphs) == DRAWN
    assert symbola_verdict(KEYCAP_HASH, *glyphs) == DRAWN
    assert symbola_verdict(US_FLAG, *glyphs) == "flag_pair"
    assert symbola_verdict(FAMILY, *glyphs) == "zwj_sequence"
    assert symbola_verdict(WAVE_TONE, *glyphs) == "skin_tone"
    assert symbola_verdict(MELTING, *glyphs) == "not_in_font"


def _check_target(ds, name: str, per_class: list[int], size: tuple[int, int]) -> None:
    assert ds.name == name and ds.classnames == GROUPS
    assert ds.train == [] and ds.val == []
    counts = Counter(s.label for s in ds.test)
    assert [counts[i] for i in range(len(GROUPS))] == per_class
    for sample in ds.test:
        img = load_image(sample.source)
        assert img.mode == "RGB" and img.size == size


def _label_of(ds, key: str) -> str:
    [label] = [s.label for s in ds.test if Path(s.source).stem == key]
    return ds.classnames[label]


@pytest.fixture(scope="module")
def symbola():
    """Drawn once into the persistent cache dir and reused across runs (~1 s the first time)."""
    _require(_have_symbola(), SYMBOLA_NEEDS)
    return scan_symbola()


@pytest.fixture(scope="module")
def emojione():
    _require(_have_emojione(), EMOJIONE_NEEDS)
    return scan_emojione()


def test_emoji_groups_symbola(symbola) -> None:
    assert symbola.counts == SYMBOLA_COUNTS
    ds = load_emoji_groups_symbola(symbola)
    _check_target(ds, "emoji-groups-symbola", SYMBOLA_PER_CLASS, EMOJI_CANVAS)
    assert _label_of(ds, "1f600") == "smileys and emotion"
    assert _label_of(ds, "23-fe0f-20e3") == "symbols"
    assert not any("200d" in Path(s.source).stem for s in ds.test)


def test_emoji_groups_emojione(emojione) -> None:
    assert emojione.counts == EMOJIONE_COUNTS
    ds = load_emoji_groups_emojione(emojione)
    _check_target(ds, "emoji-groups-emojione", EMOJIONE_PER_CLASS, (64, 64))
    assert _label_of(ds, "1f600") == "smileys and emotion"
    assert _label_of(ds, "1f468-200d-1f469-200d-1f467") == "people and body"
    assert _label_of(ds, "1f1fa-1f1f8") == "flags"


def test_class_names_are_emoji_groups() -> None:
    _require(os.path.isfile(EMOJI_TEST), "Debian package unicode-data: sudo apt-get install unicode-data")
    assert emoji_group_classnames() == GROUPS
    _require(os.path.isfile(NOTO_EMOJI_FONT),
             "Debian package fonts-noto-color-emoji: sudo apt-get install fonts-noto-color-emoji")
    assert load_emoji_groups(pairs=noto_emoji_pairs()).classnames == GROUPS
