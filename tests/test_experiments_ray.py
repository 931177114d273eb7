"""`gram experiment run --executor ray` on a Ray instance started here (CPU tasks): the same run folders and
summaries as the local runner, finished jobs skipped, and a worker killed mid-task whose task is rerun."""
from __future__ import annotations

import subprocess
import sys

import pytest
import ray
import torch

from gramprompt.experiments.config import load_experiment
from gramprompt.experiments.runner import DONE, job_status, plan, run_experiment, summaries
from test_experiments import _tiny

ROWS = [{"label": "zeroshot", "method": "zeroshot"}, {"label": "coop", "method": "coop"},
        {"label": "vpt", "method": "vpt"}, {"label": "coop+gram", "method": "coop", "variant": "sup"}]
# a meta-training on the labelled digits (no CHC), a few iterations: one more kind of Ray task
VARIANTS = {"sup": {"method": "coop", "supervised": "digits"}}
META = {"iterations": 3, "stats_every": 2, "tasks": {"ways": 3, "support_shots": 1, "query_shots": 2}}
# Kills the first process that runs a runner task (Ray names a worker process after its task) and prints its pid.
# A separate process, not a thread of the test: ray.wait in the test's thread may hold the GIL for long stretches.
KILLER = """
import os, signal, sys, time
from pathlib import Path
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::_ray_job"):
                os.kill(int(proc.name), signal.SIGKILL)
                print(proc.name)
                sys.exit(0)
        except OSError:  # gone meanwhile
            pass
    time.sleep(0.02)
sys.exit(1)
"""


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20,
             ignore_reinit_error=True)
    yield
    ray.shutdown()


def _experiment(tmp_path, tiny_clip_dir, **extra):
    return load_experiment(_tiny(tmp_path, tiny_clip_dir, rows=ROWS, variants=VARIANTS, meta=META, **extra))


def _key(s: dict) -> tuple:
    return s["label"], s["seed"]


def test_ray_runs_every_job_as_the_local_runner_does_then_skips_them(cluster, tiny_clip_dir, tmp_path, monkeypatch):
    # a root relative to the runner's directory, which is not the directory the Ray workers started in
    monkeypatch.chdir(tmp_path)
    on_ray = _experiment(tmp_path / "ray", tiny_clip_dir, root="ray-root")
    local = _experiment(tmp_path / "local", tiny_clip_dir)
    run_experiment(on_ray, executor="ray")
    assert len(list((tmp_path / "ray-root").rglob("summary.json"))) == 8
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as Ray's one-CPU workers: the same arithmetic in the same order, so the same bits
    try:
        run_experiment(local)
    finally:
        torch.set_num_threads(threads)
    assert all(job_status(on_ray, j) == DONE for j in plan(on_ray))
    a, b = sorted(summaries(on_ray), key=_key), sorted(summaries(local), key=_key)
    assert [_key(s) for s in a] == [_key(s) for s in b] and len(a) == 8
    for x, y in zip(a, b):  # the same batches (runs tuned together) in both: the same results
        assert (x["base"], x["new"], x["correct"]) == (y["base"], y["new"], y["correct"])
        assert x.get("runs_together") == y.get("runs_together")
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "ray-root").rglob("summary.json")}
    run_experiment(on_ray, executor="ray")  # everything done: nothing is redone
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "ray-root").rglob("summary.json")} == stamps
    with pytest.raises(ValueError, match="unknown executor 'slurm'"):
        run_experiment(on_ray, executor="slurm")


def test_a_worker_killed_mid_task_has_its_task_rerun(cluster, tiny_clip_dir, tmp_path, monkeypatch):
    exp = _experiment(tmp_path, tiny_clip_dir)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # the root is absolute: nothing belongs in the runner's directory
    killer = subprocess.Popen([sys.executable, "-c", KILLER, "300"], stdout=subprocess.PIPE, text=True)
    try:
        run_experiment(exp, executor="ray")
    finally:
        if killer.poll() is None:  # no task seen yet (the assertion below says so)
            killer.kill()
    out, _ = killer.communicate()
    assert killer.returncode == 0 and out.strip().isdigit(), "no Ray task was seen running"
    assert all(job_status(exp, j) == DONE for j in plan(exp))
    assert len(summaries(exp)) == 8
    # a Ray worker kept from the test above (relative root "ray-root") once wrote this experiment's features there
    assert not any((tmp_path / "cwd").iterdir())
