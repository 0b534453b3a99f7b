"""How the search step scales: time to first step, memory and graph size against space and replicas.

    python benchmarks/scale.py                                      # Table 1 space, depth 6, 224 px
    python benchmarks/scale.py --replicas=2                         # ... over 2 logical CPU devices
    python benchmarks/scale.py --space=mbconv_res_conv --depth=4    # Table 3 space
    python benchmarks/scale.py --depth=1 --resolution=32 --width=0.5 --replicas=4
    python benchmarks/scale.py --preset=release                     # the release's search settings

In one process: builds the search state (supernet, optimizer, board filled with K entries),
then times the first Cream step (tracing included), then the median of --steps plain and Cream
steps (each a different path). `--replicas N` splits this machine's CPU into N logical devices
and runs `MirroredStrategy` over them with --batch_size images per replica (one device: the
default strategy, as `run.py --strategy=default`). Graph size counts the nodes of the step's
graph and of every function it calls. Peak RSS is the process's (`resource.getrusage`).

`--preset=release`: the release's search (Table 1 space at 224, 1000 classes, fixed depth 4 per
stage without SkipConnect, the release prior, board 10 x 4, batch 32); torch_release_step.py
takes the same preset, so both time the same paths.

The last line is `scale: first_step_s=<float> peak_rss_gb=<float> replicas=<int>`, where
first_step_s is everything before the first step's result is back: building the state, tracing
and running it.
"""
import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import presets  # noqa: E402
from benchmarks import timing  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("preset", None, list(presets.PRESETS), "the release's search settings (see the docstring); "
                  "they override space, layout, depth, resolution, width, classes, batch, board, "
                  "prior and skip")
flags.DEFINE_string("space", "mbconv", "search space name")
flags.DEFINE_string("layout", "released", "space layout")
flags.DEFINE_integer("depth", 6, "blocks per stage")
flags.DEFINE_integer("resolution", 224, "input size")
flags.DEFINE_float("width", 1.0, "width multiplier")
flags.DEFINE_integer("num_classes", 1000, "classes")
flags.DEFINE_integer("batch_size", 8, "images per replica")
flags.DEFINE_integer("board_size", 10, "K, board entries")
flags.DEFINE_integer("board_images", 4, "n, stored images per entry")
flags.DEFINE_enum("prior", "release", ["release", "uniform"], "path prior")
flags.DEFINE_float("skip_prob", None, "SkipConnect probability where allowed (None: uniform share)")
flags.DEFINE_integer("replicas", 1, "logical CPU devices; MirroredStrategy when > 1")
flags.DEFINE_integer("steps", 3, "timed steps per part (median reported)")
flags.DEFINE_integer("warmup", 1, "untimed steps per part after the first step")
flags.DEFINE_list("parts", "plain,cream", "steady parts to time after the first step")
flags.DEFINE_integer("threads", 0, "TensorFlow intra-op threads (0 = one per core)")
flags.DEFINE_bool("scoring_gradient", True, "SearchConfig.scoring_gradient: differentiate the "
                  "board scoring, as the release (false: rho trains the matching network only)")
flags.DEFINE_bool("graph_size", True, "count the step graph's nodes (takes a few seconds)")

def graph_nodes(concrete) -> int:
    """Nodes of a concrete function's graph plus those of every function in its library."""
    graph_def = concrete.graph.as_graph_def()
    return len(graph_def.node) + sum(len(f.node_def) for f in graph_def.library.function)


def main(argv):
    del argv
    started = time.perf_counter()
    import tensorflow as tf

    if FLAGS.threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    cpus = tf.config.list_physical_devices("CPU")
    if FLAGS.replicas > 1:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * FLAGS.replicas)
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:FLAGS.replicas]
    strategy = (tf.distribute.MirroredStrategy(devices) if FLAGS.replicas > 1
                else tf.distribute.get_strategy())

    from benchmarks import harness
    from cream_tf import trainer
    from cream_tf.space import Space

    s = presets.apply(FLAGS, FLAGS.preset)
    space = Space(s["space"], s["layout"], s["depth"], s["resolution"], s["width"],
                  s["num_classes"])
    batch = s["batch_size"] * FLAGS.replicas
    config = trainer.SearchConfig(epochs=1, steps_per_epoch=10 ** 6, warmup_epochs=0,
                                  batch_size=batch, board_size=s["board_size"],
                                  board_images=s["board_images"], prior=s["prior"],
                                  skip_prob=s["skip_prob"], learning_rate=0.1, verbose=0,
                                  scoring_gradient=FLAGS.scoring_gradient,
                                  seed=0)  # 0.1: finite steps on random labels
    print(f"space={space.name} depth={s['depth']} resolution={space.resolution} "
          f"width={space.width} classes={space.num_classes} layers={space.num_layers} "
          f"batch={s['batch_size']}x{FLAGS.replicas} board={s['board_size']}x{s['board_images']} "
          f"prior={s['prior']} skip_prob={s['skip_prob']} preset={FLAGS.preset} | "
          f"nproc={os.cpu_count()} load={os.getloadavg()[0]:.2f}", flush=True)
    start = time.perf_counter()
    bench = harness.StepBench(space, config, strategy, seed=0)
    built = time.perf_counter() - start
    print(f"  state built (supernet, optimizer, board): {built:.1f} s, "
          f"{len(bench.state.supernet.weights)} variables", flush=True)
    start = time.perf_counter()
    bench.cream(0)
    first = time.perf_counter() - start
    first_step_s = time.perf_counter() - started
    rss_first = timing.peak_rss_mb() / 1024
    print(f"  first Cream step (trace + run): {first:.1f} s; peak RSS {rss_first:.2f} GB",
          flush=True)
    rows = {}
    for part in FLAGS.parts:  # paths 0, 1, ... as torch_release_step.py takes them
        fn = {"plain": bench.plain, "cream": bench.cream}[part]
        t, _ = timing.median_time(fn, FLAGS.steps, FLAGS.warmup)
        rows[part] = t
        print(f"  {part}: {t:.3f} s/step ({batch / t:.1f} img/s)", flush=True)
    traces = bench.traces()
    nodes = graph_nodes(bench.concrete_step()) if FLAGS.graph_size else None
    peak = timing.peak_rss_mb() / 1024
    print(f"traces: {traces}; step graph nodes (with its functions): {nodes}")
    print(f"{'first step s':>12s} {'build s':>8s} {'trace+run s':>11s} {'plain s':>8s} "
          f"{'cream s':>8s} {'cream/plain':>11s} {'nodes':>8s} {'peak GB':>8s} {'replicas':>8s}")
    plain, cream = rows.get("plain"), rows.get("cream")
    fmt = lambda v, f: format(v, f) if v is not None else "-"  # noqa: E731
    print(f"{first_step_s:12.1f} {built:8.1f} {first:11.1f} {fmt(plain, '8.3f'):>8s} "
          f"{fmt(cream, '8.3f'):>8s} {fmt(cream / plain if plain and cream else None, '11.2f'):>11s} "
          f"{fmt(nodes, '8d'):>8s} {peak:8.2f} {FLAGS.replicas:8d}")
    print(f"load average after: {os.getloadavg()[0]:.2f}; wall {time.perf_counter() - started:.0f} s")
    print(f"scale: first_step_s={first_step_s:.1f} peak_rss_gb={peak:.2f} "
          f"replicas={FLAGS.replicas}")


if __name__ == "__main__":
    app.run(main)
