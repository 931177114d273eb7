"""The ``iconify`` pair source on a tiny fabricated copy of the npm package (four sets, a few icons):
parsing, licence selection, captions, rendering (determinism, resume), de-duplication, exclusion of
evaluation images, nested subsets; and the hash look-ups against brute force."""
from __future__ import annotations

import base64
import io
import json
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from gramprompt.data.dataset import ClassificationDataset, DatasetError, Sample
from gramprompt.data.exclusion import dataset_hashes, evaluation_hashes
from gramprompt.data.image_hash import NearIndex, nearest_within, picture_hash, thumbnail
from gramprompt.data.images import load_image
from gramprompt.data.pairs import ConcatPairSource, ListPairSource, ImageTextPair, open_pair_source
from gramprompt.data.pairs.iconify import (
    PERMISSIVE_LICENSES,
    Selection,
    caption_names,
    find_iconify_root,
    icon_svg,
    read_collections,
    readable_category,
    select_sets,
)
from gramprompt.data.pairs.iconify_render import RENDERERS
from gramprompt.data.pairs.iconify_source import (
    IconifyPairSource,
    parse_iconify_spec,
    with_exclusions,
)

HOUSE = '<path fill="currentColor" d="M2 9L8 3l6 6v5H2z"/>'
HOUSE_OUTLINE = '<path fill="none" stroke="currentColor" stroke-width="1.5" d="M2 9L8 3l6 6v5H2z"/>'
RING = '<circle cx="8" cy="8" r="6" fill="none" stroke="currentColor" stroke-width="2"/>'
CROSS = '<path fill="currentColor" d="M7 1h2v14H7zM1 7h14v2H1z"/>'
BARS = '<path fill="currentColor" d="M1 2h14v2H1zm0 5h9v2H1zm0 5h12v2H1z"/>'
TRIANGLE = '<path fill="currentColor" d="M8 1l7 13H1z"/>'


def _icon_png(body: str, box: str, size: int) -> bytes:
    """A test image drawn elsewhere: the same picture as an icon, rasterized by CairoSVG-free resvg at
    another size, then re-encoded as JPEG (other framing, size and compression)."""
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" viewBox="{box}">' \
          f'{body.replace("currentColor", "#000")}</svg>'
    img = RENDERERS["resvg"](svg, size)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_package(root: Path) -> Path:
    """A fabricated ``@iconify/json``: four sets, one of them with theme categories."""
    sets = {
        "aa": ("MIT", "UI 24px", {"home": {"body": HOUSE}, "home-outline": {"body": HOUSE_OUTLINE},
                                   "format-bold": {"body": BARS}, "ring-24-regular": {"body": RING},
                                   "old": {"body": CROSS, "hidden": True}},
               {"Buildings / Places": ["home", "home-outline"]}, {"home-alias": {"parent": "home"}}),
        "bb": ("CC-BY-NC-4.0", "Emoji", {"cross": {"body": CROSS}}, None, None),
        "cc": ("GPL-3.0", "UI 24px", {"triangle": {"body": TRIANGLE}}, None, None),
        # dd redraws aa's house in a larger view box (same picture, other framing) and adds new icons
        "dd": ("Apache-2.0", "Thematic", {"house": {"body": HOUSE, "width": 20, "height": 20, "left": -2, "top": -2},
                                          "plus-sign": {"body": CROSS}, "pyramid": {"body": TRIANGLE},
                                          "empty": {"body": '<g fill="none"/>'}}, None, None),
    }
    (root / "json").mkdir(parents=True)
    collections = {}
    for prefix, (spdx, category, icons, cats, aliases) in sets.items():
        collections[prefix] = {"name": prefix.upper(), "total": len(icons), "category": category, "palette": False,
                               "author": {"name": f"author {prefix}", "url": f"https://example.org/{prefix}"},
                               "license": {"title": spdx, "spdx": spdx, "url": "https://example.org/licence"}}
        data = {"prefix": prefix, "icons": icons, "width": 16, "height": 16}
        if cats:
            data["categories"] = cats
        if aliases:
            data["aliases"] = aliases
        (root / "json" / f"{prefix}.json").write_text(json.dumps(data))
    (root / "collections.json").write_text(json.dumps(collections))
    (root / "package.json").write_text(json.dumps({"name": "@iconify/json", "version": "0.0.1"}))
    return root


@pytest.fixture
def package(tmp_path):
    return make_package(tmp_path / "iconify")


def _source(package, tmp_path, query="", n="", evaluation=None, **kw):
    spec = f"iconify{':' + n if n else ''}?root={package}" + (f"&{query}" if query else "")
    return IconifyPairSource(spec, 2, cache=tmp_path / "cache", workers=1,
                             evaluation={} if evaluation is None else evaluation, **kw)


# --------------------------------------------------------------------------- parsing and selection


def test_spec_parsing_and_errors():
    opts = parse_iconify_spec("iconify:50?sets=mdi,tabler&exclude-images=/b,/a&seed=3&style=keep")
    assert opts.n == 50 and opts.seed == 3 and opts.style == "keep"
    assert opts.selection.sets == ("mdi", "tabler") and opts.exclude_images == ("/a", "/b")
    assert parse_iconify_spec("iconify").n is None
    for bad in ("iconify:0", "iconify:x", "iconify?colour=red", "iconify?style=bold", "iconify?seed=two",
                "iconify?renderer=inkscape"):
        with pytest.raises(DatasetError):
            parse_iconify_spec(bad)


def test_with_exclusions_adds_to_iconify_parts_only(tmp_path):
    spec = with_exclusions("openclipart+iconify:5", [str(tmp_path)], ["noto", "twemoji"])
    assert spec == f"openclipart+iconify:5?exclude-images={tmp_path.resolve()}&exclude-sets=noto,twemoji"
    assert with_exclusions("iconify", None, None) == "iconify"
    with pytest.raises(DatasetError, match="iconify"):
        with_exclusions("openclipart", None, ["noto"])


def test_missing_package_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="npm install"):
        find_iconify_root(tmp_path)


def test_licence_selection_keeps_permissive_sets_by_default(package):
    sets = read_collections(package)
    counts = Counter()
    assert [s.prefix for s in select_sets(sets, Selection(), counts)] == ["aa", "dd"]
    assert counts == {"licence_icons": 2}  # bb (non-commercial) and cc (GPL), one icon each
    assert [s.prefix for s in select_sets(sets, Selection(licenses=("GPL-3.0",)))] == ["cc"]
    assert [s.prefix for s in select_sets(sets, Selection(categories=("thematic",)))] == ["dd"]
    counts = Counter()
    assert [s.prefix for s in select_sets(sets, Selection(exclude_sets=("dd",)), counts)] == ["aa"]
    assert counts["excluded_set_icons"] == 4
    with pytest.raises(DatasetError, match="unknown"):
        select_sets(sets, Selection(sets=("zz",)))
    with pytest.raises(DatasetError, match="no icon set"):
        select_sets(sets, Selection(sets=("bb",)))
    assert "CC-BY-NC-4.0" not in PERMISSIVE_LICENSES and not any("GPL" in x for x in PERMISSIVE_LICENSES)


# --------------------------------------------------------------------------- captions and SVG


def test_caption_names_drop_style_words_only_for_variants():
    names = ["home-outline", "home-fill", "format-bold", "line", "arrow-left-24-regular", "arrow-left-24-filled",
             "crop-16-9", "baseline-alarm", "sharp-alarm", "skin-tone"]
    words = caption_names(names)
    assert words["home-outline"] == words["home-fill"] == "home"
    assert words["format-bold"] == "format bold"  # no other "format" icon: "bold" is the concept
    assert words["line"] == "line"
    assert words["arrow-left-24-regular"] == words["arrow-left-24-filled"] == "arrow left"
    assert words["crop-16-9"] == "crop 16 9"
    assert words["baseline-alarm"] == words["sharp-alarm"] == "alarm"
    assert words["skin-tone"] == "skin tone"
    kept = caption_names(names, drop_style=False)
    assert kept["home-outline"] == "home outline" and kept["arrow-left-24-regular"] == "arrow left 24 regular"


def test_readable_category():
    assert readable_category("Account / User") == "account, user"
    assert readable_category("Arrows & Directions") == "arrows and directions"


def test_icon_svg_uses_the_view_box_and_draws_current_color_black():
    svg = icon_svg({"body": HOUSE, "width": 20, "left": -2}, {"width": 16, "height": 16}, 64)
    assert 'viewBox="-2 0 20 16"' in svg and 'width="64"' in svg and "currentColor" not in svg


# --------------------------------------------------------------------------- the source end to end


def test_pairs_captions_meta_and_counts(package, tmp_path):
    src = _source(package, tmp_path)
    keys = [e["key"] for e in src.entries]
    # aa/home-outline is kept (another picture); dd/house is aa/home re-framed: a near duplicate, so
    # only the first of the two in corpus order is kept; dd/plus-sign and dd/pyramid are new pictures;
    # dd/empty draws nothing
    house = min(("iconify/aa/home", "iconify/dd/house"), key=keys.index) if "iconify/aa/home" in keys else "iconify/dd/house"
    assert sorted(keys) == sorted(["iconify/aa/format-bold", house, "iconify/aa/home-outline",
                                   "iconify/aa/ring-24-regular", "iconify/dd/plus-sign", "iconify/dd/pyramid"])
    captions = {e["key"]: e["caption"] for e in src.entries}
    assert captions[house] == ("home. buildings, places" if house == "iconify/aa/home" else "house")
    assert captions["iconify/aa/home-outline"] == "home. buildings, places"
    assert captions["iconify/aa/ring-24-regular"] == "ring 24 regular"  # no other ring: kept as named
    counts = src.report()["counts"]
    assert counts["duplicate_near"] == 1 and counts["blank_render"] == 1 and counts["hidden_icon"] == 1
    assert counts["aliases"] == 1 and counts["licence_icons"] == 2 and counts["pairs"] == 6
    attribution = {s["prefix"]: s for s in src.report()["sets"]}
    assert attribution["aa"]["license"] == "MIT" and attribution["dd"]["author"] == "author dd"
    assert src.num_shards() == 3
    shard = src.read_shard(0)
    assert [p.key for p in shard.pairs] == keys[:2] and shard.counts["pairs"] == 2
    img = load_image(shard.pairs[1].image)
    assert img.size == (224, 224) and img.getpixel((0, 0)) == (255, 255, 255)
    outline = next(p for i in range(src.num_shards()) for p in src.read_shard(i).pairs if p.key.endswith("home-outline"))
    assert outline.meta["set"] == "aa" and outline.meta["category"] == "Buildings / Places"


def test_opened_by_spec_and_concatenated(package, tmp_path, monkeypatch):
    monkeypatch.setenv("GRAMPROMPT_CACHE", str(tmp_path / "cache"))
    _source(package, tmp_path, evaluation=None)  # warm nothing: open_pair_source builds its own selection below
    monkeypatch.setattr("gramprompt.data.exclusion.evaluation_hashes", lambda cache: ({}, {}))
    src = open_pair_source(f"iconify:3?root={package}", shard_size=2)
    assert isinstance(src, IconifyPairSource) and len(src) == 3
    listed = ListPairSource("list", [ImageTextPair("a", "x.png", "a cat")] * 3, 2)
    both = ConcatPairSource("list+iconify", [listed, src])
    assert both.num_shards() == 4
    assert [both.read_shard(i).index for i in range(4)] == [0, 1, 2, 3]
    assert both.read_shard(2).pairs[0].key == src.read_shard(0).pairs[0].key
    assert set(both.report()) == {src.name}


def test_style_words_kept_on_request(package, tmp_path):
    src = _source(package, tmp_path, "style=keep")
    captions = {e["key"]: e["caption"] for e in src.entries}
    assert captions["iconify/aa/home-outline"] == "home outline. buildings, places"


def test_nested_subsets(package, tmp_path):
    whole = _source(package, tmp_path)
    keys = [e["key"] for e in whole.entries]
    for n in range(1, len(keys) + 1):  # iconify:N is the first N pairs of iconify, whatever was rendered before
        assert [e["key"] for e in _source(package, tmp_path / f"fresh{n}", n=str(n)).entries] == keys[:n]
        assert [e["key"] for e in _source(package, tmp_path, n=str(n)).entries] == keys[:n]
    other = [e["key"] for e in _source(package, tmp_path, "seed=5").entries]
    assert len(other) == len(keys) and other != keys  # another order (and maybe another of two duplicates)



def test_a_small_corpus_renders_only_what_it_needs(package, tmp_path, monkeypatch):
    import gramprompt.data.pairs.iconify_source as source

    def rendered(src):
        sides = [json.loads(p.read_text()) for p in Path(src.report()["renders"]).rglob("*.json")]
        return sum(len(s["name"]) + len(s["skipped"]) for s in sides)

    monkeypatch.setattr(source, "CHUNK", 1)  # blocks as small as what is missing
    small = _source(package, tmp_path, n="2")
    assert rendered(small) == math.ceil(1.25 * 2) < small.report()["counts"]["candidates"]
    whole = _source(package, tmp_path)
    assert rendered(whole) == whole.report()["counts"]["candidates"] == whole.report()["counts"]["scanned"]


# --------------------------------------------------------------------------- rendering


def test_rendering_is_deterministic_and_resumes(package, tmp_path):
    src = _source(package, tmp_path)
    folder = Path(src.report()["renders"])
    (side_aa,), (side_dd,) = (folder / "aa").glob("*.json"), (folder / "dd").glob("*.json")
    tar_aa, tar_dd = side_aa.with_suffix(".tar"), side_dd.with_suffix(".tar")
    first = tar_aa.read_bytes()
    stamp = tar_dd.stat().st_mtime_ns
    side_aa.unlink()  # as if killed after writing aa's tar but before its sidecar
    for selection in (tmp_path / "cache" / "selections").glob("*.json"):
        selection.unlink()
    again = _source(package, tmp_path)
    assert tar_aa.read_bytes() == first  # rendered again, byte for byte the same
    assert tar_dd.stat().st_mtime_ns == stamp  # finished chunks are not redone
    assert [e["key"] for e in again.entries] == [e["key"] for e in src.entries]


# --------------------------------------------------------------------------- exclusion


def test_evaluation_images_are_excluded_per_set(package, tmp_path):
    # an evaluation set holding aa/format-bold and dd/pyramid, drawn elsewhere (64 px, other view box, JPEG)
    dataset = ClassificationDataset("fake-eval", ["a", "b"], train=[Sample(np.asarray(load_image(
        _icon_png(BARS, "-1 -1 18 18", 64))), 0)], test=[Sample(np.asarray(load_image(_icon_png(TRIANGLE, "0 0 16 16", 96))), 1)])
    hashes, missing = evaluation_hashes(tmp_path / "eval", {"fake-eval": lambda: dataset})
    assert missing == {} and len(hashes["fake-eval"]) == 2
    assert evaluation_hashes(tmp_path / "eval", {"fake-eval": lambda: 1 / 0})[0]["fake-eval"].tolist() == \
        hashes["fake-eval"].tolist()  # cached: not loaded again
    src = _source(package, tmp_path, evaluation=hashes)
    keys = {e["key"] for e in src.entries}
    assert "iconify/aa/format-bold" not in keys and "iconify/dd/pyramid" not in keys
    assert src.report()["excluded_by_evaluation_set"]["removed"] == {"fake-eval": 2}
    assert src.report()["counts"]["excluded_evaluation"] == 2
    # and nothing kept is within the match distance of an evaluation image
    kept = np.stack([thumbnail(load_image(p.image)) for i in range(src.num_shards()) for p in src.read_shard(i).pairs])
    assert (nearest_within(kept, hashes["fake-eval"], parse_iconify_spec("iconify").match) == -1).all()


def test_missing_evaluation_set_is_reported(tmp_path):
    from gramprompt.data.dataset import DatasetError as E

    def absent():
        raise E("needs a package")

    hashes, missing = evaluation_hashes(tmp_path, {"absent": absent})
    assert hashes == {} and "needs a package" in missing["absent"]


def test_user_exclusion_folders(package, tmp_path):
    folder = tmp_path / "my-eval" / "cls"
    folder.mkdir(parents=True)
    (folder / "x.jpg").write_bytes(_icon_png(RING, "0 0 16 16", 128))
    (folder / "broken.png").write_bytes(b"not a png")
    src = _source(package, tmp_path, f"exclude-images={tmp_path / 'my-eval'}")
    assert "iconify/aa/ring-24-regular" not in {e["key"] for e in src.entries}
    counts = src.report()["counts"]
    assert counts["excluded_user_images"] == 1 and counts["exclude_images_unreadable"] == 1
    with pytest.raises(FileNotFoundError):
        _source(package, tmp_path, f"exclude-images={tmp_path / 'nowhere'}")


def test_real_evaluation_images_redrawn_as_icons_are_excluded(tmp_path):
    """Shipped test images (emoji-groups, Noto Color Emoji) embedded in icons of a fabricated set with
    other framing and size are removed, and no other icon is."""
    from gramprompt.data.offline import load_emoji_groups

    emoji = load_emoji_groups()
    chosen = emoji.test[:6]
    icons = {}
    for i, sample in enumerate(chosen):
        buf = io.BytesIO()
        load_image(sample.source).save(buf, format="PNG")
        data = base64.b64encode(buf.getvalue()).decode()
        icons[f"emoji-{i}"] = {"body": f'<image width="16" height="16" href="data:image/png;base64,{data}"/>'}
    icons["plus"] = {"body": CROSS}
    root = tmp_path / "pkg"
    (root / "json").mkdir(parents=True)
    (root / "json" / "ee.json").write_text(json.dumps({"prefix": "ee", "icons": icons, "width": 20, "height": 20,
                                                       "left": -2, "top": -2}))
    (root / "collections.json").write_text(json.dumps({"ee": {"name": "E", "total": 7, "license": {"spdx": "MIT"}}}))
    subset = ClassificationDataset("emoji-groups", emoji.classnames, [], list(emoji.test[:40]))
    hashes, _ = evaluation_hashes(tmp_path / "eval", {"emoji-groups": lambda: subset})
    src = IconifyPairSource(f"iconify?root={root}", 10, cache=tmp_path / "cache", workers=1, evaluation=hashes)
    assert [e["key"] for e in src.entries] == ["iconify/ee/plus"]
    assert src.report()["excluded_by_evaluation_set"]["removed"] == {"emoji-groups": 6}


# --------------------------------------------------------------------------- hash look-ups


def test_near_index_and_brute_force_agree():
    rng = random.Random(0)
    base = [rng.getrandbits(256) for _ in range(300)]
    stored = base + [b ^ (1 << rng.randrange(256)) ^ (1 << rng.randrange(256)) for b in base[:50]]
    index = NearIndex(3)
    index.extend(stored)
    queries = [*base[:60], *(b ^ (1 << rng.randrange(256)) for b in base[60:90]), *(rng.getrandbits(256) for _ in range(40))]
    for q in queries:
        dist = np.asarray([(q ^ h).bit_count() for h in stored])
        assert index.nearest(q)[0] == (int(dist.argmin()) if dist.min() <= 3 else -1)
    exact = NearIndex(0)
    exact.extend(stored)
    assert exact.nearest(stored[7])[0] == 7 and exact.nearest(stored[7] ^ 1)[0] == -1


def test_nearest_within_matches_brute_force():
    rng = np.random.default_rng(0)
    refs = rng.integers(0, 256, (200, 256), dtype=np.uint8)
    near = np.clip(refs[:30].astype(int) + rng.integers(-12, 13, (30, 256)), 0, 255).astype(np.uint8)
    queries = np.concatenate([near, rng.integers(0, 256, (20, 256), dtype=np.uint8)])
    got = nearest_within(queries, refs, 8.0, 0.9, chunk=7)
    q, r = queries[:, None].astype(float), refs[None].astype(float)
    rms = np.sqrt(((q - r) ** 2).mean(-1))
    qc, rc = q - q.mean(-1, keepdims=True), r - r.mean(-1, keepdims=True)
    corr = (qc * rc).sum(-1) / np.sqrt((qc ** 2).sum(-1) * (rc ** 2).sum(-1))
    score = np.where((rms <= 8.0) & (corr >= 0.9), corr, -np.inf)
    want = np.where(np.isfinite(score.max(1)), score.argmax(1), -1)
    assert got.tolist() == want.tolist() and (got[:30] == np.arange(30)).all()
    # a pale picture is near any pale picture in RMS, but not correlated with it
    pale = np.full((2, 256), 250, np.uint8)
    pale[0, :128], pale[1, ::2] = 240, 240
    assert nearest_within(pale[:1], pale[1:], 12.0, 0.95).tolist() == [-1]
    assert nearest_within(pale[:1], pale[1:], 12.0, 0.0).tolist() == [0]


def test_image_fingerprints_ignore_framing_but_not_content():
    img = Image.new("RGB", (100, 100), "white")
    ImageDraw.Draw(img).polygon([(20, 80), (50, 20), (80, 80)], fill="black")
    framed = Image.new("RGB", (300, 200), "white")
    framed.paste(img.resize((150, 150)), (40, 30))
    other = Image.new("RGB", (100, 100), "white")
    ImageDraw.Draw(other).ellipse([20, 20, 80, 80], fill="black")
    assert (picture_hash(img) ^ picture_hash(framed)).bit_count() <= 4
    assert (picture_hash(img) ^ picture_hash(other)).bit_count() > 30
    rms = lambda a, b: float(np.sqrt(((thumbnail(a).astype(float) - thumbnail(b)) ** 2).mean()))
    assert rms(img, framed) < parse_iconify_spec("iconify").match < rms(img, other)
    got = dataset_hashes(ClassificationDataset("x", ["a"], [Sample(np.asarray(img), 0)], []))
    assert got.tolist() == [thumbnail(img).tolist()]


def test_gram_chc_features_stage_records_the_selection(package, tmp_path, tiny_clip_dir, monkeypatch, capsys):
    from gramprompt.cli import main

    monkeypatch.setenv("GRAMPROMPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("gramprompt.data.exclusion.evaluation_hashes", lambda cache: ({}, {"noto-scripts": "absent"}))
    out = tmp_path / "chc"
    assert main(["chc", "--pairs", f"iconify?root={package}", "--exclude-sets", "dd", "--backbone", f"hf:{tiny_clip_dir}",
                 "--out", str(out), "--stage", "features", "--text-model", "default"]) == 0
    report = json.loads((out / "features" / "source.json").read_text())
    assert report["spec"].endswith("exclude-sets=dd") and [s["prefix"] for s in report["sets"]] == ["aa"]
    assert report["pairs"] == 4 and report["counts"]["excluded_set_icons"] == 4
    from gramprompt.chc.store import FeatureStore
    from gramprompt.data.pairs.iconify_source import exclusion_summary

    assert FeatureStore(out / "features").counts()["pairs"] == 4
    text = exclusion_summary(report)
    assert "4 pairs from 1 sets" in text and "not installed (not checked): noto-scripts" in text
