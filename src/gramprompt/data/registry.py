"""One string spec -> ClassificationDataset, so the CLI and configs name datasets uniformly."""
from __future__ import annotations

import os
from pathlib import Path

from gramprompt.data.builtin import BUILTIN_DATASETS
from gramprompt.data.coop import COOP_DATASETS, canonical_name, load_coop
from gramprompt.data.dataset import ClassificationDataset, DatasetError
from gramprompt.data.imagefolder import load_imagefolder
from gramprompt.data.imagenet_variants import IMAGENET_VARIANTS, load_variant, variant_name
from gramprompt.data.splits import validation_name, validation_view

SPEC_FORMS = ("imagefolder:PATH", "coop:NAME:ROOT", "<built-in name>", "val:<any of these>")
VAL = "val"  # ``val:SPEC``: the dataset's validation view (see splits.validation_view), for choosing settings


def dataset_names() -> list[str]:
    """Built-in dataset names, usable as a spec on their own."""
    return sorted(BUILTIN_DATASETS)


def _bad_spec(spec: str, why: str) -> DatasetError:
    return DatasetError(
        f"{why}: {spec!r}. Valid forms: {', '.join(SPEC_FORMS)}; "
        f"built-in names: {', '.join(dataset_names())}; "
        f"CoOp names: {', '.join(COOP_DATASETS + IMAGENET_VARIANTS)}"
    )


def coop_family_name(name: str) -> str:
    """Canonical name of one of the 11 CoOp datasets or the 4 ImageNet variants (aliases accepted)."""
    variant = variant_name(name)
    if variant is not None:
        return variant
    try:
        return canonical_name(name)
    except DatasetError:
        raise DatasetError(
            f"unknown CoOp dataset {name!r}; expected one of {', '.join(COOP_DATASETS + IMAGENET_VARIANTS)} "
            "(aliases: Flowers102, DescribableTextures, ImageNet-Sketch, ImageNet-A, ImageNet-R, ...)"
        ) from None


def load_coop_family(name: str, root: str | os.PathLike) -> ClassificationDataset:
    """Load a CoOp dataset or an ImageNet variant from its CoOp layout under data root ``root``."""
    canonical = coop_family_name(name)
    return load_variant(canonical, root) if canonical in IMAGENET_VARIANTS else load_coop(canonical, root)


def spec_name(spec: str) -> str:
    """The short name of a dataset spec, for table columns and run folders, without loading it:
    ``coop:OxfordPets:/data`` -> ``OxfordPets``, ``imagefolder:/x/pets/`` -> ``pets``, ``digits`` -> ``digits``,
    ``val:digits`` -> ``digits@val``."""
    kind, _, rest = spec.strip().partition(":")
    if kind.lower() == VAL:
        return validation_name(spec_name(rest))
    if kind.lower() == "coop":
        name = rest.partition(":")[0]
        try:
            return coop_family_name(name)
        except DatasetError:
            return name
    if kind.lower() == "imagefolder":
        return Path(rest.rstrip("/")).name
    return spec.strip()


def parse_spec(spec: str) -> tuple[str, tuple[str, ...]]:
    """``(kind, fields)`` of a dataset spec without loading anything: ``("imagefolder", (PATH,))``,
    ``("coop", (NAME, ROOT))`` or ``("builtin", (NAME,))``; a malformed or unknown spec is a DatasetError.

    Only the first ``:`` (two for coop) separate fields, so paths may contain ``:``.
    """
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    kind = kind.lower()
    if sep and kind == VAL:
        if rest.strip().lower().startswith(f"{VAL}:"):
            raise _bad_spec(spec, "a validation view of a validation view")
        return kind, (rest.strip(),)
    if sep and kind == "imagefolder":
        if not rest:
            raise _bad_spec(spec, "imagefolder spec needs a path")
        return kind, (rest,)
    if sep and kind == "coop":
        name, sep2, root = rest.partition(":")
        if not (name and sep2 and root):
            raise _bad_spec(spec, "coop spec needs a name and a root")
        coop_family_name(name)
        return kind, (name, root)
    if spec.lower() in BUILTIN_DATASETS:
        return "builtin", (spec.lower(),)
    raise _bad_spec(spec, "unknown dataset spec")


def load_dataset(spec: str) -> ClassificationDataset:
    """Load ``imagefolder:PATH``, ``coop:NAME:ROOT``, a built-in name such as ``digits``, or ``val:`` one of
    them (its validation view: test images that no reported table tests on)."""
    kind, fields = parse_spec(spec)
    if kind == VAL:
        return validation_view(load_dataset(fields[0]))
    if kind == "imagefolder":
        return load_imagefolder(*fields)
    if kind == "coop":
        return load_coop_family(*fields)
    return BUILTIN_DATASETS[fields[0]]()
