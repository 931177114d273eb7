"""Dataset loading; ``cache_dir`` is where derived data (parsed captions, rendered emoji) lives."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$GRAMPROMPT_CACHE`` or ``~/.cache/gramprompt``: one place to delete to force a rebuild.

    The directory is not created here; writers create the sub-folders they need.
    """
    env = os.environ.get("GRAMPROMPT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gramprompt"
