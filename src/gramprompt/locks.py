"""One writer per output folder: a process that would write into a folder another process is writing
is refused at once with a clear error, instead of both interleaving their files.

The lock is an advisory ``flock`` on the folder itself (no lock file to leave behind): the kernel
releases it when its holder ends, however it ends, so a killed run never leaves a stale lock and
the same command resumes it. Platforms without ``fcntl`` (Windows) run unlocked.
"""
from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from .errors import GramError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

F = TypeVar("F", bound=Callable)
_HELD: dict[str, tuple[int, int]] = {}  # folder -> (fd, depth): a process may re-enter its own lock


class FolderBusy(GramError):
    """Another process is writing to the folder."""


def acquire(folder: str | os.PathLike, what: str) -> None:
    """Lock ``folder`` (created if missing) for this process until :func:`release` or exit."""
    path = Path(folder).resolve()
    if path.exists() and not path.is_dir():
        raise GramError(f"{path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GramError(f"cannot write the folder {path}: {err.strerror or err}") from None
    key = str(path)
    if key in _HELD:
        fd, depth = _HELD[key]
        _HELD[key] = (fd, depth + 1)
        return
    fd = os.open(path, os.O_RDONLY)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderBusy(f"another process is writing to {path} ({what}); wait for it to finish, or use "
                             "another output folder") from None
    _HELD[key] = (fd, 1)


def release(folder: str | os.PathLike) -> None:
    key = str(Path(folder).resolve())
    fd, depth = _HELD[key]
    if depth > 1:
        _HELD[key] = (fd, depth - 1)
        return
    del _HELD[key]
    os.close(fd)  # closing the descriptor releases the flock


@contextmanager
def locked(folder: str | os.PathLike, what: str) -> Iterator[None]:
    acquire(folder, what)
    try:
        yield
    finally:
        release(folder)


def writes(argument: str, what: str) -> Callable[[F], F]:
    """Decorate a function that writes into the folder named by its parameter ``argument`` (a dotted
    path such as ``exp.root`` reads an attribute of it): it runs holding that folder's lock."""
    name, *attrs = argument.split(".")

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            folder = sig.bind(*args, **kwargs).arguments[name]
            for attr in attrs:
                folder = getattr(folder, attr)
            with locked(folder, what):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
