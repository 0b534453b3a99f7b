"""Test helper: one worker of a 2-process MultiWorkerMirroredStrategy search (TF_CONFIG set by
the caller). Usage: python tests/multiworker_worker.py WORKDIR DEBUG_JSON

Writes DEBUG_JSON (the only per-worker output): a checksum of the supernet's trainable variables
and the matching network (every local replica copy), one of the BN statistics, the board, and a checksum of the first training batches this process's input pipeline yields."""
import hashlib
import json
import os
import sys

import numpy as np
import tensorflow as tf

strategy = tf.distribute.MultiWorkerMirroredStrategy()  # before any other TensorFlow op

from cream_tf import trainer  # noqa: E402
from cream_tf.space import Space  # noqa: E402


def main():
    workdir, debug = sys.argv[1], sys.argv[2]
    space = Space("mbconv", depth=1, resolution=32, width=0.25, num_classes=10)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (64, 32, 32, 3)).astype(np.float32)
    y = (np.arange(64) % 10).astype(np.int32)
    train = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(64, seed=5).repeat()
    val = tf.data.Dataset.from_tensor_slices((x[:16], y[:16]))
    config = trainer.SearchConfig(epochs=1, steps_per_epoch=4, warmup_epochs=1, batch_size=8,
                                  learning_rate=0.1, board_size=2, board_images=2, meta_slice=2,
                                  checkpoint_interval=2, seed=1, verbose=0)
    stream = hashlib.sha256()
    for images, labels in train.batch(8).take(4):
        stream.update(images.numpy().tobytes() + labels.numpy().tobytes())
    result = trainer.search(space, train, val, workdir, config, strategy)

    def digest(variables):
        h = hashlib.sha256()
        for v in variables:
            for copy in strategy.experimental_local_results(getattr(v, "value", v)):
                h.update(np.ascontiguousarray(copy.numpy()).tobytes())
        return h.hexdigest()

    # BN moving statistics are per replica under Mirrored strategies (Keras 3 makes them mirrored
    # variables with aggregation NONE, so each replica writes its own copy): kept apart, reported
    # but not required to match
    trained = result.supernet.trainable_variables + result.matching.weights
    with open(debug, "w") as f:
        json.dump({"weights": digest(trained),
                   "bn_statistics": digest(result.supernet.non_trainable_variables),
                   "board": result.board.to_json(space),
                   "stream": stream.hexdigest(),
                   "replicas": strategy.num_replicas_in_sync}, f)


if __name__ == "__main__":
    main()
