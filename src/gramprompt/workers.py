"""Worker processes that die with their parent.

A pool worker of a killed parent (``kill -9`` gives the parent no chance to clean up) would go on
running its queued jobs and then idle forever. Every pool of the project starts its workers with
:func:`die_with_parent` as (part of) the initializer: a daemon thread polls the parent pid, and on
Linux the kernel also sends the worker SIGKILL when the parent dies (``PR_SET_PDEATHSIG``), which
works even while a job holds the GIL. The kernel signal fires when the parent *thread* that started
the worker exits, not the process, so it is armed only for workers started from the main thread (a
pool first used from a short-lived thread would otherwise lose its workers with that thread).
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

PR_SET_PDEATHSIG = 1
POLL_SECONDS = 0.5


def _watch(parent: int) -> None:
    while True:
        time.sleep(POLL_SECONDS)
        if os.getppid() != parent:  # reparented: the parent is gone
            os._exit(1)


def die_with_parent(parent: int | None = None, kernel_signal: bool = True) -> None:
    """Make this (worker) process exit as soon as ``parent`` (default: the current parent) dies;
    ``kernel_signal`` only if the parent thread that started this process lives as long as the parent."""
    parent = os.getppid() if parent is None else parent
    if kernel_signal and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # not fatal: the watchdog below covers it
            pass
    if os.getppid() != parent:  # died before we got here
        os._exit(1)
    threading.Thread(target=_watch, args=(parent,), name="die-with-parent", daemon=True).start()


class _StartedFromMainThread:
    """Unpickles to whether the thread that pickled it is the main thread. Spawn pickles a worker's
    initializer arguments in the thread that starts the worker, whichever thread that is."""

    def __reduce__(self) -> tuple[Callable, tuple[bool]]:
        return bool, (threading.current_thread() is threading.main_thread(),)


def _init(parent: int, from_main_thread: bool, initializer: Callable | None, initargs: tuple) -> None:
    die_with_parent(parent, kernel_signal=from_main_thread)
    if initializer is not None:
        initializer(*initargs)


def process_pool(workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """A spawn-context pool (safe with torch and numba threads) whose workers die with this process."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_init,
                               initargs=(os.getpid(), _StartedFromMainThread(), initializer, initargs))
