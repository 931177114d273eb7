"""Where per-shard and per-topic work runs: this process, local processes, or a Ray cluster.

An executor only maps a picklable top-level function over picklable items and returns the
results in order; the work itself is the same function everywhere, so the three give the same
result. Scheduler jobs (SLURM arrays) split the shards with ``--shard-index/--num-shards``
instead and each run any executor over their own part.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from tqdm.auto import tqdm

from gramprompt.errors import GramError
from gramprompt.workers import process_pool


class Executor(Protocol):
    name: str

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], desc: str | None = None) -> list[Any]: ...


class SerialExecutor:
    """Everything in this process, in order (tests, debugging, one-core machines)."""

    name = "serial"

    def map(self, fn, items, desc=None):
        items = list(items)
        return [fn(x) for x in tqdm(items, desc=desc, disable=desc is None)]


class ProcessExecutor:
    """A pool of ``workers`` local processes (spawned: safe with torch and numba threads) that die
    with this process, so a ``kill -9`` of ``gram chc`` leaves none running."""

    name = "process"

    def __init__(self, workers: int = 2):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers

    def map(self, fn, items, desc=None):
        items = list(items)
        if self.workers == 1 or len(items) <= 1:
            return SerialExecutor().map(fn, items, desc)
        with process_pool(self.workers) as pool:
            futures = [pool.submit(fn, x) for x in items]
            return [f.result() for f in tqdm(futures, desc=desc, disable=desc is None)]


RAY_CONNECT_TIMEOUT = 15.0  # seconds; Ray itself retries an unreachable head for ever


def check_reachable(address: str | None, timeout: float = RAY_CONNECT_TIMEOUT) -> None:
    """Refuse a Ray address whose head node does not answer (``host:port`` or ``ray://host:port``; ``None``
    and ``auto`` are left to Ray): ``ray.init`` would otherwise wait for it for ever."""
    if address in (None, "", "auto", "local"):
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise GramError(f"Ray address {address!r} is not host:port (or ray://host:port)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise GramError(f"cannot reach the Ray cluster at {address} within {timeout:g} s ({err.strerror or err}); "
                        "is `ray start --head` running there, and is the port open?") from None


class RayExecutor:
    """Ray tasks, on the cluster at ``address`` (None: start or join a local one).

    Install with ``pip install 'gramprompt[ray]'``. ``num_cpus``/``num_gpus`` are per task (give
    feature extraction a GPU per task on a GPU cluster).
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0,
                 init_kwargs: dict[str, Any] | None = None):
        try:
            import ray
        except ImportError as err:
            raise ModuleNotFoundError("the Ray executor needs ray: pip install 'gramprompt[ray]'") from err
        self._ray = ray
        if not ray.is_initialized():
            # workers must share numba's compile cache (umap, hdbscan) or each recompiles for minutes
            env = {k: os.environ[k] for k in ("NUMBA_CACHE_DIR", "GRAMPROMPT_CACHE", "GRAMPROMPT_SIGNING_KEY") if k in os.environ}
            kwargs = {"include_dashboard": False, "log_to_driver": False,
                      "runtime_env": {"env_vars": env}, **(init_kwargs or {})}
            check_reachable(address)
            ray.init(address=address, **kwargs)
        self.options = {"num_cpus": num_cpus, "num_gpus": num_gpus}

    def map(self, fn, items, desc=None):
        remote = self._ray.remote(fn).options(**self.options)
        refs = [remote.remote(x) for x in items]
        return [self._ray.get(r) for r in tqdm(refs, desc=desc, disable=desc is None)]

    def gpus(self) -> float:
        """The GPUs of the cluster, all nodes together."""
        return self._ray.cluster_resources().get("GPU", 0)

    def imap_unordered(self, fn: Callable[[Any], Any], items: Iterable[Any], retries: int = 2,
                       **options: Any) -> Iterator[Any]:
        """``fn(x)`` for every item, as the tasks finish (``options`` override the per-task resources). A task
        whose worker dies (a killed process, a lost node) is rerun, ``retries`` times at most; an error that
        ``fn`` raises is not retried: it propagates, and the unfinished tasks are cancelled."""
        remote = self._ray.remote(fn).options(**{**self.options, **options}, max_retries=retries,
                                              retry_exceptions=False)
        pending = [remote.remote(x) for x in items]
        try:
            while pending:
                done, pending = self._ray.wait(pending, num_returns=1)
                yield self._ray.get(done[0])
        finally:
            for ref in pending:
                self._ray.cancel(ref, force=True)


def make_executor(name: str = "serial", workers: int = 2, address: str | None = None) -> Executor:
    if name == "serial":
        return SerialExecutor()
    if name == "process":
        return ProcessExecutor(workers)
    if name == "ray":
        return RayExecutor(address)
    raise ValueError(f"unknown executor {name!r}: use serial, process or ray")
