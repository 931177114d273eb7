"""The process executor's workers die with it: a `kill -9` of `gram chc` leaves no worker running."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gramprompt.chc.executor import ProcessExecutor

JOBS = '''
import os
import time
from pathlib import Path


def slow(folder):
    """Say who runs it, then work far longer than the test waits."""
    Path(folder, str(os.getpid())).write_text("")
    time.sleep(300)
'''

PARENT = '''
import sys
import threading
from gramprompt.chc.executor import ProcessExecutor
from slowjobs import slow

work = lambda: ProcessExecutor(2).map(slow, [sys.argv[1]] * 4)
if sys.argv[2] == "thread":  # workers started from another thread: no kernel signal, the watchdog
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
else:
    work()
'''


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie (dead, not yet reaped by its new parent) is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_for(condition, limit: float = 60.0) -> bool:
    """Poll ``condition`` until true or ``limit`` seconds passed (a bound against hangs, not a timing)."""
    end = time.monotonic() + limit
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.parametrize("started_from", ["main", "thread"])
def test_workers_die_when_the_parent_is_killed(tmp_path, started_from):
    (tmp_path / "slowjobs.py").write_text(textwrap.dedent(JOBS))
    pids = tmp_path / "pids"
    pids.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(pids), started_from], env=env)
    workers: list[int] = []
    try:
        assert wait_for(lambda: len(os.listdir(pids)) == 2), "the two workers never started their jobs"
        workers = [int(p) for p in os.listdir(pids)]
        assert all(alive(p) for p in workers) and parent.pid not in workers
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert wait_for(lambda: not any(alive(p) for p in workers), limit=30), \
            f"workers {[p for p in workers if alive(p)]} outlived their killed parent"
    finally:
        parent.kill()
        for pid in workers:  # only if the test failed: do not leave them behind
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_process_executor_maps_in_order():
    assert ProcessExecutor(2).map(abs, [-3, 1, -2]) == [3, 1, 2]


def test_a_pool_outlives_the_thread_that_started_its_workers():
    """Workers started from a short-lived thread must not die with that thread (the kernel's
    parent-death signal follows the starting thread, not the process)."""
    from concurrent.futures import ThreadPoolExecutor

    from gramprompt.workers import process_pool

    with process_pool(1) as pool:
        with ThreadPoolExecutor(1) as thread:
            first = thread.submit(lambda: pool.submit(os.getpid).result()).result()
        assert pool.submit(os.getpid).result() == first


def test_an_unreachable_ray_cluster_is_an_error_not_a_hang(tmp_path, capsys):
    """Reliability probe: `--executor ray --ray-address 127.0.0.1:1` retried for ever."""
    import time

    from gramprompt.chc.executor import check_reachable
    from gramprompt.cli import main
    from gramprompt.errors import GramError

    with pytest.raises(GramError, match="cannot reach the Ray cluster at 127.0.0.1:1"):
        check_reachable("127.0.0.1:1", timeout=2)
    with pytest.raises(GramError, match="not host:port"):
        check_reachable("nowhere")
    check_reachable(None)  # left to Ray: start or join a local instance
    start = time.perf_counter()
    code = main(["chc", "--pairs", "openclipart", "--backbone", "default", "--out", str(tmp_path / "c"),
                 "--executor", "ray", "--ray-address", "127.0.0.1:1"])
    assert code == 2 and "cannot reach the Ray cluster" in capsys.readouterr().err
    assert time.perf_counter() - start < 60
