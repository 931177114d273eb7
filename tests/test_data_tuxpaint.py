"""tuxpaint-stamps: exclusion rules and family split on fabricated folders, the near-copy test
on constructed pictures, and facts about the installed package (skipped when it is missing)."""
from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from gramprompt.data import tuxpaint
from gramprompt.data.dataset import DatasetError
from gramprompt.data.tuxpaint import (
    COPIES_FILE,
    TUXPAINT_STAMPS,
    family_key,
    is_near_copy,
    list_stamps,
    load_tuxpaint_stamps,
)

STAMPS = Path(TUXPAINT_STAMPS)
installed = pytest.mark.skipif(not STAMPS.is_dir(),
                               reason="needs the Debian package tuxpaint-stamps-default")


def _drawing(shapes: list[tuple[str, tuple[int, int, int, int], str]],
             size: tuple[int, int] = (120, 90)) -> Image.Image:
    """A transparent RGBA picture with filled shapes, like a stamp."""
    img = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    for kind, box, colour in shapes:
        (draw.ellipse if kind == "ellipse" else draw.rectangle)(box, fill=colour, outline="black")
    return img


HOUSE = [("rect", (20, 40, 100, 85), "tan"), ("rect", (50, 60, 65, 85), "brown"),
         ("ellipse", (30, 5, 90, 45), "red")]
BALLS = [("ellipse", (5, 5, 50, 50), "blue"), ("ellipse", (60, 30, 115, 85), "green")]


def _reencoded(img: Image.Image) -> Image.Image:
    """Flattened on white, shrunk, padded with white and saved as JPEG: still the same drawing."""
    white = Image.new("RGB", img.size, "white")
    white.paste(img, mask=img.getchannel("A"))
    small = white.resize((96, 72), Image.Resampling.BICUBIC)
    padded = Image.new("RGB", (130, 100), "white")
    padded.paste(small, (20, 10))
    buf = io.BytesIO()
    padded.save(buf, "JPEG", quality=80)
    return Image.open(io.BytesIO(buf.getvalue()))


def test_near_copy_flags_itself_and_reencoded_copy_not_other_picture() -> None:
    house, balls = _drawing(HOUSE), _drawing(BALLS)
    assert is_near_copy(house, house)
    assert is_near_copy(house, _reencoded(house))
    assert is_near_copy(_reencoded(balls), balls)
    assert not is_near_copy(house, balls)
    assert not is_near_copy(balls, _reencoded(house))
    blank = Image.new("RGBA", (50, 50), (255, 255, 255, 255))  # shows nothing, copies nothing
    assert not is_near_copy(blank, blank)


def test_family_key_groups_variants_within_a_class() -> None:
    assert family_key("animals/mammals/pig_golden2.png") == "animals/pig"
    assert family_key("animals/mammals/pig.png") == "animals/pig"
    assert family_key("town/flags/redflag.png") == family_key("town/flags/blue-and-yellowflag.png")
    assert family_key("plants/mushrooms/cep-1.png") == family_key("plants/mushrooms/cep.png")
    assert family_key("space/planets/3_earth.png") == "space/earth"
    assert family_key("food/fruit/apple_red.png") != family_key("plants/apple.png")  # other class


def _png(path: Path, k: int) -> None:
    """A distinct small stamp for each ``k`` (files with equal ``k`` are byte-identical)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _drawing([("rect", (2, 2, 4 + k, 20), "red")], size=(40, 24)).save(path)


def test_listing_rules_on_fabricated_folder(tmp_path: Path) -> None:
    root = tmp_path / "stamps"
    for i in range(9):
        _png(root / "animals" / f"beast{chr(97 + i)}.png", i)
        _png(root / "food" / "fruit" / f"fruit{chr(97 + i)}.png", 10 + i)
    _png(root / "animals" / "beasta_mirror.png", 20)
    _png(root / "symbols" / "a.png", 21)
    _png(root / "animals" / "copied.png", 22)
    _png(root / "animals" / "credited.png", 23)
    (root / "animals" / "credited.svg").write_text("<svg><!-- from OpenClipart.org --></svg>")
    _png(root / "animals" / "dupe.png", 0)  # same bytes as beasta.png
    _png(root / "animals" / "shared.png", 24)
    _png(root / "food" / "shared.png", 24)  # same bytes under two classes: ambiguous label
    (root / "food" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "food" / "broken.png").symlink_to(tmp_path / "nowhere.png")
    (root / "food" / "notes.txt").write_text("not a stamp")
    _png(root / "tiny" / "one.png", 25)
    copies = tmp_path / "copies.json"
    copies.write_text(json.dumps([{"stamp": "animals/copied.png", "openclipart": "x.png",
                                   "distance": 0.0, "mirrored": False}]))
    stamps, counts = list_stamps(root, copies)
    paths = [Path(s.path).relative_to(root).as_posix() for s in stamps]
    assert paths == sorted(paths)
    assert "food/corrupt.png" in paths  # decoding, and skipping, is load_batch's business
    assert "animals/beasta.png" in paths and "animals/dupe.png" not in paths
    assert not {"animals/beasta_mirror.png", "symbols/a.png", "animals/copied.png",
                "animals/credited.png", "animals/shared.png", "food/shared.png",
                "food/broken.png", "tiny/one.png"} & set(paths)
    assert counts == {"mirror": 1, "folder symbols": 1, "openclipart copy": 1,
                      "openclipart metadata": 1, "unreadable": 1, "duplicate": 1,
                      "copy across classes": 2, "small class": 1, "images": 19}
    assert {s.classname for s in stamps} == {"animals", "food"}


def test_unreadable_exclusion_list_names_the_fix(tmp_path: Path) -> None:
    _png(tmp_path / "stamps" / "animals" / "owl.png", 0)
    (tmp_path / "copies.json").write_text("{not json")
    with pytest.raises(DatasetError, match="--write-exclusions"):
        list_stamps(tmp_path / "stamps", tmp_path / "copies.json")


def test_missing_package_raises_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuxpaint, "TUXPAINT_STAMPS", str(tmp_path / "absent"))
    with pytest.raises(DatasetError, match="sudo apt-get install tuxpaint-stamps-default") as err:
        load_tuxpaint_stamps()
    assert "\n" not in str(err.value)


def test_shipped_exclusion_list_is_sorted_and_names_known_copies() -> None:
    rows = json.loads(COPIES_FILE.read_text())
    stamps = [r["stamp"] for r in rows]
    assert stamps == sorted(set(stamps))
    # Seen side by side: the drawings of openclipart's buildings/homes/pinkhome.png and
    # food/fruit/banana.png.
    assert {"town/houses/cartoon/pinkhome.png", "food/fruit/cartoon/banana.png"} <= set(stamps)


@installed
def test_installed_set_labels_exclusions_and_split() -> None:
    dataset = load_tuxpaint_stamps()
    assert dataset.name == "tuxpaint-stamps" and dataset.classnames == sorted(dataset.classnames)
    label = {Path(s.source).relative_to(STAMPS).as_posix(): dataset.classnames[s.label]
             for s in dataset.train + dataset.test}
    assert label["animals/mammals/badger.png"] == "animals"
    assert not any("_mirror" in p or p.startswith(("symbols/", "seasonal/")) for p in label)
    excluded = {r["stamp"] for r in json.loads(COPIES_FILE.read_text())}
    assert not excluded & set(label)
    # SVG twins credit openclipart; people/ and military/ share one byte-identical fireman.
    assert not {"clothes/hats/tophat.png", "food/fruit/cartoon/grapes.png",
                "military/fireman240a.png", "people/fireman240a.png"} & set(label)
    counts = Counter(label.values())
    assert min(counts.values()) >= tuxpaint.MIN_CLASS_IMAGES
    test_share = len(dataset.test) / len(label)
    assert 0.25 < test_share < 0.35
    assert {s.label for s in dataset.train} == {s.label for s in dataset.test} == set(
        range(dataset.num_classes))


@installed
def test_installed_split_keeps_families_apart_and_repeats() -> None:
    stamps, _ = list_stamps()
    family = {s.path: s.family for s in stamps}
    dataset = load_tuxpaint_stamps()
    train = {family[s.source] for s in dataset.train}
    test = {family[s.source] for s in dataset.test}
    assert not train & test
    again = load_tuxpaint_stamps()
    assert (again.train, again.test, again.classnames) == (dataset.train, dataset.test,
                                                           dataset.classnames)
