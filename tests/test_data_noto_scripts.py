"""noto-scripts: letters of fonts-noto-core labelled by Unicode script, split by code point.

Runs against the installed packages (the Makefile installs fonts-noto-core and unicode-data),
rendering small subsets into temporary caches; labels are checked against code points whose
script is known independently of the loader (U+03B1 GREEK SMALL LETTER ALPHA, ...).
"""
from __future__ import annotations

import logging
import math
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gramprompt.data import noto_scripts
from gramprompt.data.dataset import DatasetError, Sample
from gramprompt.data.noto_scripts import (
    CANVAS,
    MARGIN,
    MAX_FONTS,
    NOTO_FONT_DIR,
    SCRIPTS,
    load_noto_scripts,
    script_fonts,
    unicode_letters,
)

SUBSET = ("Greek", "Hebrew", "Latin", "Runic")
# Letters of known script; each must be among its script's first 40 covered code points.
KNOWN = {0x03B1: "greek", 0x0391: "greek", 0x05D0: "hebrew", 0x0041: "latin", 0x16A0: "runic"}
INSTALL_HINT = "sudo apt-get install fonts-noto-core unicode-data"
# Measured with fonts-noto-core 20201225-1 and unicode-data 15.0.0-1 (also in the data card).
FULL_COUNTS = {"classes": 24, "train": 2448, "test": 1048}


def _cp(sample: Sample) -> int:
    """Renderings are cached as ``<code point hex>.png``."""
    return int(Path(sample.source).stem, 16)


@pytest.fixture(scope="module")
def subset_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("noto_scripts")


@pytest.fixture(scope="module")
def subset(subset_cache):
    return load_noto_scripts(scripts=SUBSET, cache=subset_cache)


def test_known_letters_land_in_their_script(subset):
    assert subset.name == "noto-scripts"
    assert subset.classnames == ["greek", "hebrew", "latin", "runic"]
    labels = defaultdict(set)
    for s in subset.train + subset.test:
        labels[_cp(s)].add(subset.classnames[s.label])
    for cp, script in KNOWN.items():
        assert labels[cp] == {script}, f"U+{cp:04X}"
    assert 0x00E9 not in labels  # é decomposes canonically (e + acute): a variant, not a letter
    assert 0x0031 not in labels  # DIGIT ONE is no letter


def test_split_is_grouped_by_code_point_and_labels_in_range(subset):
    train_cps = {_cp(s) for s in subset.train}
    test_cps = {_cp(s) for s in subset.test}
    assert train_cps and test_cps and not train_cps & test_cps
    assert all(0 <= s.label < subset.num_classes for s in subset.train + subset.test)
    letters = defaultdict(set)
    for s in subset.train + subset.test:
        letters[s.label].add(_cp(s))
    for label, cps in letters.items():  # 30% of each class's letters, rounded up, to test
        assert len(cps & test_cps) == math.ceil(0.3 * len(cps)), subset.classnames[label]


def test_letters_capped_and_rendered_once_per_font(subset):
    per_class = Counter(s.label for s in subset.train + subset.test)
    letters = defaultdict(set)
    for s in subset.train + subset.test:
        letters[s.label].add(_cp(s))
    # Greek and Latin: 40 letters x 4 fonts (NotoSans/NotoSerif x Regular/Bold); Hebrew has only
    # 30 covered letters; Runic one font.
    assert {subset.classnames[k]: len(v) for k, v in letters.items()} == {
        "greek": 40, "hebrew": 30, "latin": 40, "runic": 40}
    assert {subset.classnames[k]: n for k, n in per_class.items()} == {
        "greek": 160, "hebrew": 120, "latin": 160, "runic": 40}
    latin = sorted(letters[subset.classnames.index("latin")])
    assert latin == [*range(0x41, 0x5B), *range(0x61, 0x6F)]  # A-Z a-n: first 40 by code point
    sources = [s.source for s in subset.train + subset.test]
    assert len(set(sources)) == len(sources)


def test_same_files_labels_and_split_every_call(subset, subset_cache, tmp_path):
    again = load_noto_scripts(scripts=SUBSET, cache=subset_cache)  # from the cache
    assert again == subset
    fresh = load_noto_scripts(scripts=SUBSET, cache=tmp_path)  # drawn anew elsewhere

    def relative(samples, root):
        return [(Path(s.source).relative_to(root).as_posix(), s.label) for s in samples]

    assert relative(fresh.train, tmp_path) == relative(subset.train, subset_cache)
    assert relative(fresh.test, tmp_path) == relative(subset.test, subset_cache)
    for a, b in zip(fresh.test[:20], subset.test[:20]):
        assert np.array_equal(np.asarray(Image.open(a.source)), np.asarray(Image.open(b.source)))
    other = load_noto_scripts(scripts=SUBSET, cache=subset_cache, seed=1)
    assert {_cp(s) for s in other.test} != {_cp(s) for s in subset.test}


def test_renders_are_non_blank_centred_black_on_white(subset):
    for s in subset.train[::7] + subset.test[::7]:
        img = Image.open(s.source)
        assert img.mode == "RGB" and img.size == (CANVAS, CANVAS)
        grey = np.asarray(img.convert("L"))
        ink = np.argwhere(grey < 128)
        assert len(ink), s.source
        (top, left), (bottom, right) = ink.min(0), ink.max(0)
        assert min(top, left) >= MARGIN - 1 and max(bottom, right) <= CANVAS - MARGIN
        assert abs((top + bottom) / 2 - (CANVAS - 1) / 2) <= 1.5, s.source
        assert abs((left + right) / 2 - (CANVAS - 1) / 2) <= 1.5, s.source
        assert grey[0, 0] == 255 and grey.min() < 64


def test_default_cache_full_counts(monkeypatch, tmp_path):
    monkeypatch.setenv("GRAMPROMPT_CACHE", str(tmp_path))
    data = load_noto_scripts()
    assert data.classnames == sorted(s.lower() for s in SCRIPTS) and len(SCRIPTS) == 24
    assert {"classes": data.num_classes, "train": len(data.train),
            "test": len(data.test)} == FULL_COUNTS
    assert all(Path(s.source).is_relative_to(tmp_path / "noto-scripts") for s in data.test)
    assert not list(tmp_path.rglob("*.tmp"))  # PNGs are written atomically


def test_fonts_capped_in_preference_order():
    fonts = script_fonts(NOTO_FONT_DIR, SCRIPTS["Hebrew"])
    assert len(fonts) == MAX_FONTS
    assert [f.name for f in fonts] == ["NotoSansHebrew-Regular.ttf", "NotoSansHebrew-Bold.ttf",
                                       "NotoSerifHebrew-Regular.ttf", "NotoSerifHebrew-Bold.ttf"]


def test_unicode_letters_skip_decomposed_and_non_letters():
    letters = unicode_letters(noto_scripts.UNICODE_DIR)
    assert letters[0x03B1] == "Greek" and letters[0x0416] == "Cyrillic"  # α, Ж
    assert letters[0x0E01] == "Thai"  # ก, category Lo
    for cp in (0x00E9, 0x0401, 0xFE8D, 0x00AA, 0x0301, 0x0660):
        # é and Ё (canonical), Arabic alef isolated form and ª (compatibility), combining acute
        # (Mn), Arabic-Indic digit zero (Nd)
        assert cp not in letters, f"U+{cp:04X}"


def test_missing_package_raises_with_install_hint(monkeypatch, tmp_path):
    monkeypatch.setattr(noto_scripts, "NOTO_FONT_DIR", str(tmp_path))
    with pytest.raises(DatasetError, match=INSTALL_HINT):
        load_noto_scripts(scripts=("Greek",), cache=tmp_path / "cache")
    monkeypatch.setattr(noto_scripts, "NOTO_FONT_DIR", NOTO_FONT_DIR)
    monkeypatch.setattr(noto_scripts, "UNICODE_DIR", str(tmp_path))
    with pytest.raises(DatasetError, match=INSTALL_HINT):
        load_noto_scripts(scripts=("Greek",), cache=tmp_path / "cache")


def test_unreadable_font_skipped_and_small_script_dropped(tmp_path, caplog):
    fonts = tmp_path / "fonts"
    fonts.mkdir()
    shutil.copy(Path(NOTO_FONT_DIR) / "NotoSans-Regular.ttf", fonts)
    (fonts / "NotoSans-Bold.ttf").write_bytes(b"not a font")
    original = (Path(NOTO_FONT_DIR) / "NotoSansRunic-Regular.ttf").read_bytes()
    (fonts / "NotoSansRunic-Regular.ttf").write_bytes(original[:3000])  # truncated
    with caplog.at_level(logging.WARNING, logger="gramprompt.data.noto_scripts"):
        data = load_noto_scripts(scripts=("Greek", "Runic"), font_dir=fonts, cache=tmp_path / "c")
    assert data.classnames == ["greek"]  # Runic's only font is unreadable: 0 < 20 images
    assert len(data.train) + len(data.test) == 40  # 40 letters x NotoSans-Regular alone
    assert {Path(s.source).parent.name.split("-")[0] for s in data.train} == {"NotoSans"}
    messages = caplog.text
    assert "NotoSans-Bold.ttf" in messages and "NotoSansRunic-Regular.ttf" in messages
    assert "dropping Runic" in messages


def test_max_letters_below_min_images_drops_script(tmp_path):
    data = load_noto_scripts(scripts=("Greek", "Runic"), max_letters=6, cache=tmp_path)
    assert data.classnames == ["greek"]  # 6 x 4 fonts = 24 images; Runic 6 x 1 = 6 < 20


def test_unknown_script_rejected(tmp_path):
    with pytest.raises(ValueError, match="Klingon"):
        load_noto_scripts(scripts=("Klingon",), cache=tmp_path)
