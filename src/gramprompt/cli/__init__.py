"""gram: the command line, one module per group of commands, listed by ``gram --help`` in the order of the work.

``build_parser`` asks each group module (data, meta, tuning, experiments, tools) to register its commands and
builds the top-level help's map of them from what they return; ``main`` runs the chosen command and turns bad
input into one ``gram: error:`` line (exit 2).
"""
from __future__ import annotations

import argparse
import errno
import logging
import sys
import textwrap

from ..errors import USER_ERRORS
from . import data, experiments, meta, tools, tuning
from .common import Entry

__all__ = ["build_parser", "main"]

SUMMARY = ("GRAM (gradient-regulated meta-prompt learning) makes few-shot prompt tuning of a frozen CLIP generalize: "
           "CHC (cross-modal hierarchical clustering) turns image-text pairs into tasks, and meta-training learns "
           "on them a prompt initialization and a gradient regulator that tuning starts from.")
# the command groups in the order of the work: data -> CHC -> meta-training -> tuning -> tables
GROUPS = (data, meta, tuning, experiments, tools)
NAME_WIDTH = 24  # column of the one-line summaries in the map


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gram", usage="%(prog)s [-h] [-v] COMMAND ...",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    # argparse would list every command in one block in the order of registration: the description holds
    # the map by group instead, and the block is left out
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help=argparse.SUPPRESS, prog="gram")
    groups = [(group.TITLE, group.add_commands(sub)) for group in GROUPS]
    parser.description = f"{textwrap.fill(SUMMARY, 100, break_on_hyphens=False)}\n\n{command_map(groups)}"
    return parser


def command_map(groups: list[tuple[str, list[Entry]]]) -> str:
    """The commands under their group headings, one line each, and where a newcomer starts."""
    lines = ["commands, in the order of the work (gram COMMAND --help: its flags and their defaults):"]
    for title, entries in groups:
        lines += ["", f"  {title}:"]
        lines += [f"    {name:<{NAME_WIDTH - 4}}{summary}" if len(name) < NAME_WIDTH - 4 else
                  f"    {name}\n{'':<{NAME_WIDTH}}{summary}" for name, summary in entries]
    lines += ["", "new here? gram demo --quick runs the whole pipeline offline in under 5 minutes on 2 cores"]
    return "\n".join(lines)


def _one_line(err: BaseException) -> str:
    """The message of ``err`` on one line; OS errors name the file (``[Errno 13] ...`` says nothing to a user)."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = err.filename if err.filename is not None else "the output folder's disk"
        text = f"no space left on the device while writing {where}: free space, then rerun the same command to resume"
    elif isinstance(err, OSError) and err.strerror and err.filename is not None:
        text = f"{err.filename}: {err.strerror}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return args.fn(args)
    except USER_ERRORS as err:  # bad input: one line, exit 2 (anything else is a bug and keeps its traceback)
        print(f"gram: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gram: interrupted", file=sys.stderr)
        return 130
