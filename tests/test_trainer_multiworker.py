"""MultiWorkerMirroredStrategy: two local worker processes train the same paths, one board."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import tensorflow as tf
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    from cream_tf import trainer
    from cream_tf.space import Space
    space = Space("mbconv", depth=(1, 2, 1, 1, 1), resolution=32, width=0.25, num_classes=10)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(64, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, 64).astype(np.int32)
    train = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(64, seed=1).repeat()
    val = tf.data.Dataset.from_tensor_slices((x[:8], y[:8]))
    config = trainer.SearchConfig(epochs=1, steps_per_epoch=4, warmup_epochs=1, batch_size=8,
                                  learning_rate=0.1, board_size=3, board_images=2, seed=4,
                                  verbose=0)
    result = trainer.search(space, train, val, sys.argv[1], config, strategy=strategy)
    out = {"entries": result.board.entries(),
           "weights": [float(np.sum(v.numpy())) for v in result.supernet.trainable_variables]}
    with open(sys.argv[2], "w") as f:
        json.dump(out, f)
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_workers_agree(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    ports = [_free_port(), _free_port()]
    workdir = tmp_path / "search"
    procs = []
    for i in range(2):
        env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps({
            "cluster": {"worker": [f"localhost:{p}" for p in ports]},
            "task": {"type": "worker", "index": i}}))
        procs.append(subprocess.Popen(
            [sys.executable, str(script), str(workdir), str(tmp_path / f"out{i}.json")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    try:
        logs = [p.communicate(timeout=1500)[0].decode(errors="replace") for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    outs = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2)]
    assert outs[0] == outs[1]
    assert len(outs[0]["entries"]) == 3
    assert (workdir / "checkpoints" / "checkpoint").exists()
    assert not (workdir / ".tmp_worker" / "1").exists()
