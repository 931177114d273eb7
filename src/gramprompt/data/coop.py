"""The CoOp/Dassl on-disk layouts of the 11 few-shot benchmark datasets.

Splits come from the published ``split_zhou_*.json`` files (or the datasets' own split
files for FGVCAircraft and ImageNet), so results are comparable with CoOp/CoCoOp/MaPLe.
Image files are not checked at load time (that would be slow on ImageNet); unreadable
ones are skipped later by ``images.load_batch``.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from gramprompt.data.dataset import ClassificationDataset, DatasetError, Sample, prompt_key
from gramprompt.data.imagefolder import is_image_file

logger = logging.getLogger(__name__)

COOP_DATASETS: tuple[str, ...] = (
    "ImageNet",
    "Caltech101",
    "OxfordPets",
    "StanfordCars",
    "OxfordFlowers",
    "Food101",
    "FGVCAircraft",
    "SUN397",
    "DTD",
    "EuroSAT",
    "UCF101",
)
_ALIASES = {"flowers102": "OxfordFlowers", "describabletextures": "DTD"}


@dataclass(frozen=True)
class JsonLayout:
    """``root/folder/image_dir`` holds the images, ``root/folder/split_file`` the split."""

    folder: str
    image_dir: str
    split_file: str


JSON_LAYOUTS: dict[str, JsonLayout] = {
    "Caltech101": JsonLayout("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    "OxfordPets": JsonLayout("oxford_pets", "images", "split_zhou_OxfordPets.json"),
    "StanfordCars": JsonLayout("stanford_cars", "", "split_zhou_StanfordCars.json"),
    "OxfordFlowers": JsonLayout("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    "Food101": JsonLayout("food-101", "images", "split_zhou_Food101.json"),
    "SUN397": JsonLayout("sun397", "SUN397", "split_zhou_SUN397.json"),
    "DTD": JsonLayout("dtd", "images", "split_zhou_DescribableTextures.json"),
    "EuroSAT": JsonLayout("eurosat", "2750", "split_zhou_EuroSAT.json"),
    "UCF101": JsonLayout("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
}
AIRCRAFT_FOLDER = "fgvc_aircraft"
IMAGENET_FOLDER = "imagenet"


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch not in " _-")


def _lookup() -> dict[str, str]:
    table = {_key(n): n for n in COOP_DATASETS}
    table.update(_ALIASES)
    table.update({_key(layout.folder): n for n, layout in JSON_LAYOUTS.items()})
    table.update({_key(AIRCRAFT_FOLDER): "FGVCAircraft", _key(IMAGENET_FOLDER): "ImageNet"})
    return table


_LOOKUP = _lookup()


def canonical_name(name: str) -> str:
    """Canonical dataset name; case, spaces, ``_`` and ``-`` are ignored and aliases
    (Flowers102, DescribableTextures, the on-disk folder names) accepted."""
    try:
        return _LOOKUP[_key(name)]
    except KeyError:
        raise DatasetError(
            f"unknown CoOp dataset {name!r}; expected one of {', '.join(COOP_DATASETS)} "
            "(aliases: Flowers102, DescribableTextures)"
        ) from None


def _clean(classname: str) -> str:
    return classname.replace("_", " ").strip()


def _require(path: Path, what: str) -> Path:
    exists = path.is_dir() if what == "folder" else path.is_file()
    if not exists:
        raise DatasetError(f"missing {what}: expected {path}")
    return path


def _read_lines(path: Path) -> list[str]:
    """Non-blank, stripped lines of a required text file."""
    text = _require(path, "file").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_coop(name: str, root: str | os.PathLike) -> ClassificationDataset:
    """Load one of ``COOP_DATASETS`` from data root ``root`` (which holds its folder)."""
    canonical = canonical_name(name)
    root = _require(Path(root), "folder")
    if canonical == "ImageNet":
        return _load_imagenet(root)
    if canonical == "FGVCAircraft":
        return _load_aircraft(root)
    return _load_json_split(canonical, root, JSON_LAYOUTS[canonical])


def _load_json_split(name: str, root: Path, layout: JsonLayout) -> ClassificationDataset:
    folder = _require(root / layout.folder, "folder")
    image_dir = _require(folder / layout.image_dir, "folder") if layout.image_dir else folder
    split_path = _require(folder / layout.split_file, "file")
    try:
        split = json.loads(split_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"split file is not valid JSON: {split_path}: {exc}") from exc
    except RecursionError:
        raise DatasetError(f"split file is nested too deeply to be a split: {split_path}") from None
    if not isinstance(split, dict) or not all(k in split for k in ("train", "test")):
        raise DatasetError(f"split file needs 'train' and 'test' lists: {split_path}")

    names: dict[int, str] = {}
    samples: dict[str, list[Sample]] = {}
    for part in ("train", "val", "test"):
        samples[part] = []
        for entry in split.get(part, []):
            if not (isinstance(entry, list) and len(entry) == 3
                    and isinstance(entry[0], str) and isinstance(entry[1], int)
                    and isinstance(entry[2], str)):
                raise DatasetError(
                    f"bad {part} entry {entry!r} in {split_path}; expected [path, label, classname]"
                )
            relpath, label, classname = entry
            if names.setdefault(label, _clean(classname)) != _clean(classname):
                raise DatasetError(
                    f"label {label} named both {names[label]!r} and {classname!r} in {split_path}"
                )
            samples[part].append(Sample(os.path.join(image_dir, relpath), label))
    return ClassificationDataset(
        name=name, classnames=_ordered_classnames(names, split_path),
        train=samples["train"], test=samples["test"], val=samples["val"],
    )


def _ordered_classnames(names: dict[int, str], source: Path) -> list[str]:
    """Class names by label; labels must be exactly ``0..n-1``, and their names distinct (two
    labels that no prompt can tell apart, e.g. ``red_car`` and ``red car``, are an error)."""
    missing = sorted(set(range(len(names))) - set(names))
    if missing:
        raise DatasetError(f"labels in {source} are not 0..{len(names) - 1}; missing {missing[:10]}")
    label_of: dict[str, int] = {}
    for label in range(len(names)):
        first = label_of.setdefault(prompt_key(names[label]), label)
        if first != label:
            raise DatasetError(f"labels {first} and {label} in {source} both read as class {prompt_key(names[label])!r} "
                               "(underscores read as spaces; case, Unicode form and repeated spaces do not count): "
                               "merge or rename them")
    return [names[i] for i in range(len(names))]


def _load_aircraft(root: Path) -> ClassificationDataset:
    """``variants.txt`` gives the classes in label order; ``images_variant_<split>.txt``
    lines are ``<image id> <variant name>`` with images at ``images/<id>.jpg``."""
    folder = _require(root / AIRCRAFT_FOLDER, "folder")
    image_dir = _require(folder / "images", "folder")
    variants = _read_lines(folder / "variants.txt")
    label_of = {v: i for i, v in enumerate(variants)}
    if len(label_of) != len(variants):
        raise DatasetError(f"duplicate variant names in {folder / 'variants.txt'}")
    samples: dict[str, list[Sample]] = {}
    for part in ("train", "val", "test"):
        path = folder / f"images_variant_{part}.txt"
        samples[part] = []
        for line in _read_lines(path):
            image_id, _, variant = line.partition(" ")
            if variant.strip() not in label_of:
                raise DatasetError(f"unknown variant in {path}: {line!r}")
            samples[part].append(
                Sample(os.path.join(image_dir, f"{image_id}.jpg"), label_of[variant.strip()])
            )
    return ClassificationDataset(
        name="FGVCAircraft", classnames=[_clean(v) for v in variants],
        train=samples["train"], test=samples["test"], val=samples["val"],
    )


def _load_imagenet(root: Path) -> ClassificationDataset:
    """``classnames.txt`` lines ``<wnid> <name>`` fix the label order; images are in
    ``images/{train,val}/<wnid>/``. As in CoOp, the official val set is the test split."""
    folder = _require(root / IMAGENET_FOLDER, "folder")
    classes_path = folder / "classnames.txt"
    wnids: list[str] = []
    classnames: list[str] = []
    for line in _read_lines(classes_path):
        wnid, _, classname = line.partition(" ")
        if not classname.strip():
            raise DatasetError(f"line without a class name in {classes_path}: {line!r}")
        wnids.append(wnid)
        classnames.append(_clean(classname))
    if len(set(wnids)) != len(wnids):
        raise DatasetError(f"duplicate wnids in {classes_path}")
    train = _imagenet_split(_require(folder / "images" / "train", "folder"), wnids)
    test = _imagenet_split(_require(folder / "images" / "val", "folder"), wnids)
    return ClassificationDataset(name="ImageNet", classnames=classnames, train=train, test=test)


def _imagenet_split(split_dir: Path, wnids: list[str]) -> list[Sample]:
    samples: list[Sample] = []
    for label, wnid in enumerate(wnids):
        class_dir = _require(split_dir / wnid, "folder")
        with os.scandir(class_dir) as entries:
            files = sorted(e.name for e in entries if is_image_file(e.name))
        if not files:
            logger.warning("no images in %s", class_dir)
        samples.extend(Sample(os.path.join(class_dir, f), label) for f in files)
    return samples
