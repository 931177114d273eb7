"""Tux Paint stamps labelled by top-level folder: a downstream set kept free of openclipart.

The image model is trained on openclipart, and some stamps were made from openclipart art.
Two rules leave those out: a stamp whose SVG twin, ``.txt`` or ``.dat`` mentions openclipart
(checked at load time), and a near-copy of an openclipart PNG (``is_near_copy``, found once
and shipped as ``tuxpaint_openclipart_copies.json`` since hashing 6883 openclipart PNGs takes
a minute). Regenerate that file after a change of either package, of ``EXCLUDED_FOLDERS`` or
of the near-copy rule: ``python -m gramprompt.data.tuxpaint --write-exclusions``.

Stamps come in families (``pig``, ``pig_golden``, ``pig_golden2``; one flag in six colours),
so the split keeps every family on one side; see ``family_key`` and ``splits.grouped_split``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from gramprompt.data.dataset import ClassificationDataset, DatasetError, Sample, require_two_classes
from gramprompt.data.offline import SPLIT_SEED, TEST_FRACTION, readable
from gramprompt.data.pairs.openclipart import OPENCLIPART_PNG, png_index, usable_pngs
from gramprompt.data.splits import grouped_split

TUXPAINT_STAMPS = "/usr/share/tuxpaint/stamps"
TUXPAINT_INSTALL = (
    "tuxpaint-stamps needs the Debian package tuxpaint-stamps-default: "
    "sudo apt-get install tuxpaint-stamps-default"
)
COPIES_FILE = Path(__file__).with_name("tuxpaint_openclipart_copies.json")
REGENERATE = "python -m gramprompt.data.tuxpaint --write-exclusions"

# "symbols" is mostly alphabet letters, digits and coins. "seasonal" holds bunnies, chicks,
# a black cat, daffodils and Christmas pudding: pictures whose right answer is another class.
EXCLUDED_FOLDERS = frozenset({"symbols", "seasonal"})
MIN_CLASS_IMAGES = 8  # below this a 30% test split holds one or two images

# Near-copy rule, tuned by eye on the closest stamp/openclipart pairs: dHash within
# MAX_HAMMING bits, aspect ratios within MAX_ASPECT, and thumbnails within MAX_MAD grey levels
# (mean absolute difference), or within LOOSE_MAD when correlated >= MIN_CORRELATION (a
# re-shaded or re-cropped copy shifts grey levels but keeps the picture).
MAX_HAMMING = 13
MAX_ASPECT = 1.12
MAX_MAD = 12.0
LOOSE_MAD = 20.0
MIN_CORRELATION = 0.95
_INK = 230  # darker grey counts as drawn; JPEG ringing and anti-aliasing haze stay lighter

_COLOUR = re.compile(r"(?<![a-z])(?:black|blue|brown|checkered|golden|green|grey|pink|purple|"
                     r"red|white|yellow)(?:-and-)?")


# --------------------------------------------------------------------------- near-copies


@dataclass(frozen=True)
class Fingerprint:
    """What two pictures are compared by: the drawing's dHash, aspect ratio and thumbnail."""

    dhash: int
    aspect: float
    thumb: np.ndarray  # 32x32 float64 grey; unless blank, darkest pixel stretched to black


def fingerprint(img: Image.Image) -> Fingerprint:
    """Greyscale on white (as the model sees it), cropped to the drawing so padding does not
    matter; the thumbnail's contrast is stretched so a faint drawing compares by its shape."""
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    white.alpha_composite(rgba)
    grey = white.convert("L")
    box = grey.point(lambda v: 255 if v < _INK else 0).getbbox()
    if box is not None:
        grey = grey.crop(box)
    small = np.asarray(grey.resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    dhash = int("".join("1" if b else "0" for b in (small[:, :-1] > small[:, 1:]).ravel()), 2)
    thumb = np.asarray(grey.resize((32, 32), Image.Resampling.BOX), dtype=np.float64)
    if thumb.min() < _INK:
        thumb = 255.0 - (255.0 - thumb) * (255.0 / (255.0 - thumb.min()))
    return Fingerprint(dhash, grey.width / grey.height, thumb)


def copy_distance(a: Fingerprint, b: Fingerprint) -> float | None:
    """Mean absolute thumbnail difference when ``a`` and ``b`` are near-copies, else None.

    A blank picture (say, a white drawing on white) shows nothing, so it copies nothing.
    """
    if a.thumb.min() >= _INK or b.thumb.min() >= _INK:
        return None
    if bin(a.dhash ^ b.dhash).count("1") > MAX_HAMMING:
        return None
    if max(a.aspect, b.aspect) / min(a.aspect, b.aspect) > MAX_ASPECT:
        return None
    mad = float(np.abs(a.thumb - b.thumb).mean())
    if mad <= MAX_MAD:
        return mad
    x, y = a.thumb - a.thumb.mean(), b.thumb - b.thumb.mean()
    norm = float(np.linalg.norm(x) * np.linalg.norm(y))
    correlated = norm > 0 and float((x * y).sum()) / norm >= MIN_CORRELATION
    return mad if correlated and mad <= LOOSE_MAD else None


def is_near_copy(a: Image.Image, b: Image.Image) -> bool:
    """Whether ``b`` shows ``a``'s drawing, perhaps re-encoded, rescaled or re-padded."""
    return copy_distance(fingerprint(a), fingerprint(b)) is not None


def _fingerprints(path: Path, mirrored: bool = False) -> list[Fingerprint]:
    """The picture's fingerprint (and its mirror image's); none for an unreadable file."""
    try:
        with Image.open(path) as img:
            img.load()
            views = [img, ImageOps.mirror(img)] if mirrored else [img]
            return [fingerprint(view) for view in views]
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return []


def find_openclipart_copies(stamps_root: str | os.PathLike = TUXPAINT_STAMPS,
                            openclipart_root: str | os.PathLike = OPENCLIPART_PNG) -> list[dict]:
    """Every stamp the loader could use that is a near-copy of an openclipart PNG, itself or
    mirrored (Tux Paint art is often flipped), with its closest match; sorted by stamp.

    The reference is what the image model was trained on: openclipart's usable PNGs
    (``usable_pngs``, so not the 19 above 4096x4096 pixels), one per byte-identical copy.
    """
    root = Path(openclipart_root)
    reference, seen = [], set()
    for info in usable_pngs(png_index(root)):
        if info.sha1 not in seen:
            seen.add(info.sha1)
            reference.extend((info.rel, fp) for fp in _fingerprints(root / info.rel))
    found = []
    for rel in _candidates(Path(stamps_root)):
        views = _fingerprints(Path(stamps_root) / rel, mirrored=True)
        matches = [(d, oc_rel, mirrored) for oc_rel, oc in reference
                   for mirrored, fp in zip((False, True), views)
                   if (d := copy_distance(fp, oc)) is not None]
        if matches:
            distance, oc_rel, mirrored = min(matches)
            found.append({"stamp": rel, "openclipart": oc_rel, "distance": round(distance, 1),
                          "mirrored": mirrored})
    return found


def write_exclusions(path: str | os.PathLike = COPIES_FILE) -> list[dict]:
    """Recompute the shipped near-copy list; one JSON object a line, so changes diff well."""
    copies = find_openclipart_copies()
    Path(path).write_text("[\n" + ",\n".join(json.dumps(row) for row in copies) + "\n]\n")
    return copies


def _read_copies(path: Path) -> set[str]:
    try:
        return {row["stamp"] for row in json.loads(path.read_text())}
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise DatasetError(f"{path}: unreadable openclipart exclusion list ({exc}); "
                           f"regenerate it with {REGENERATE}") from exc


# --------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class Stamp:
    """A usable stamp: absolute path, class name and family key (see ``family_key``)."""

    path: str
    classname: str
    family: str


def family_key(rel: str) -> str:
    """``animals/mammals/pig_golden2.png`` -> ``animals/pig``: the class plus the first word
    (2+ letters) of the name once colour words are gone, so recoloured variants
    (``redflag``/``greenflag``), numbered ones (``cep-1``) and views (``gnu-sitting``) group.
    """
    stem = _COLOUR.sub("", Path(rel).stem.lower())
    words = re.findall(r"[a-z]{2,}", stem)
    return f"{rel.split('/', 1)[0]}/{words[0] if words else stem}"


def _candidates(root: Path, counts: Counter[str] | None = None) -> list[str]:
    """PNG stamps under a class folder, sorted; ``_mirror`` alternates and excluded folders out.

    A stamp's SVG twin is never used (no SVG renderer), so PNG/SVG twins count once.
    """
    counts = Counter() if counts is None else counts
    out = []
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            rel = Path(dirpath, name).relative_to(root).as_posix()
            if not name.lower().endswith(".png") or "/" not in rel:
                continue
            if "_mirror" in name:
                counts["mirror"] += 1
            elif rel.split("/", 1)[0] in EXCLUDED_FOLDERS:
                counts[f"folder {rel.split('/', 1)[0]}"] += 1
            else:
                out.append(rel)
    return out


def _mentions_openclipart(png: Path) -> bool:
    """Whether the SVG twin or the text files credit openclipart; unreadable ones count as
    yes, since then nothing rules it out."""
    for twin in (png.with_suffix(".svg"), png.with_suffix(".txt"), png.with_suffix(".dat")):
        try:
            if twin.is_file() and b"openclipart" in twin.read_bytes().lower():
                return True
        except OSError:
            return True
    return False


def list_stamps(root: str | os.PathLike | None = None,
                copies_file: str | os.PathLike = COPIES_FILE) -> tuple[list[Stamp], dict[str, int]]:
    """Usable stamps sorted by path, and how many files each rule left out (first rule wins).

    Rules, in order: ``mirror``, ``folder <name>`` (``EXCLUDED_FOLDERS``),
    ``openclipart metadata``, ``openclipart copy`` (the shipped list), ``unreadable`` (a
    broken link or a file without read permission), ``copy across classes`` (byte-identical
    files under two classes: the label is ambiguous, all dropped), ``duplicate`` (further
    byte-identical copies within a class), ``small class`` (fewer than ``MIN_CLASS_IMAGES``
    images or a single family, which cannot be split).
    Images are not decoded; a corrupt PNG is skipped later by ``load_batch``.
    """
    root = Path(TUXPAINT_STAMPS if root is None else root)
    if not root.is_dir():
        raise DatasetError(TUXPAINT_INSTALL)
    counts: Counter[str] = Counter()
    copies = _read_copies(Path(copies_file))
    kept: list[tuple[str, str]] = []
    for rel in _candidates(root, counts):
        if _mentions_openclipart(root / rel):
            counts["openclipart metadata"] += 1
        elif rel in copies:
            counts["openclipart copy"] += 1
        else:
            try:
                kept.append((rel, hashlib.sha1((root / rel).read_bytes()).hexdigest()))
            except OSError:  # a broken link or unreadable file
                counts["unreadable"] += 1
    classes_of: dict[str, set[str]] = {}
    for rel, digest in kept:
        classes_of.setdefault(digest, set()).add(rel.split("/", 1)[0])
    stamps, seen = [], set()
    for rel, digest in kept:
        if len(classes_of[digest]) > 1:
            counts["copy across classes"] += 1
        elif digest in seen:
            counts["duplicate"] += 1
        else:
            seen.add(digest)
            stamps.append(Stamp(str(root / rel), readable(rel.split("/", 1)[0]), family_key(rel)))
    sizes = Counter(s.classname for s in stamps)
    families = {c: {s.family for s in stamps if s.classname == c} for c in sizes}
    small = {c for c, n in sizes.items() if n < MIN_CLASS_IMAGES or len(families[c]) < 2}
    counts["small class"] += sum(sizes[c] for c in small)
    stamps = [s for s in stamps if s.classname not in small]
    counts["images"] = len(stamps)
    return stamps, dict(sorted(counts.items()))


# --------------------------------------------------------------------------- split


def load_tuxpaint_stamps(test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED,
                         root: str | os.PathLike | None = None) -> ClassificationDataset:
    """Tux Paint PNG stamps labelled by top-level folder ("animals", "food", ...), split by
    family; ``root`` defaults to ``TUXPAINT_STAMPS``. See ``list_stamps`` for what is left out."""
    stamps, _ = list_stamps(root)
    classnames = sorted({s.classname for s in stamps})
    index = {c: i for i, c in enumerate(classnames)}
    samples = [Sample(s.path, index[s.classname]) for s in stamps]
    train, test = grouped_split(samples, [s.family for s in stamps], classnames,
                                test_fraction, seed)
    dataset = ClassificationDataset(name="tuxpaint-stamps", classnames=classnames,
                                    train=train, test=test)
    require_two_classes(dataset, str(TUXPAINT_STAMPS if root is None else root))
    return dataset


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Tux Paint stamps: summary, or rebuild the "
                                                 "openclipart near-copy list shipped with it.")
    parser.add_argument("--write-exclusions", action="store_true",
                        help=f"recompute {COPIES_FILE.name} (about a minute)")
    if parser.parse_args(argv).write_exclusions:
        copies = write_exclusions()
        print(f"{len(copies)} near-copies written to {COPIES_FILE}")
        return
    start = time.perf_counter()
    dataset = load_tuxpaint_stamps()
    print(f"listed and split in {time.perf_counter() - start:.2f} s; counts: {list_stamps()[1]}")
    for label, name in enumerate(dataset.classnames):
        n_train = sum(s.label == label for s in dataset.train)
        n_test = sum(s.label == label for s in dataset.test)
        print(f"{name}: {n_train}/{n_test}")


if __name__ == "__main__":
    main()
