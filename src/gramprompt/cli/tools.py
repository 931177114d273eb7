"""Tools: gram build-default-backbone (the offline backbone's image head) and make-random-clip (test checkpoints)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import Entry, add_command

TITLE = "tools"


def add_commands(sub: argparse._SubParsersAction) -> list[Entry]:
    from ..backbones.default.model import DEFAULT_VERSION, VERSIONS
    from ..backbones.random_clip import PRESETS

    build = "retrain the offline default backbone's image head"
    p = add_command(sub, "build-default-backbone", build)
    p.add_argument("--version", choices=VERSIONS, default=DEFAULT_VERSION,
                   help="which head to rebuild (v2 distils the shipped v1)")
    p.add_argument("--out", type=Path, default=None,
                   help="weights file to write, a .json card and .log go beside it (default: the shipped file)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train split and the training")
    p.add_argument("--base-epochs", type=int, default=None, help="v1's base stage (default: the shipped build's)")
    p.add_argument("--full-epochs", type=int, default=None,
                   help="v1's full stage, v2's distillation (default: the shipped build's)")
    p.add_argument("--distill-weight", type=float, default=None,
                   help="v2: weight of the distillation term (default: the shipped build's)")
    p.add_argument("--limit", type=int, default=None,
                   help="use only the first N openclipart pairs (default: all of them)")
    p.set_defaults(fn=cmd_build_default_backbone)

    random_clip = "write a random-weight CLIP checkpoint (HF format) for offline tests"
    p = add_command(sub, "make-random-clip", random_clip)
    p.add_argument("--preset", default="tiny", help=f"architecture: {', '.join(PRESETS)}")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    p.set_defaults(fn=cmd_make_random_clip)
    return [("build-default-backbone", build), ("make-random-clip", random_clip)]


def cmd_build_default_backbone(a: argparse.Namespace) -> int:
    from ..backbones.default.build import build, build_config
    from ..backbones.default.model import weights_path
    from ..data.pairs import openclipart_pairs

    given = (("base_epochs", a.base_epochs), ("full_epochs", a.full_epochs), ("distill_weight", a.distill_weight))
    cfg = build_config(a.version, seed=a.seed, limit=a.limit, **{k: v for k, v in given if v is not None})
    out = a.out or weights_path(a.version)
    command = " ".join(["gram", "build-default-backbone", *sys.argv[2:]])
    result = build(openclipart_pairs(), cfg, out=out, command=command)
    print(f"wrote {out} (sha256 {result['sha256']})")
    return 0


def cmd_make_random_clip(a: argparse.Namespace) -> int:
    from ..backbones.random_clip import build_random_clip

    print(build_random_clip(a.out, a.preset, a.seed))
    return 0
