"""Load a generic ``root/<class>/.../*.jpg`` image folder as a ClassificationDataset.

Either ``root`` holds class folders directly (a seeded stratified split is made), or it
holds ``train/`` and ``test/`` (optionally ``val/``) folders that each hold class folders.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from gramprompt.data.dataset import ClassificationDataset, DatasetError, Sample, prompt_key, require_two_classes
from gramprompt.data.splits import stratified_split

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLIT_DIRS = ("train", "val", "test")


def is_image_file(name: str) -> bool:
    """Image files are recognised by extension, case-insensitively."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def class_dirname_to_name(dirname: str) -> str:
    """Folder names use underscores for spaces (``golden_retriever`` -> ``golden retriever``)."""
    return dirname.replace("_", " ")


def _class_names(folders: list[str], root: Path) -> list[str]:
    """Class names of the sorted class ``folders`` under ``root``, in that order.

    Two folders that read as one name (``red_car`` and ``red car``) are an error: they would
    become two labels that no prompt can tell apart.
    """
    folder_of: dict[str, str] = {}
    names = []
    for folder in folders:
        name = class_dirname_to_name(folder)
        key = prompt_key(name)
        if key in folder_of:
            raise DatasetError(
                f"class folders {folder_of[key]!r} and {folder!r} under {root} both read as class "
                f"{key!r} (underscores read as spaces; case, Unicode form and repeated spaces do not count): "
                "merge them or rename one"
            )
        folder_of[key] = folder
        names.append(name)
    return names


def _class_dirs(folder: Path) -> dict[str, Path]:
    """Visible sub-folders of ``folder`` by name."""
    return {
        p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")
    }


def _unreadable_folder(err: OSError) -> None:
    raise DatasetError(f"cannot read the folder {err.filename}: {err.strerror} (a class folder that cannot be read "
                       "would silently drop its class)")


def _image_files(class_dir: Path) -> list[str]:
    """The readable regular image files under ``class_dir`` (recursive, sorted, hidden entries skipped).
    Anything else with an image name (a FIFO or device would block a read forever; a file without read
    permission would fail the run) is skipped with a warning; an unreadable sub-folder is an error."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(class_dir, onerror=_unreadable_folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith(".") or not is_image_file(f):
                continue
            path = os.path.join(dirpath, f)
            if not os.path.isfile(path):
                logger.warning("skipping %s: not a regular file", path)
            elif not os.access(path, os.R_OK):
                logger.warning("skipping %s: no permission to read it", path)
            else:
                found.append(path)
    return found


def _scan(folder: Path) -> dict[str, list[str]]:
    """Image paths per class folder name; empty class folders are skipped with a warning."""
    dirs = _class_dirs(folder)
    if not dirs:
        raise DatasetError(f"no class folders in {folder}")
    files: dict[str, list[str]] = {}
    for name, path in dirs.items():
        images = _image_files(path)
        if images:
            files[name] = images
        else:
            logger.warning("skipping class folder with no images: %s", path)
    return files


def _samples(files: dict[str, list[str]], label_of: dict[str, int]) -> list[Sample]:
    return [Sample(p, label_of[name]) for name in sorted(files) for p in files[name]]


def load_imagefolder(
    root: str | os.PathLike,
    *,
    name: str | None = None,
    test_fraction: float = 0.3,
    seed: int = 0,
) -> ClassificationDataset:
    """Load an image-folder dataset; ``name`` defaults to the root folder's name.

    Classes are the sorted class-folder names (labels follow that order), underscores read
    as spaces; there must be at least 2, with distinct names. A root containing ``train/`` or ``test/`` is read as pre-split (both must
    exist; ``val/`` is optional; a class may be missing from some splits). Otherwise
    ``test_fraction`` of each class (default 0.3) is held out for test, seeded by ``seed``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder root does not exist or is not a folder: {root}")
    name = name or root.resolve().name
    present = [s for s in SPLIT_DIRS if (root / s).is_dir()]
    if "train" in present or "test" in present:
        dataset = _load_presplit(root, name, present)
    else:
        dataset = _load_unsplit(root, name, test_fraction, seed)
    require_two_classes(dataset, str(root))
    return dataset


def _load_unsplit(root: Path, name: str, test_fraction: float, seed: int) -> ClassificationDataset:
    files = _scan(root)
    if not files:
        raise DatasetError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {root}")
    classes = sorted(files)
    classnames = _class_names(classes, root)
    singletons = [str(root / c) for c in classes if len(files[c]) < 2]
    if singletons:
        raise DatasetError(f"a stratified split needs >= 2 images per class; only 1 in {singletons}")
    label_of = {c: i for i, c in enumerate(classes)}
    try:
        train, test = stratified_split(_samples(files, label_of), test_fraction, seed)
    except ValueError as exc:
        raise DatasetError(f"cannot split {root} with test_fraction={test_fraction}: {exc}") from exc
    return ClassificationDataset(name=name, classnames=classnames, train=train, test=test)


def _load_presplit(root: Path, name: str, present: list[str]) -> ClassificationDataset:
    for required in ("train", "test"):
        if required not in present:
            raise DatasetError(
                f"{root} has a split folder but no {required}/ folder: expected {root / required}"
            )
    per_split = {split: _scan(root / split) for split in present if split != "val"}
    if "val" in present:
        if _class_dirs(root / "val"):
            per_split["val"] = _scan(root / "val")
        else:
            logger.warning("ignoring val/ folder without class folders: %s", root / "val")
    classes = sorted({c for files in per_split.values() for c in files})
    classnames = _class_names(classes, root)
    label_of = {c: i for i, c in enumerate(classes)}
    samples = {split: _samples(files, label_of) for split, files in per_split.items()}
    for required in ("train", "test"):
        if not samples[required]:
            raise DatasetError(f"no image files in {root / required}")
    return ClassificationDataset(
        name=name,
        classnames=classnames,
        train=samples["train"],
        test=samples["test"],
        val=samples.get("val", []),
    )
