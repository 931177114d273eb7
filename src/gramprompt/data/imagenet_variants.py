"""The four ImageNet test-only variants in the CoOp/Dassl layout (domain generalization targets).

Each lives in its own folder under the data root, next to a copy of ImageNet's
``classnames.txt`` (lines ``<wnid> <name>``), as CoOp's DATASETS.md asks:

- ImageNetV2 (matched frequency): ``imagenetv2/imagenetv2-matched-frequency-format-val/<label>/``,
  where ``<label>`` is the 0-based line index in ``classnames.txt``; all ImageNet classes.
- ImageNet-Sketch: ``imagenet-sketch/images/<wnid>/``; all ImageNet classes.
- ImageNet-A: ``imagenet-adversarial/imagenet-a/<wnid>/`` and
- ImageNet-R: ``imagenet-rendition/imagenet-r/<wnid>/``: only 200 wnids are present, and the label
  space is those wnids in sorted order (as CoOp does), named from ``classnames.txt``.

V2 and Sketch keep ImageNet's label order, so a model tuned on ImageNet is tested on the same
classes. The datasets are test-only: ``train`` is empty. Images are not opened at load time.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from gramprompt.data.coop import _clean, _key, _read_lines, _require
from gramprompt.data.dataset import ClassificationDataset, DatasetError, Sample
from gramprompt.data.imagefolder import is_image_file

logger = logging.getLogger(__name__)

CLASSNAMES_FILE = "classnames.txt"


@dataclass(frozen=True)
class VariantLayout:
    """``root/folder/image_dir/<class folder>/`` holds the images, ``root/folder/classnames.txt``
    the names. ``class_folders`` says what the class folders are called and which classes count:
    ``"index"`` (label numbers, all classes), ``"wnid"`` (all classes) or ``"wnid-present"``
    (only the wnids present, sorted)."""

    folder: str
    image_dir: str
    class_folders: str


VARIANT_LAYOUTS: dict[str, VariantLayout] = {
    "ImageNetV2": VariantLayout("imagenetv2", "imagenetv2-matched-frequency-format-val", "index"),
    "ImageNetSketch": VariantLayout("imagenet-sketch", "images", "wnid"),
    "ImageNetA": VariantLayout("imagenet-adversarial", "imagenet-a", "wnid-present"),
    "ImageNetR": VariantLayout("imagenet-rendition", "imagenet-r", "wnid-present"),
}
IMAGENET_VARIANTS: tuple[str, ...] = tuple(VARIANT_LAYOUTS)
_ALIASES = {"imagenetadversarial": "ImageNetA", "imagenetrendition": "ImageNetR"}


def _lookup() -> dict[str, str]:
    table = {_key(n): n for n in IMAGENET_VARIANTS}
    table.update({_key(layout.folder): n for n, layout in VARIANT_LAYOUTS.items()})
    table.update(_ALIASES)
    return table


_LOOKUP = _lookup()


def variant_name(name: str) -> str | None:
    """Canonical variant name (case, spaces, ``_`` and ``-`` ignored; folder names and
    ImageNet-Adversarial/-Rendition accepted), or ``None`` if ``name`` is no variant."""
    return _LOOKUP.get(_key(name))


def read_imagenet_classnames(path: Path) -> list[tuple[str, str]]:
    """``(wnid, class name)`` pairs in file order from a CoOp ``classnames.txt``."""
    pairs: list[tuple[str, str]] = []
    for line in _read_lines(path):
        wnid, _, classname = line.partition(" ")
        if not classname.strip():
            raise DatasetError(f"line without a class name in {path}: {line!r}")
        pairs.append((wnid, _clean(classname)))
    if len({w for w, _ in pairs}) != len(pairs):
        raise DatasetError(f"duplicate wnids in {path}")
    return pairs


def load_variant(name: str, root: str | os.PathLike) -> ClassificationDataset:
    """Load ImageNetV2, ImageNetSketch, ImageNetA or ImageNetR (aliases accepted) from ``root``."""
    canonical = variant_name(name)
    if canonical is None:
        raise DatasetError(f"unknown ImageNet variant {name!r}; expected one of {', '.join(IMAGENET_VARIANTS)}")
    layout = VARIANT_LAYOUTS[canonical]
    folder = _require(_require(Path(root), "folder") / layout.folder, "folder")
    image_dir = _require(folder / layout.image_dir, "folder")
    pairs = read_imagenet_classnames(folder / CLASSNAMES_FILE)
    if layout.class_folders == "index":
        classes = [(str(i), classname) for i, (_, classname) in enumerate(pairs)]
    elif layout.class_folders == "wnid":
        classes = pairs
    else:
        classes = _present_classes(image_dir, dict(pairs), folder / CLASSNAMES_FILE)
    test: list[Sample] = []
    for label, (class_folder, _) in enumerate(classes):
        test.extend(Sample(path, label) for path in _image_files(_require(image_dir / class_folder, "folder")))
    return ClassificationDataset(name=canonical, classnames=[c for _, c in classes], train=[], test=test)


def _present_classes(image_dir: Path, names: dict[str, str], classes_path: Path) -> list[tuple[str, str]]:
    """The wnid folders present (sorted, files such as README.txt ignored) with their names."""
    with os.scandir(image_dir) as entries:
        wnids = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if not wnids:
        raise DatasetError(f"no class folders (<wnid>/) in {image_dir}")
    unknown = [w for w in wnids if w not in names]
    if unknown:
        raise DatasetError(f"class folder(s) {unknown[:5]} in {image_dir} are not in {classes_path}")
    return [(w, names[w]) for w in wnids]


def _image_files(class_dir: Path) -> list[str]:
    with os.scandir(class_dir) as entries:
        files = sorted(e.name for e in entries if is_image_file(e.name) and not e.name.startswith("."))
    if not files:
        logger.warning("no images in %s", class_dir)
    return [os.path.join(class_dir, f) for f in files]
