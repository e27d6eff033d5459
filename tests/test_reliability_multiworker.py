"""A two-worker run (loopback MultiWorkerMirroredStrategy) killed mid-epoch and resumed ends as the uninterrupted one.

The chief writes one backup generation per epoch (weights, clusters, random
state); on --resume the chief picks the newest and every worker loads that
one, clusters included, so both samplers plan the same batches again. The
workers share the run directory, as they would on shared storage.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tfdnc.rundir import RunDir
from tfdnc.training.faults import ENV

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--dataset", "digits", "--image-size", "16", "--embedding-dim", "16", "--classes-per-batch", "4",
        "--images-per-class", "4", "--kmeans-iters", "10", "--eval-every", "100", "--verbose", "2",
        "--epochs", "2", "--recluster-every", "1", "--steps-per-epoch", "4", "--k-final", "2", "--no-export",
        "--strategy", "multi-worker"]


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _pair(run_dir, log_dir, *extra, kill_chief_at=None):
    """Runs the two workers; returns their (returncode, log) pairs. The second is ended once the chief was killed."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
               "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        env.pop(ENV, None)
        if kill_chief_at and index == 0:
            env[ENV] = kill_chief_at
        log = open(os.path.join(log_dir, f"worker{index}-{time.monotonic_ns()}.log"), "w+")
        argv = [sys.executable, os.path.join(ROOT, "train.py"), *ARGS, "--run-dir", str(run_dir), *extra]
        procs.append((subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log))
    results = []
    try:
        procs[0][0].wait(timeout=400)
        if kill_chief_at:
            # The other worker waits in a collective for a chief that is gone.
            time.sleep(2)
            procs[1][0].kill()
        procs[1][0].wait(timeout=120)
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.seek(0)
            results.append((proc.returncode, log.read()))
            log.close()
    return results


def _history(run_dir):
    return [{k: v for k, v in h.items() if k != "recluster_seconds"} for h in RunDir(run_dir).history()]


def test_two_workers_killed_mid_epoch_resume_to_the_uninterrupted_result(tmp_path):
    reference = _pair(tmp_path / "reference", tmp_path)
    for rc, log in reference:
        assert rc == 0, log[-4000:]

    run_dir = tmp_path / "run"
    killed = _pair(run_dir, tmp_path, kill_chief_at="mid_epoch@2")
    assert killed[0][0] == -signal.SIGKILL, killed[0][1][-4000:]
    resumed = _pair(run_dir, tmp_path, "--resume")
    for rc, log in resumed:
        assert rc == 0, log[-4000:]
    assert "resuming from" in resumed[0][1] and "1 epoch(s) done, K=2" in resumed[0][1]

    ours, theirs = _history(run_dir), _history(tmp_path / "reference")
    assert [h["K"] for h in ours] == [h["K"] for h in theirs] == [1, 2]
    assert [h["cluster_sizes"] for h in ours] == [h["cluster_sizes"] for h in theirs]
    assert [h["loss"] for h in ours] == pytest.approx([h["loss"] for h in theirs], rel=1e-5)
    after = RunDir(run_dir).metrics()["after"]["results"]
    expected = RunDir(tmp_path / "reference").metrics()["after"]["results"]
    for split in expected:
        assert after[split] == pytest.approx(expected[split], rel=1e-5, abs=1e-6)
