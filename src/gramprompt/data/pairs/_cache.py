"""Helpers shared by the offline pair sources: atomic JSON cache files and text normalisation."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _write_json(path: Path, payload: Any) -> None:
    """Write atomically so a concurrent or interrupted run never leaves half a cache file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, ensure_ascii=False)
    os.replace(tmp, path)


def _read_json(path: Path) -> Any | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def normalize_text(text: str | None) -> str:
    """Collapse all whitespace (metadata often has newlines and tabs) to single spaces."""
    return " ".join((text or "").split())
