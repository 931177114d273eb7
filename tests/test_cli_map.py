"""The command line is a map: ``gram --help`` lists every command once under its group, in the order of the work;
every flag of every (sub-)command says what it does and its default; the package stays small functions."""
from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gramprompt.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "src" / "gramprompt" / "cli"
MAP = {  # the groups and their commands, in the order of the work
    "data and CHC": ["chc", "data check"],
    "meta-training": ["meta-train"],
    "tuning and evaluation": ["fewshot", "transfer", "zeroshot", "drift"],
    "experiments and tables": ["experiment", "demo", "ablations", "table", "figure"],
    "tools": ["build-default-backbone", "make-random-clip"],
}


def command_map(text: str) -> dict[str, list[tuple[str, str]]]:
    """Group heading -> (command, summary) as ``gram --help`` prints them."""
    groups: dict[str, list[tuple[str, str]]] = {}
    lines = text.split("commands, in the order of the work", 1)[1].splitlines()[1:]
    for line in lines:
        if m := re.fullmatch(r"  (\S.*):", line):
            groups[m.group(1)] = []
        elif m := re.fullmatch(r" {4}(\S+(?: \S+)?)(?: {2,}(\S.*))?", line):
            groups[list(groups)[-1]].append((m.group(1), m.group(2) or ""))
        elif line.startswith(" " * 8) and groups and not groups[list(groups)[-1]][-1][1]:  # summary on its own line
            name, _ = groups[list(groups)[-1]][-1]
            groups[list(groups)[-1]][-1] = (name, line.strip())
        elif line and not line.startswith(" "):
            break  # the map ends at the first unindented line after it
    return groups


def sub_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("gram",)):
    """(path, parser) for the parser and every sub-parser below it, e.g. ("gram", "figure", "fig1a")."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from sub_parsers(child, (*path, name))


def test_help_lists_groups_in_order_and_every_command_once():
    parser = build_parser()
    text = parser.format_help()
    groups = command_map(text)
    assert list(groups) == list(MAP)
    assert {g: [name for name, _ in entries] for g, entries in groups.items()} == MAP
    assert all(summary for entries in groups.values() for _, summary in entries)
    commands = [name for entries in groups.values() for name, _ in entries]
    top = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for choice, child in top.choices.items():  # every top-level command, once; a group of commands by its members
        inner = [a for a in child._actions if isinstance(a, argparse._SubParsersAction)]
        listed = [c for c in commands if c.split()[0] == choice]
        if listed == [choice]:
            continue
        assert inner and listed == [f"{choice} {c}" for c in inner[0].choices], (choice, listed)
    assert max(map(len, text.splitlines())) <= 100
    summary = " ".join(text.split("commands, in the order")[0].split("\n\n", 1)[1].split())  # under the usage
    assert all(word in summary for word in ("GRAM", "CHC", "meta-training")), summary


@pytest.mark.parametrize("path", [" ".join(p) for p, _ in sub_parsers(build_parser())])
def test_every_flag_says_what_it_does_and_its_default(path):
    parser = dict((" ".join(p), sp) for p, sp in sub_parsers(build_parser()))[path]
    assert parser.prog == path  # usage lines read `gram figure fig1a ...`
    if path != "gram":
        assert parser.description, f"`{path} --help` says nothing about what it does"
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help.strip(), f"{path} {action.option_strings[0]} has no help text"
        shown = formatter._get_help_string(action)
        if action.nargs != 0 and not action.required and "required" not in shown:  # a switch's default is off
            assert "default" in shown, f"{path} {action.option_strings[0]} does not show its default"
    assert "(default: None)" not in parser.format_help() and "(default: [])" not in parser.format_help()


def test_no_long_functions_in_the_cli_package():
    longest = []
    for path in sorted(CLI.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                longest.append((node.end_lineno - node.lineno + 1, f"{path.name}:{node.name}"))
    assert longest and max(longest)[0] <= 100, max(longest)


def test_python_m_gramprompt_cli():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "gramprompt.cli", "--help"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: gram ") and "commands, in the order of the work" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "gramprompt.cli"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "required: COMMAND" in proc.stderr
