"""One writer per output folder (reliability probe: two `gram fewshot` into one --out, two `gram chc` into
one --out and two `gram experiment run` on one root interleaved their files)."""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time

import pytest

from gramprompt import locks
from gramprompt.chc.pipeline import run_chc
from gramprompt.cli import main
from gramprompt.experiments.config import load_experiment
from gramprompt.experiments.runner import run_experiment
from gramprompt.meta.run import meta_train

HOLD = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(600)")


def _holder(folder):
    """Another process holding ``folder``'s lock, as a running gram command would."""
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_and_a_killed_one_leaves_no_stale_lock(tmp_path):
    proc = _holder(tmp_path / "out")
    try:
        with pytest.raises(locks.FolderBusy, match="another process is writing to .*out"):
            locks.acquire(tmp_path / "out", "a test")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with locks.locked(tmp_path / "out", "a test"):  # kill -9 released it
        with locks.locked(tmp_path / "out", "a test"):  # and this process may re-enter its own lock
            pass
    assert not any(tmp_path.joinpath("out").iterdir())  # no lock file left behind


def test_every_writing_command_takes_its_folders_lock(tmp_path, tiny_clip_dir, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    fd = os.open(busy, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another open file description: another writer, as far as flock goes
    try:
        with pytest.raises(locks.FolderBusy, match="gram chc"):
            run_chc("openclipart", f"hf:{tiny_clip_dir}", busy)
        with pytest.raises(locks.FolderBusy, match="meta-training"):
            meta_train(tmp_path / "no-hierarchy", None, "coop", busy)
        exp = load_experiment("offline/demo", [f"root={busy}"])
        with pytest.raises(locks.FolderBusy, match="experiment"):
            run_experiment(exp)
        code = main(["fewshot", "--backbone", f"hf:{tiny_clip_dir}", "--dataset", "digits", "--method", "zeroshot",
                     "--out", str(busy)])
        assert code == 2 and "another process is writing to" in capsys.readouterr().err
        assert list(busy.iterdir()) == []  # nothing written
    finally:
        os.close(fd)
