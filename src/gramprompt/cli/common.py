"""What several command groups share: the help formatter, the command registration, backbone and --overwrite
flags, small argparse types."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..backbones.registry import DTYPES, SPEC_FORMS

# (command as typed after `gram`, its one-line summary): what a group module's add_commands returns for the map
Entry = tuple[str, str]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default after its help, so no help text has to repeat it by hand; the default is left
    out where the help already says it in words ("(default: ..."), for options that are required (alone, or one
    of a group, as the help says), and for on/off switches, whose default (off) goes without saying.
    A description or epilog with line breaks (a list) is kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.required or action.nargs == 0 or "(default" in text
                or "required" in text or action.default is argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def add_command(sub: argparse._SubParsersAction, name: str, summary: str, description: str | None = None,
                epilog: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``gram NAME``; its --help starts with ``description`` (else the one-line ``summary``).
    No ``help=`` is given to argparse: the top-level help prints its own map of the commands, by group."""
    return sub.add_parser(name, description=description or summary, epilog=epilog, formatter_class=HelpFormatter)


def add_backbone_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", required=True, help=f"backbone spec: {', '.join(SPEC_FORMS)}")
    add_device_arg(p)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="precision of the frozen backbone")


def add_device_arg(p: argparse.ArgumentParser, what: str = "torch device") -> None:
    p.add_argument("--device", default=None, help=f"{what} (default: cuda if available, else cpu)")


def add_overwrite_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run with other settings in --out (default: refuse; the same settings are redone)")


def add_set_arg(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"{text} (default: none; repeatable)")


def add_objective_args(p: argparse.ArgumentParser) -> None:
    """The weights of the methods with their own training objective (their official values by default)."""
    from ..prompts import PromptConfig

    d = PromptConfig()
    p.add_argument("--text-guidance", type=float, default=d.text_guidance,
                   help="kgcoop: weight of the distance between learned and hand-crafted class text features")
    p.add_argument("--projection", type=float, default=d.projection,
                   help="prograd: share of a conflicting gradient's zero-shot direction removed (0.8 in some "
                        "official runs)")
    p.add_argument("--distill-temperature", type=float, default=d.distill_temperature,
                   help="prograd: temperature of the distillation from zero-shot CLIP")
    p.add_argument("--text-consistency", type=float, default=d.text_consistency,
                   help="promptsrc: weight of the L1 distance to the frozen prompt-ensemble text features")
    p.add_argument("--image-consistency", type=float, default=d.image_consistency,
                   help="promptsrc: weight of the L1 distance to the frozen image features")


def objective_settings(a: argparse.Namespace) -> dict[str, float]:
    """The PromptConfig fields :func:`add_objective_args` sets."""
    return {"text_guidance": a.text_guidance, "projection": a.projection, "distill_temperature": a.distill_temperature,
            "text_consistency": a.text_consistency, "image_consistency": a.image_consistency}


def lr_scale(text: str) -> tuple[str, float]:
    """GROUP=X of --lr-scale, as (group, factor)."""
    group, sep, value = text.partition("=")
    try:
        if sep and group.strip():
            return group.strip(), float(value)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected GROUP=X (e.g. visual=0.3), got {text!r}")


def at_least_one(text: str) -> int:
    """An integer >= 1, for counts that must be positive (refused by the parser, before any work)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def check_run_folders(dirs: list[Path]) -> None:
    """Refuse run folders that do not exist before reading any (a typo is not an empty table)."""
    missing = [d for d in dirs if not Path(d).is_dir()]
    if missing:
        raise FileNotFoundError(f"no such run folder: {', '.join(map(str, missing))}")
