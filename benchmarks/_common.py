"""Helpers shared by the benchmark scripts (run them as ``python benchmarks/<script>.py``).

Nothing here asserts on time: the scripts print Markdown tables with a reference measured in the
same run, so the ratios are comparable across machines even when the absolute times are not.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

# Caltech101 as CoOp uses it (split_zhou_Caltech101.json): the 100 object classes in CoOp's label
# order ("BACKGROUND_Google" and "Faces" dropped; "Faces_easy", "Leopards", "Motorbikes" and
# "airplanes" renamed), underscores turned into spaces as gramprompt.data.coop does.
CALTECH101_CLASSNAMES: list[str] = [
    "face", "leopard", "motorbike", "accordion", "airplane", "anchor", "ant", "barrel", "bass",
    "beaver", "binocular", "bonsai", "brain", "brontosaurus", "buddha", "butterfly", "camera",
    "cannon", "car side", "ceiling fan", "cellphone", "chair", "chandelier", "cougar body",
    "cougar face", "crab", "crayfish", "crocodile", "crocodile head", "cup", "dalmatian",
    "dollar bill", "dolphin", "dragonfly", "electric guitar", "elephant", "emu", "euphonium", "ewer",
    "ferry", "flamingo", "flamingo head", "garfield", "gerenuk", "gramophone", "grand piano",
    "hawksbill", "headphone", "hedgehog", "helicopter", "ibis", "inline skate", "joshua tree",
    "kangaroo", "ketch", "lamp", "laptop", "llama", "lobster", "lotus", "mandolin", "mayfly",
    "menorah", "metronome", "minaret", "nautilus", "octopus", "okapi", "pagoda", "panda", "pigeon",
    "pizza", "platypus", "pyramid", "revolver", "rhino", "rooster", "saxophone", "schooner",
    "scissors", "scorpion", "sea horse", "snoopy", "soccer ball", "stapler", "starfish",
    "stegosaurus", "stop sign", "strawberry", "sunflower", "tick", "trilobite", "umbrella", "watch",
    "water lilly", "wheelchair", "wild cat", "windsor chair", "wrench", "yin yang",
]
assert len(CALTECH101_CLASSNAMES) == 100 and len(set(CALTECH101_CLASSNAMES)) == 100


def machine_info() -> str:
    """One line: CPU, core count, Python / torch / transformers versions, torch intra-op threads."""
    import transformers

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (f"machine: {cpu} ({platform.machine()}), {os.cpu_count()} logical CPUs, {platform.system()} | "
            f"Python {platform.python_version()} | torch {torch.__version__} | transformers {transformers.__version__} | "
            f"torch threads: {torch.get_num_threads()}{load_average()}")


def load_average() -> str:
    """`` | load average (1 min): x`` where the OS reports it: other processes share the cores."""
    try:
        return f" | load average (1 min): {os.getloadavg()[0]:.2f}"
    except (AttributeError, OSError):
        return ""


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fast smoke version (seconds): small preset, fewer repeats")
    parser.add_argument("--checkpoint", metavar="DIR",
                        help="reuse the random CLIP in DIR (built there first if DIR has no config.json); "
                             "default: build one in a temporary directory")
    parser.add_argument("--preset", help="random CLIP preset to build (default vit-b-16; small with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and of the data")
    parser.add_argument("--repeats", type=int, help="timed repeats per measurement (median reported)")
    parser.add_argument("--warmup", type=int, help="untimed warm-up runs per measurement")


@contextlib.contextmanager
def random_checkpoint(checkpoint: str | None, preset: str, seed: int) -> Iterator[tuple[Path, str]]:
    """Yield (directory, description) of a random-weight CLIP in HF format."""
    from gramprompt.backbones.random_clip import build_random_clip

    if checkpoint:
        path = Path(checkpoint).expanduser()
        if (path / "config.json").is_file():
            yield path, f"reused {path}"
        else:
            build_random_clip(path, preset, seed)
            yield path, f"built {preset} (seed {seed}) in {path}"
        return
    with tempfile.TemporaryDirectory(prefix="gramprompt-bench-") as tmp:
        path = build_random_clip(Path(tmp) / preset, preset, seed)
        yield path, f"built {preset} (seed {seed}) in a temporary directory"


def describe_checkpoint(path: Path) -> str:
    """The preset recorded by build_random_clip, if any."""
    import json

    meta = path / "gramprompt_random.json"
    if meta.is_file():
        info = json.loads(meta.read_text())
        return f"random-weight CLIP preset {info.get('preset')!r} (seed {info.get('seed')})"
    return "CLIP checkpoint"


def synchronize() -> None:
    """Wait for queued GPU work, so that a wall-clock time covers it (kernels run asynchronously); a no-op
    when CUDA was never used."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_it(fn: Callable[[], object], *, repeats: int, warmup: int) -> tuple[float, list[float]]:
    """Median wall time (seconds, ``time.perf_counter``) of ``fn()`` over ``repeats`` runs after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize()
        t0 = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def matmul_rate(n: int, repeats: int, warmup: int = 2, device: torch.device | str = "cpu") -> float:
    """FLOP/s of an fp32 (n x n) @ (n x n) matmul on ``device``, median over ``repeats``: the rate a step's FLOPs
    are compared with."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(device) for _ in range(2))
    med, _ = time_it(lambda: torch.mm(a, b), repeats=repeats, warmup=warmup)
    return 2.0 * n ** 3 / med


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms" if seconds < 10 else f"{seconds:,.2f} s"


def fmt_s(seconds: float) -> str:
    return f"{seconds:,.3f} s" if seconds < 10 else f"{seconds:,.1f} s"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def time_interleaved(fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int) -> dict[str, float]:
    """Median wall time of each ``fn`` after ``warmup`` runs of each; the repeats run round-robin
    (a, b, a, b, ...) so slow drift of the machine affects every variant alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronize()
            t0 = time.perf_counter()
            fn()
            synchronize()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}
