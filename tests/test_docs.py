"""Documentation that cannot go stale.

Every ``gram ...`` command line in README.md and docs/*.md (shell code blocks and inline code) is checked
against the real parser (``gramprompt.cli.build_parser``): the command and sub-command exist, every flag
exists for that command, choices are valid, packaged config names resolve (and a block's ``--set`` keys
load), and the repository files a command or a link names exist; a command in a code block must parse
completely. ``python benchmarks/...`` lines name a script that exists and that defines each flag given;
``make X`` names a Makefile target. The README's own-data quick start runs end to end on a random tiny CLIP
and fabricated folders, and the README's Python snippet runs with the same substitutions.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gramprompt.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"", "bash", "sh", "shell", "console", "zsh"}
# what the environment variables the docs use stand for while checking (a variable nobody sets: "1",
# which every argument type accepts)
ENV = {"GRAM_DATA": "/data", "GRAM_RUNS": "runs", "GRAM_CC3M": "/data/cc3m", "GRAM_HIERARCHY": "/data/chc-cc3m",
       "GRAM_CLIP": "openai/clip-vit-base-patch16", "GRAM_WEBVISION": "/data/webvision/train"}
REPO_PATH = re.compile(r"^(benchmarks|docs|tests|src|configs)/[^\s]*$")
OPTION = re.compile(r"^--?[A-Za-z][\w-]*(=.*)?$")
FENCE = re.compile(r"^(\s*)(```|~~~)\s*([\w+-]*)")


@dataclass(frozen=True)
class Command:
    where: str  # file:line
    words: tuple[str, ...]  # after `gram` (or after `python`, `make`, `bash`: see `kind`)
    kind: str  # gram | python | make | bash
    in_block: bool  # from a code block (complete commands) or inline code (may be a fragment)

    def __str__(self) -> str:
        return f"{self.where}: {self.kind} {' '.join(self.words)}"


@dataclass(frozen=True)
class Doc:
    path: Path
    blocks: list  # (lang, first line number, lines)
    paragraphs: list  # (first line number, text joined with spaces), outside code blocks


def read_doc(path: Path) -> Doc:
    blocks, paragraphs = [], []
    lines = path.read_text(encoding="utf-8").splitlines()
    i, para, para_start = 0, [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m:
            if para:
                paragraphs.append((para_start, " ".join(para)))
                para = []
            indent, fence, lang = m.groups()
            body, j = [], i + 1
            while j < len(lines) and not lines[j].strip().startswith(fence):
                body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
                j += 1
            blocks.append((lang.lower(), i + 2, body))
            i = j + 1
            continue
        if lines[i].strip():
            if not para:
                para_start = i + 1
            para.append(lines[i].strip())
        elif para:
            paragraphs.append((para_start, " ".join(para)))
            para = []
        i += 1
    if para:
        paragraphs.append((para_start, " ".join(para)))
    return Doc(path, blocks, paragraphs)


def _strip_comment(line: str) -> str:
    """The line without a shell comment (a # that starts a word, outside quotes)."""
    quote = None
    for k, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1].isspace()):
            return line[:k]
    return line


def _expand(text: str, env: dict[str, str]) -> str:
    text = re.sub(r"\$\([^)]*\)", "/tmp/x", text)  # $(mktemp -d)

    def value(m: re.Match) -> str:
        name, default = m.group(1) or m.group(3), m.group(2)
        if name in env:
            return env[name]
        return default if default is not None else ENV.get(name, "1")

    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)", value, text)


def _split(text: str, punctuation: bool) -> list[str]:
    lex = shlex.shlex(text, posix=True, punctuation_chars=";&|" if punctuation else False)
    lex.whitespace_split, lex.commenters = True, ""
    return list(lex)


def _commands_of(words: list[str], where: str, in_block: bool, env: dict[str, str]) -> list[Command]:
    """Shell words of one line -> the commands we check; assignment-only commands update ``env``."""
    out, parts, cur = [], [], []
    for w in words:
        if w in {";", "&&", "||", "|", "&"}:
            parts.append(cur)
            cur = []
        else:
            cur.append(w)
    parts.append(cur)
    for part in parts:
        if part[:1] == ["export"]:
            part = part[1:]
        assigned = {}
        while part and re.match(r"^[A-Za-z_]\w*=", part[0]):
            name, _, val = part[0].partition("=")
            assigned[name] = val
            part = part[1:]
        if not part:
            env.update(assigned)
            continue
        if part[0] == "gram":
            out.append(Command(where, tuple(part[1:]), "gram", in_block))
        elif part[:3] == ["python", "-m", "gramprompt.cli"]:
            out.append(Command(where, tuple(part[3:]), "gram", in_block))
        elif part[0] == "python" and len(part) > 1 and part[1].endswith(".py"):
            out.append(Command(where, tuple(part[1:]), "python", in_block))
        elif part[0] in ("make", "bash") and len(part) > 1:
            out.append(Command(where, tuple(part[1:]), part[0], in_block))
    return out


def block_commands(doc: Doc) -> list[Command]:
    env: dict[str, str] = {}
    out = []
    for lang, start, body in doc.blocks:
        if lang not in SHELL_LANGS:
            continue
        logical, buf, first, heredoc = [], "", None, None
        for k, raw in enumerate(body):
            if heredoc is not None:
                heredoc = None if raw.strip() == heredoc else heredoc
                continue
            line = _strip_comment(raw).rstrip()
            if m := re.search(r"<<-?\s*'?\"?(\w+)", line):
                heredoc = m.group(1)
            first = start + k if not buf else first
            if line.endswith("\\"):
                buf += line[:-1] + " "
                continue
            logical.append((first, buf + line))
            buf = ""
        for lineno, text in logical:
            where = f"{doc.path.relative_to(ROOT)}:{lineno}"
            try:
                words = _split(_expand(text, env), True)
            except ValueError as err:  # not shell (output, a tree): a problem only where it names a command
                if re.search(r"(^|[;&|(]\s*)(gram|python|make|bash) ", text):
                    out.append(Command(where, (text, str(err)), "broken", True))
                continue
            out += _commands_of(words, where, True, env)
    return out


def inline_commands(doc: Doc) -> list[Command]:
    out = []
    for lineno, text in doc.paragraphs:
        for span in re.findall(r"`([^`]+)`", text):
            span = span.strip()
            if span.startswith(("gram ", "python -m gramprompt.cli ", "python benchmarks/", "make ")):
                try:
                    words = _split(_expand(span, {}), False)
                except ValueError:
                    continue
                out += _commands_of(words, f"{doc.path.relative_to(ROOT)}:{lineno}", False, {})
    return out


def inline_paths(doc: Doc) -> list[tuple[str, str]]:
    """Repository paths named in inline code (from the root) and relative link targets (from the file)."""
    out = []
    for lineno, text in doc.paragraphs:
        where = f"{doc.path.relative_to(ROOT)}:{lineno}"
        out += [(where, ROOT, s) for s in re.findall(r"`([^`\s]+)`", text) if REPO_PATH.match(s) and not _placeholder(s)]
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if not re.match(r"^[a-z]+:", target):
                out.append((where, doc.path.parent, target))
    return out


ALL_DOCS = [read_doc(p) for p in DOC_FILES]
ALL_COMMANDS = [c for d in ALL_DOCS for c in (*block_commands(d), *inline_commands(d))]
GRAM_COMMANDS = [c for c in ALL_COMMANDS if c.kind == "gram"]


# ---------------------------------------------------------------------------------------------- the checks

def _placeholder(word: str) -> bool:
    """CONFIG, RUN_OR_FILE, KEY=VALUE, <path>, ...: a name for something the reader fills in."""
    return ("..." in word or "<" in word or "$" in word
            or bool(re.fullmatch(r"[A-Z][A-Z0-9_]*(=[A-Z][A-Z0-9_]*)?(\[?:[A-Z_]+\]?)?", word)))


def _subparsers(p: argparse.ArgumentParser):
    return next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)


def _check_choice(action: argparse.Action, value: str, inline: bool) -> str | None:
    if action.choices is None or _placeholder(value):
        return None
    for alt in value.split("|") if inline else [value]:
        try:
            typed = action.type(alt) if callable(action.type) else alt
        except (TypeError, ValueError):
            return f"{alt!r} is not a valid value of {'/'.join(action.option_strings) or action.dest}"
        if typed not in action.choices:
            return (f"{alt!r} is not a choice of {'/'.join(action.option_strings) or action.dest} "
                    f"({', '.join(map(str, action.choices))})")
    return None


def _check_config(ref: str) -> str | None:
    from gramprompt.experiments.config import packaged_configs

    if _placeholder(ref):
        return None
    if "*" in ref:
        base = ref.removesuffix(".yaml")
        hits = [*ROOT.glob(ref), *packaged_configs().glob(f"{base}.yaml")]
        return None if hits else f"no config matches {ref}"
    if (ROOT / ref).is_file() or (packaged_configs() / ref).is_file() or (packaged_configs() / f"{ref}.yaml").is_file():
        return None
    return f"no config {ref!r} (neither a repository file nor a packaged config)"


def check_gram(cmd: Command) -> list[str]:
    """Problems of one documented `gram` command against the real parser."""
    words, problems = list(cmd.words), []
    if not words:
        return problems
    parser, chain = build_parser(), []
    p = parser
    while (sub := _subparsers(p)) is not None:
        if not words or OPTION.match(words[0]) or _placeholder(words[0]):
            if cmd.in_block and not (words and _placeholder(words[0])):
                problems.append(f"`gram {' '.join(chain)}` needs a command ({', '.join(sub.choices)})")
            return problems
        name = words.pop(0)
        names = name.split("|") if not cmd.in_block else [name]
        missing = [n for n in names if n not in sub.choices]
        if missing:
            return [f"no command `gram {' '.join([*chain, *missing[:1]])}` (there are: {', '.join(sub.choices)})"]
        if len(names) > 1:  # `gram experiment run|plan|table`: alternatives of the last level only
            return problems
        p = sub.choices[name]
        chain.append(name)
    options = p._option_string_actions
    positionals_actions = [a for a in p._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]
    positionals, sets = [], []
    k = 0
    while k < len(words):
        w = words[k]
        if w == "...":
            break
        if OPTION.match(w) and not re.fullmatch(r"-\d.*", w):
            flag, eq, val = w.partition("=")
            k += 1
            action = options.get(flag)
            if action is None:
                problems.append(f"`gram {' '.join(chain)}` has no option {flag}")
                continue
            values = [val] if eq else []
            if not eq and action.nargs != 0:
                want = {None: 1, "?": 1, "+": None, "*": None}.get(action.nargs, action.nargs)
                while k < len(words) and (want is None or len(values) < want):
                    if words[k] == "..." or (OPTION.match(words[k]) and not re.fullmatch(r"-\d.*", words[k])):
                        break
                    values.append(words[k])
                    k += 1
            problems += [e for v in values if (e := _check_choice(action, v, not cmd.in_block))]
            if flag == "--set":
                sets += values
            continue
        positionals.append(w)
        k += 1
    for action, value in zip(positionals_actions, positionals):
        if action.nargs in (None, "?") and (e := _check_choice(action, value, not cmd.in_block)):
            problems.append(e)
    configs = []
    if chain == ["experiment"]:
        configs = positionals[1:]
    elif chain == ["figure", "scale"]:
        configs = positionals
    problems += [e for c in configs if (e := _check_config(c))]
    problems += [f"no file {w} in the repository" for w in words
                 if REPO_PATH.match(w) and not _placeholder(w) and not any(ROOT.glob(w))]
    if cmd.in_block and not problems:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                parser.parse_args(list(cmd.words))
            except SystemExit as stop:
                if stop.code:
                    problems.append(err.getvalue().strip().splitlines()[-1])
    if cmd.in_block and not problems and configs and not any(map(_placeholder, [*configs, *sets])):
        from gramprompt.experiments.config import load_experiment

        for ref in configs:
            for path in sorted(ROOT.glob(ref)) if "*" in ref else [ref]:
                try:
                    load_experiment(str(path), sets)
                except Exception as err:  # noqa: BLE001 - reported with the command
                    problems.append(f"{ref} with {sets}: {err}")
    return problems


def check_other(cmd: Command) -> list[str]:
    if cmd.kind == "broken":
        return [f"not a shell command line: {cmd.words[1]}"]
    if cmd.kind == "make":
        targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
        return [f"no make target {t!r}" for t in cmd.words if not OPTION.match(t) and "=" not in t
                and t not in targets]
    script = ROOT / cmd.words[0]
    if not script.is_file():
        return [f"no file {cmd.words[0]}"]
    if cmd.kind == "python":
        text = script.read_text()
        return [f"{cmd.words[0]} defines no option {w.partition('=')[0]}" for w in cmd.words[1:]
                if OPTION.match(w) and f'"{w.partition("=")[0]}"' not in text]
    return []


def test_the_docs_hold_gram_commands_in_blocks_and_inline():
    # the extraction itself: if this finds nothing, every check below passes vacuously
    assert sum(c.in_block for c in GRAM_COMMANDS) >= 40 and sum(not c.in_block for c in GRAM_COMMANDS) >= 20
    assert {c.where.split(":")[0] for c in GRAM_COMMANDS} >= {"README.md", "docs/REPRODUCE.md", "docs/RESULTS.md"}


@pytest.fixture
def config_env(monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


def test_every_documented_gram_command_fits_the_parser(config_env):
    problems = [f"{c}\n    -> {p}" for c in GRAM_COMMANDS for p in check_gram(c)]
    assert not problems, "documented commands that the parser rejects:\n" + "\n".join(problems)


def test_documented_scripts_and_make_targets_exist():
    others = [c for c in ALL_COMMANDS if c.kind != "gram"]
    assert any(c.kind == "make" for c in others) and any(c.kind == "python" for c in others)
    problems = [f"{c}\n    -> {p}" for c in others for p in check_other(c)]
    assert not problems, "\n".join(problems)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.S | re.M)
    return {_slug(h) for h in re.findall(r"^#+\s+(.*)$", text, re.M)}


def test_named_files_and_links_exist():
    problems = []
    for doc in ALL_DOCS:
        for where, base, target in inline_paths(doc):
            path_part, _, anchor = target.partition("#")
            path = (base / path_part) if path_part else doc.path
            if "*" in path_part:
                if not any(base.glob(path_part)):
                    problems.append(f"{where}: nothing matches {target}")
            elif not path.exists():
                problems.append(f"{where}: no file {target}")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                problems.append(f"{where}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert not problems, "\n".join(problems)


def test_gram_variables_in_code_blocks_are_set_before_use():
    """A `$GRAM_*` in a code block is exported earlier in the same page or has a default (`${GRAM_RUNS:-runs}`):
    otherwise a reader who copies the block gets "/vit_b16-smoke"."""
    problems = []
    for doc in ALL_DOCS:
        env: set[str] = set()
        for lang, start, body in doc.blocks:
            if lang not in SHELL_LANGS:
                continue
            for k, line in enumerate(body):
                line = _strip_comment(line)
                used = {a or b for a, default, b in re.findall(r"\$\{(\w+)(:-[^}]*)?\}|\$(\w+)", line)
                        if not default and (a or b).startswith("GRAM_")}
                problems += [f"{doc.path.relative_to(ROOT)}:{start + k}: ${v} before the page sets it"
                             for v in sorted(used - env)]
                env |= set(re.findall(r"\b(GRAM_\w+)=", line))
    assert not problems, "\n".join(problems)


def test_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    head = "\n".join(text.splitlines()[:60])
    assert "make demo" in head and "make test" in head and "[95%]" in head  # what it is, does it work, how to start
    for doc in ("README.md", "docs/RESULTS.md", "docs/DESIGN.md", "docs/REPRODUCE.md"):
        body = (ROOT / doc).read_text(encoding="utf-8")
        assert not re.search(r"\bissues? \d+|/tmp/", body), f"{doc} names an issue number or a /tmp path"


# ------------------------------------------------------------- the README's quick start, end to end, on tiny data

def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def _fenced(section: str, lang: str) -> str:
    m = re.search(rf"```{lang}\n(.*?)```", section, re.S)
    assert m, f"no {lang} block"
    return m.group(1)


def _fabricate(root: Path) -> dict[str, Path]:
    """Four classes of 25 small images (70/30 split: 17 train images a class, enough for 16 shots), and 84
    image-caption pairs of six caption topics, each drawn in two colours (two visual domains)."""
    rng = np.random.default_rng(0)
    classes = root / "classes"
    for c in ("cat", "dog", "red_car", "tree"):
        (classes / c).mkdir(parents=True)
        for i in range(25):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(classes / c / f"{i}.png")
    pairs = root / "pairs"
    pairs.mkdir()
    words = ["sailing boat", "pine forest", "red apple", "city street", "snowy mountain", "cat portrait"]
    rows = []
    for i in range(6 * 14):
        t, d = i % 6, (i // 6) % 2
        colour = np.array([40 + 30 * t, 200 - 25 * t, 60 + 120 * d])
        pixels = np.clip(colour + rng.normal(0, 8, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(pairs / f"{i}.png")
        rows.append({"path": f"{i}.png", "caption": f"{words[t]} photo number {i}"})
    (pairs / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"classes": classes, "pairs": pairs}


# the README's names for the reader's backbone and data -> the fixtures; then flags that shrink each command to tiny
# data (appended: argparse keeps the last value, so the documented flags are parsed too)
SHRINK = {
    "fewshot": ["--epochs", "2", "--batch-size", "4"],
    "chc": ["--umap-neighbors", "8", "--min-cluster-size", "8", "--domains", "2", "--min-domain-size", "3",
            "--no-report"],
    "meta-train": ["--iterations", "3", "--task-batch", "2", "--ways", "3", "--support-shots", "2", "--query-shots", "2"],
}


@pytest.fixture
def own_caches(tmp_path, monkeypatch):
    """Derived data and the CHC signing key in the test's folder, not in the user's cache."""
    monkeypatch.setenv("GRAMPROMPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GRAMPROMPT_SIGNING_KEY", "ab" * 32)


def _substitute(text: str, clip: Path, data: dict[str, Path]) -> str:
    return (text.replace("/models/my-clip", str(clip)).replace("/data/my-classes", str(data["classes"]))
            .replace("/data/my-pairs", str(data["pairs"])))


def test_readme_quick_start_runs_end_to_end(tiny_clip_dir, tmp_path, monkeypatch, capsys, own_caches):
    section = _readme_section("Your own data and your own CLIP")
    data = _fabricate(tmp_path / "data")
    monkeypatch.chdir(tmp_path)  # the commands write relative run folders (runs/mine/...)
    block = read_doc_text(_substitute(_fenced(section, "bash"), tiny_clip_dir, data))
    commands = [c for c in block if c.kind == "gram"]
    assert [c.words[0] for c in commands] == ["zeroshot", "fewshot", "chc", "meta-train", "fewshot", "table"]
    for cmd in commands:
        args = [*cmd.words, *SHRINK.get(cmd.words[0], [])]
        assert main(args) == 0, f"README command failed: gram {' '.join(cmd.words)}"
    out = capsys.readouterr().out
    assert "| coop |" in out and "| coop+gram |" in out  # gram table shows both rows
    gram_run = json.loads((tmp_path / "runs/mine/coop+gram/seed1/summary.json").read_text())
    assert gram_run["label"] == "coop+gram" and gram_run["init"].endswith("gram.safetensors")


def read_doc_text(text: str) -> list[Command]:
    """The commands of a shell snippet (as `block_commands` reads a page's blocks)."""
    path = ROOT / "README.md"
    return block_commands(Doc(path, [("bash", 1, text.splitlines())], []))


def test_readme_python_snippet_runs(tiny_clip_dir, tmp_path, monkeypatch, own_caches):
    snippet = _fenced(_readme_section("Your own data and your own CLIP"), "python")
    data = _fabricate(tmp_path / "data")
    code = _substitute(snippet, tiny_clip_dir, data)
    # tiny data: the documented run, shortened (the FewShotConfig call and its 16 shots stay as written)
    code = code.replace('FewShotConfig(method="coop", shots=16, seed=1)',
                        'FewShotConfig(method="coop", shots=16, seed=1, tune=TuneConfig(epochs=1, batch_size=4))')
    assert "TuneConfig(epochs=1" in code, "the README's FewShotConfig call changed: update this test"
    from gramprompt.tuning.config import TuneConfig

    monkeypatch.chdir(tmp_path)
    scope = {"TuneConfig": TuneConfig}
    exec(compile(code, "README.md (python snippet)", "exec"), scope)  # noqa: S102 - our own README
    assert 0 <= scope["s"]["h"] <= 100
    assert tuple(scope["logits"].shape) == (4, len(scope["data"].classnames))
    # "differentiable in params": the same call with parameters that require gradients
    params = {k: v.clone().requires_grad_() for k, v in scope["params"].items()}
    logits = scope["coop"].logits(params, scope["Batch"](pixels=scope["pixels"]), scope["data"].classnames)
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())
