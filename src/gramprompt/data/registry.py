"""One string spec -> ClassificationDataset, so the CLI and configs name datasets uniformly."""
from __future__ import annotations

from gramprompt.data.builtin import BUILTIN_DATASETS
from gramprompt.data.coop import COOP_DATASETS, load_coop
from gramprompt.data.dataset import ClassificationDataset, DatasetError
from gramprompt.data.imagefolder import load_imagefolder

SPEC_FORMS = ("imagefolder:PATH", "coop:NAME:ROOT", "<built-in name>")


def dataset_names() -> list[str]:
    """Built-in dataset names, usable as a spec on their own."""
    return sorted(BUILTIN_DATASETS)


def _bad_spec(spec: str, why: str) -> DatasetError:
    return DatasetError(
        f"{why}: {spec!r}. Valid forms: {', '.join(SPEC_FORMS)}; "
        f"built-in names: {', '.join(dataset_names())}; "
        f"CoOp names: {', '.join(COOP_DATASETS)}"
    )


def load_dataset(spec: str) -> ClassificationDataset:
    """Load ``imagefolder:PATH``, ``coop:NAME:ROOT`` or a built-in name such as ``digits``.

    Only the first ``:`` (two for coop) separate fields, so paths may contain ``:``.
    """
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    kind = kind.lower()
    if sep and kind == "imagefolder":
        if not rest:
            raise _bad_spec(spec, "imagefolder spec needs a path")
        return load_imagefolder(rest)
    if sep and kind == "coop":
        name, sep2, root = rest.partition(":")
        if not (name and sep2 and root):
            raise _bad_spec(spec, "coop spec needs a name and a root")
        return load_coop(name, root)
    if spec.lower() in BUILTIN_DATASETS:
        return BUILTIN_DATASETS[spec.lower()]()
    raise _bad_spec(spec, "unknown dataset spec")
