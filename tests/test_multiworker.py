"""MultiWorkerMirroredStrategy over 2 local processes (TF_CONFIG): the workers end with identical
weights and board, see the same input stream, and only the chief writes to its workdir."""
import json
import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "multiworker_worker.py")


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_agree_and_only_the_chief_writes(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    workdirs = [str(tmp_path / f"work{i}") for i in range(2)]  # a shared one in real use
    debug = [str(tmp_path / f"debug{i}.json") for i in range(2)]

    temp = tmp_path / "tmp"  # where workers keep their throw-away checkpoints
    temp.mkdir()

    def env(i):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": i}}
        return dict(os.environ, TF_CONFIG=json.dumps(tf_config), TF_CPP_MIN_LOG_LEVEL="3",
                    PYTHONPATH=ROOT, TMPDIR=str(temp))

    chief = subprocess.Popen([sys.executable, WORKER, workdirs[0], debug[0]], env=env(0),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        other = subprocess.run([sys.executable, WORKER, workdirs[1], debug[1]], env=env(1),
                               capture_output=True, text=True, timeout=900)
        out, _ = chief.communicate(timeout=300)
    finally:
        if chief.poll() is None:
            chief.kill()
            chief.communicate()
    assert other.returncode == 0, other.stderr[-3000:]
    assert chief.returncode == 0, out[-3000:]
    results = []
    for path in debug:
        with open(path) as f:
            results.append(json.load(f))
    assert results[0]["replicas"] == 2
    assert results[0]["stream"] == results[1]["stream"]  # same seed -> same global batches
    assert results[0]["weights"] == results[1]["weights"]  # trainable + matching network
    assert results[0]["board"] == results[1]["board"]
    assert json.loads(results[0]["board"])  # the board holds paths
    chief_files = set(os.listdir(workdirs[0]))
    assert {"checkpoints", "board.json", "search.json", "logs"} <= chief_files
    assert not os.path.exists(workdirs[1]) or not os.listdir(workdirs[1])
    assert not os.listdir(temp)  # the worker removed its temporary checkpoints
