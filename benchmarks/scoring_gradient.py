"""What differentiating the board scoring adds to the student's gradient (`scoring_gradient`).

    python benchmarks/scoring_gradient.py                    # small.flags' search, 200 steps in
    python benchmarks/scoring_gradient.py --distill_steps=500

In the release, rho keeps its gradient and depends on the student's weights through the board
scoring, so the training loss's gradient holds a term A * drho/dw besides the distillation's.
`SearchConfig(scoring_gradient=False)` drops that term (M still learns through rho): this runs
the flags file's search to `--distill_steps` steps past the warm-up (default small.flags) and
then compares, on `--batches` training batches, the student's gradient with and without it
(eager supernet calls). The last line is
`scoring_gradient: relative=<median ||g - g_no|| / ||g||> cosine=<median cos(g, g_no)>`.
"""
import dataclasses
import os
import sys
import tempfile

import numpy as np
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.matching_activity import run, search_setup  # noqa: E402

flags.DEFINE_integer("distill_steps", 200, "search steps after the warm-up before measuring")
flags.DEFINE_integer("batches", 20, "training batches compared")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import tensorflow as tf

    from cream_tf import matching as matching_lib
    from cream_tf import search as search_lib

    job, space, config, train_ds, val_ds = search_setup()
    steps = config.warmup_steps + FLAGS.distill_steps
    config = dataclasses.replace(config, epochs=-(-steps // config.steps_per_epoch), verbose=0)
    with tempfile.TemporaryDirectory() as workdir:
        result = search_lib.search(space, train_ds, val_ds, workdir, config, job.strategy)
    net, board, matching = result.supernet, result.board, result.matching
    k, n = board.images.shape[:2]
    rows = []
    for b, (x, y) in enumerate(train_ds.batch(config.batch_size).take(FLAGS.batches)):
        path = tf.constant(result.sampler.sample(10_000 + b), tf.int32)
        grads = []
        for constant in (False, True):
            with tf.GradientTape() as tape:
                images = tf.reshape(board.images, [k * n, *board.images.shape[2:]])
                probs = tf.reshape(tf.nn.softmax(net(images, path=path, training=True)),
                                   [k, n, -1])
                if constant:
                    probs = tf.stop_gradient(probs)
                index, rho, _ = matching_lib.select_teacher("meta", probs, board.probs,
                                                            board.size, matching)
                teacher = net(x, path=tf.gather(board.paths, index), training=True)
                loss = matching_lib.cream_loss(y, net(x, path=path, training=True), teacher,
                                               rho, config.label_smoothing, config.batch_size)
            g = tape.gradient(loss, net.trainable_variables)
            grads.append(np.concatenate([tf.reshape(v, [-1]).numpy() for v in g if v is not None]))
        full, constant = grads
        rows.append((np.linalg.norm(full - constant) / np.linalg.norm(full),
                     float(full @ constant / np.linalg.norm(full) / np.linalg.norm(constant))))
    rows = np.array(rows)
    print(f"search: {space}, {steps} steps ({FLAGS.distill_steps} past the warm-up), "
          f"{len(rows)} batches compared")
    print("| | median | max |")
    print("|---|---|---|")
    print(f"| ||g - g_constant_scoring|| / ||g|| | {np.median(rows[:, 0]):.2e} | "
          f"{rows[:, 0].max():.2e} |")
    print(f"| cos(g, g_constant_scoring) | {np.median(rows[:, 1]):.6f} | {rows[:, 1].min():.6f} (min) |")
    print(f"scoring_gradient: relative={np.median(rows[:, 0]):.4g} "
          f"cosine={np.median(rows[:, 1]):.6f}")


if __name__ == "__main__":
    run(main)
