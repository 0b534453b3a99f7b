"""Search-step throughput of cream_tf.trainer, measured against this machine's own floor.

    python benchmarks/search_step.py                      # configs/small.flags settings
    python benchmarks/search_step.py --board_size=10 --board_images=4   # the release's board
    python benchmarks/search_step.py --resolution=224 --batch_size=8 --depth=4 --width=1.0

Times, in one process, as the median of many steps after warm-up (each step a different path):
  (a) plain: the warm-up step (single path, CE only, no distillation);
  (b) cream: the full Cream step (batched board scoring over K*n stored images, teacher choice,
      teacher forward, Cream loss) plus the host-side board update, as `trainer.search` runs it;
  (c) meta: one meta-gradient update of the matching network (run once per --meta_interval);
  (d) input: `data.search_inputs` alone (batches per second of the training pipeline);
  (e) child (not in the defaults): for --child_paths of the paths, the plain step on that path
      against the same path as a standalone Keras child network (`child.build`) trained with Keras
      SGD: what the supernet machinery costs on top of TensorFlow running that network.
The floor is path MACs x 3 (forward + backward) x batch over the MAC rate this CPU reaches on a
large float32 matrix product, measured in the same run. The step functions are trainer's own
(`benchmarks/harness.py`), on fixed input tensors, so (a)-(c) exclude the input pipeline.
"""
import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import timing  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("space", "mbconv", "search space name")
flags.DEFINE_string("layout", "released", "space layout")
flags.DEFINE_integer("depth", 1, "blocks per stage (configs/small.flags: 1)")
flags.DEFINE_integer("resolution", 32, "input size")
flags.DEFINE_float("width", 0.5, "width multiplier")
flags.DEFINE_integer("num_classes", 10, "classes")
flags.DEFINE_integer("batch_size", 32, "per-replica batch (one device here)")
flags.DEFINE_integer("board_size", 5, "K, board entries (release: 10)")
flags.DEFINE_integer("board_images", 4, "n, stored images per entry (release: 4)")
flags.DEFINE_integer("steps", 30, "timed steps per measurement (median reported)")
flags.DEFINE_integer("warmup", 5, "untimed steps before timing (tracing)")
flags.DEFINE_integer("meta_steps", 5, "timed meta updates")
flags.DEFINE_integer("meta_interval", 200, "steps between meta updates (amortisation)")
flags.DEFINE_enum("mixed_precision", "none", ["none", "mixed_bfloat16", "mixed_float16"],
                  "Keras dtype policy of the supernet")
flags.DEFINE_bool("jit_compile", False, "XLA for the train steps (single device)")
flags.DEFINE_enum("trace_meta", "auto", ["auto", "true", "false"], "trace the meta update (auto: "
                  "SearchConfig's rule, traced for searches of >= 100 meta updates, as this "
                  "benchmark's endless one)")
flags.DEFINE_string("dataset", "digits", "dataset for (d): digits or synthetic")
flags.DEFINE_integer("matmul_size", 2048, "size of the float32 matmul measuring the MAC rate")
flags.DEFINE_list("parts", "floor,plain,cream,meta,input", "what to measure")
flags.DEFINE_integer("child_paths", 6, "paths compared by the 'child' part")
flags.DEFINE_integer("threads", 0, "TensorFlow intra-op threads (0 = TensorFlow's default, one "
                     "per core); torch_release_step.py has the same flag")
flags.DEFINE_integer("accuracy_steps", 0, "after timing, train this many CE steps on the dataset "
                     "(random paths, learning rate --accuracy_lr) and report the held-out "
                     "accuracy of --accuracy_paths inherited paths: the accuracy effect of "
                     "--mixed_precision / --jit_compile (0 = skip)")
flags.DEFINE_float("accuracy_lr", 0.1, "learning rate of the search step (it only matters "
                   "for --accuracy_steps; small.flags: 3.2 per 1024 images = 0.1 at 32)")
flags.DEFINE_integer("accuracy_paths", 5, "paths evaluated after --accuracy_steps")
flags.DEFINE_integer("seed", 0, "initial weights, paths, and the data order of "
                     "--accuracy_steps (another seed shows the run-to-run spread)")


STARTED = time.perf_counter()


def mac_rate(tf, n):
    """MACs per second of an n x n float32 matmul (median of 10 after warm-up)."""
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    mm = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
    t, _ = timing.median_time(lambda i: mm(a, b).numpy(), 10, 3)
    return n ** 3 / t


def main(argv):
    del argv
    import numpy as np
    import tensorflow as tf

    if FLAGS.threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)

    from benchmarks import harness
    from cream_tf import data as data_lib
    from cream_tf import trainer
    from cream_tf.space import Space

    parts = set(FLAGS.parts)
    space = Space(FLAGS.space, FLAGS.layout, FLAGS.depth, FLAGS.resolution, FLAGS.width,
                  FLAGS.num_classes)
    b, k, n = FLAGS.batch_size, FLAGS.board_size, FLAGS.board_images
    extra = {}
    if FLAGS.mixed_precision != "none":
        extra["mixed_precision"] = FLAGS.mixed_precision
    config = trainer.SearchConfig(epochs=1, steps_per_epoch=10 ** 6, warmup_epochs=0,
                                  batch_size=b, board_size=k, board_images=n,
                                  meta_interval=FLAGS.meta_interval,
                                  learning_rate=FLAGS.accuracy_lr,
                                  jit_compile=FLAGS.jit_compile, verbose=0, seed=FLAGS.seed,
                                  trace_meta={"auto": None, "true": True,
                                              "false": False}[FLAGS.trace_meta], **extra)
    strategy = tf.distribute.get_strategy()
    load = os.getloadavg()
    rows = {}
    print(f"space={space.name} depth={FLAGS.depth} resolution={space.resolution} "
          f"width={space.width} batch={b} board={k}x{n} mixed_precision={FLAGS.mixed_precision} "
          f"jit={FLAGS.jit_compile} threads={FLAGS.threads or 'default'} | nproc={os.cpu_count()} "
          f"load={load[0]:.2f}", flush=True)

    rate = mac_rate(tf, FLAGS.matmul_size) if "floor" in parts else None
    bench = harness.StepBench(space, config, strategy, seed=0)
    state, steps = bench.state, bench.steps
    initial = [tf.identity(v) for v in state.supernet.weights]  # for --accuracy_steps
    r = space.resolution
    images, labels = bench.images, bench.labels
    paths = [bench.path(s) for s in range(FLAGS.warmup + FLAGS.steps + 1)]
    mean_macs = float(np.mean([bench.sampler.path_macs(p) for p in paths]))
    plain, cream, meta = bench.plain, bench.cream, bench.meta

    results = {}
    if "plain" in parts:
        results["plain"], _ = timing.median_time(plain, FLAGS.steps, FLAGS.warmup)
        rows["plain"] = timing.peak_rss_mb()
        print(f"  plain: {results['plain'] * 1e3:.1f} ms/step", flush=True)
    if "cream" in parts:
        results["cream"], _ = timing.median_time(cream, FLAGS.steps, FLAGS.warmup)
        rows["cream"] = timing.peak_rss_mb()
        print(f"  cream: {results['cream'] * 1e3:.1f} ms/step", flush=True)
    if "meta" in parts:
        start = time.perf_counter()
        meta(0)
        first = time.perf_counter() - start
        mode = "traced: includes the trace" if config.meta_traced else "eager"
        print(f"  meta: first update {first:.1f} s ({mode})", flush=True)
        results["meta"], _ = timing.median_time(meta, FLAGS.meta_steps, 0)
        rows["meta"] = timing.peak_rss_mb()
        print(f"  meta: {results['meta'] * 1e3:.1f} ms/update", flush=True)
    if "child" in parts:
        child_vs_supernet(state, steps, paths[:FLAGS.child_paths], images, labels, config, tf, np)
    traces = bench.traces()
    if "input" in parts:
        splits, info = data_lib.load(FLAGS.dataset, r)
        # the release's full search recipe, whatever the dataset recommends (digits: none)
        train_ds, _ = data_lib.search_inputs(splits, info, r, augment=data_lib.Augment.search(),
                                             seed=0)
        it = iter(train_ds.batch(b, drop_remainder=True).prefetch(2))
        results["input"], _ = timing.median_time(lambda i: next(it)[0].numpy(), 3 * FLAGS.steps,
                                           FLAGS.warmup)
        rows["input"] = timing.peak_rss_mb()

    floor = mean_macs * 3 * b / rate if rate else None
    print(f"matmul MAC rate: {rate / 1e9:.1f} GMAC/s; mean path MACs {mean_macs / 1e6:.2f}M; "
          f"floor per step {floor * 1e3:.2f} ms" if rate else "floor not measured")
    print(f"traces over {len(paths)} distinct paths: {traces}")
    base = results.get("plain")
    print(f"{'part':8s} {'ms/step':>9s} {'images/s':>9s} {'x plain':>8s} {'floor':>7s} "
          f"{'peak MB':>8s}")
    for name, t in results.items():
        ratio = f"{t / base:8.2f}" if base else f"{'':8s}"
        frac = (f"{floor / t:7.1%}" if floor and name in ("plain", "cream") else f"{'':7s}")
        print(f"{name:8s} {t * 1e3:9.1f} {b / t:9.0f} {ratio} {frac} {rows[name]:8.0f}")
    if "meta" in results and "cream" in results:
        amort = results["meta"] / FLAGS.meta_interval
        share = amort / (results["cream"] + amort)
        print(f"meta ({'traced' if config.meta_traced else 'eager'}) amortised over "
              f"{FLAGS.meta_interval} steps: {amort * 1e3:.2f} ms/step = {share:.1%} of the total")
    if "input" in results and "cream" in results:
        print(f"input pipeline / cream step consumption: {results['cream'] / results['input']:.1f}x")
    if FLAGS.accuracy_steps:
        accuracy = short_run_accuracy(state, steps, bench.sampler, space, b, initial, tf, np)
        print(f"accuracy after {FLAGS.accuracy_steps} steps on {FLAGS.dataset}: mean "
              f"{np.mean(accuracy):.2f}% over {len(accuracy)} inherited paths "
              f"({', '.join(f'{a:.1f}' for a in accuracy)})")
    print(f"load average after: {os.getloadavg()[0]:.2f}; wall time "
          f"{time.perf_counter() - STARTED:.0f} s")


def child_vs_supernet(state, steps, paths, images, labels, config, tf, np):
    """Per path: median plain (supernet) step against the median step of that path's child
    network with Keras SGD (same momentum, Nesterov, label smoothing), both traced."""
    import keras

    from cream_tf import child as child_lib
    from cream_tf.supernet import nested_path

    space = state.space
    rows = []
    for path in paths:
        p = tf.constant(path, tf.int32)
        plain, _ = timing.median_time(lambda i: steps.warmup(images, labels, p)["loss"].numpy(),
                                      10, 2)
        net = child_lib.build(nested_path(path, space), space)
        opt = keras.optimizers.SGD(0.1, momentum=config.momentum, nesterov=config.nesterov)
        loss_fn = keras.losses.CategoricalCrossentropy(from_logits=True,
                                                       label_smoothing=config.label_smoothing)
        targets = tf.one_hot(labels, space.num_classes)

        @tf.function
        def child_step():
            with tf.GradientTape() as tape:
                loss = loss_fn(targets, net(images, training=True))
            opt.apply(tape.gradient(loss, net.trainable_variables), net.trainable_variables)
            return loss

        alone, _ = timing.median_time(lambda i: child_step().numpy(), 10, 2)
        rows.append((plain, alone))
        print(f"  child {[int(o) for o in path]}: supernet plain {plain * 1e3:.1f} ms, child "
              f"{alone * 1e3:.1f} ms ({plain / alone:.2f}x)", flush=True)
    plain, alone = (float(np.mean(c)) for c in zip(*rows))
    print(f"child part: mean over {len(rows)} paths: supernet plain step {plain * 1e3:.1f} ms, "
          f"child network step {alone * 1e3:.1f} ms: the supernet costs {plain / alone:.2f}x")


def short_run_accuracy(state, steps, sampler, space, b, initial, tf, np):
    """Trains the supernet from scratch for --accuracy_steps CE steps on real data with the same
    step function, then scores fixed paths on held-out data (BN statistics re-estimated)."""
    from cream_tf import data as data_lib
    from cream_tf import select as select_lib

    for v, w in zip(state.supernet.weights, initial):
        v.assign(w)
    for m in state.path_optimizer.momentums:
        m.assign(tf.zeros_like(m))
    splits, info = data_lib.load(FLAGS.dataset, space.resolution)
    train_ds, val_ds = data_lib.search_inputs(splits, info, space.resolution, seed=FLAGS.seed)
    total = FLAGS.accuracy_steps
    batches = iter(train_ds.batch(b, drop_remainder=True).prefetch(2))
    for i in range(total):
        x, y = next(batches)
        out = steps.warmup(x, y, tf.constant(sampler.sample(10 ** 7 + i), tf.int32))
        if not np.isfinite(float(out["loss"].numpy())):
            print(f"  non-finite loss at accuracy step {i}")
    bn_train = data_lib.eval_pipeline(splits.train, space.resolution)
    return [select_lib.evaluate_path(space, state.supernet, sampler.sample(2 * 10 ** 7 + j),
                                     bn_train, val_ds, bn_batches=5, batch_size=b)
            for j in range(FLAGS.accuracy_paths)]


if __name__ == "__main__":
    app.run(main)
