"""The release's search step in PyTorch, timed like benchmarks/search_step.py (issue 7's yardstick).

    python benchmarks/torch_release_step.py                      # search_step.py's defaults
    python benchmarks/torch_release_step.py --channels_last
    python benchmarks/torch_release_step.py --board_size=10      # the release's board
    python benchmarks/torch_release_step.py --resolution=224 --batch_size=8 --depth=4 --width=1.0

The release (microsoft/Cream, folder Cream/) needs apex and 2020 packages, so this times a
re-implementation of its search step on this CPU: `benchmarks/torch_release.py`'s `TorchSuperNet`
(the release's supernet structure, `blocks[stage][layer][op]`, eager Python forward over the
chosen modules only) built from the same `cream_tf.space.Space` as search_step.py's supernet
(tests/test_torch_release.py checks that every path has the Keras child's exact parameters).

Times, in one process, as the median of --steps steps after --warmup untimed ones, each step a
different path (the step-t path of a seeded numpy RNG; --prior=release draws exactly
search_step.py's paths, the default 'uniform' draws every allowed op, SkipConnect included,
equally often):
  (a) plain: forward (train mode), CE with label smoothing 0.1, zero_grad(set_to_none),
      backward, SGD (Nesterov 0.9, weight decay 1e-4 on conv and dense kernels, as the release);
  (b) cream: the release's distillation step: the student scores the K*n board images (one
      batched forward in train mode without gradient; --release_scoring: K grad-enabled forwards
      of n images with rho keeping its graph, as the release's select_teacher), the matching
      layer picks the teacher, the teacher path runs on the batch without gradient, loss =
      (rho * KD + (2 - rho) * CE) / 2, backward, step, then the host-side board update.
Inputs are fixed tensors (no input pipeline), float32.
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
flags.DEFINE_string("space", "mbconv", "search space name")
flags.DEFINE_string("layout", "released", "space layout")
flags.DEFINE_integer("depth", 1, "blocks per stage (configs/small.flags: 1)")
flags.DEFINE_integer("resolution", 32, "input size")
flags.DEFINE_float("width", 0.5, "width multiplier")
flags.DEFINE_integer("num_classes", 10, "classes")
flags.DEFINE_integer("batch_size", 32, "batch")
flags.DEFINE_integer("board_size", 5, "K, board entries (release: 10)")
flags.DEFINE_integer("board_images", 4, "n, stored images per entry (release: 4)")
flags.DEFINE_integer("steps", 30, "timed steps per measurement (median reported)")
flags.DEFINE_integer("warmup", 5, "untimed steps before timing")
flags.DEFINE_enum("prior", "uniform", ["uniform", "release"],
                  "path prior; 'release' draws search_step.py's paths")
flags.DEFINE_integer("seed", 0, "path sampler seed (search_step.py: 0)")
flags.DEFINE_integer("threads", 0, "torch intra-op threads; 0 = os.cpu_count()")
flags.DEFINE_bool("channels_last", False, "supernet and inputs in channels-last memory format")
flags.DEFINE_bool("torch_compile", False,
                  "torch.compile every block (DS, each choice, 1x1 conv) and compile them all "
                  "before timing; needs a C compiler")
flags.DEFINE_bool("prewarm", True,
                  "run every block once in every mode before timing (steady state of a long run)")
flags.DEFINE_bool("release_scoring", False,
                  "score the board as the release does: K separate grad-enabled forwards")
flags.DEFINE_list("parts", "plain,cream", "what to measure")
flags.DEFINE_float("skip_prob", None, "SkipConnect probability where allowed (None: uniform share)")
flags.DEFINE_enum("preset", None, list(presets.PRESETS), "settings shared with "
                  "benchmarks/scale.py (they override space, depth, resolution, width, classes, "
                  "batch, board, prior and skip_prob), so both time the same paths")


def _prepare_blocks(torch, net, space, batches, fmt, compile_blocks):
    """Runs every block (DS, each choice of each layer, 1x1 conv) once in each mode the steps use
    (train forward + backward, forward without gradient) at each batch size, so that timed steps
    see no first-use costs (oneDNN primitive creation; with `compile_blocks`, torch.compile of
    each block, which this triggers). Returns the number of blocks."""
    blocks = [(m, space.stem_out_size, space.stem_channels) for m in net.blocks[0][0]]
    for layer, choices in zip(space.layers, (c for stage in net.blocks[1:-1] for c in stage)):
        blocks += [(m, layer.in_size, layer.in_channels) for m in choices]
    blocks += [(m, space.final_size, space.stage_channels[-1]) for m in net.blocks[-1][0]]
    if compile_blocks:
        for m, _, _ in blocks:
            m.compile()
    for b in batches:
        for m, size, channels in blocks:
            x = torch.randn(b, channels, size, size).contiguous(memory_format=fmt)
            with torch.no_grad():
                m(x)
            m(x.requires_grad_()).sum().backward()
    net.zero_grad(set_to_none=True)
    return len(blocks)


def main(argv):
    del argv
    import numpy as np
    import torch

    from benchmarks import torch_release as tr
    from cream_tf.space import Space

    threads = FLAGS.threads or os.cpu_count()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    parts = set(FLAGS.parts)
    s = presets.apply(FLAGS, FLAGS.preset)
    space = Space(s["space"], s["layout"], s["depth"], s["resolution"], s["width"],
                  s["num_classes"])
    b, k, n, r = s["batch_size"], s["board_size"], s["board_images"], space.resolution
    fmt = torch.channels_last if FLAGS.channels_last else torch.contiguous_format
    load = os.getloadavg()
    print(f"space={space.name} depth={s['depth']} resolution={r} width={space.width} batch={b} "
          f"board={k}x{n} prior={s['prior']} skip_prob={s['skip_prob']} preset={FLAGS.preset} "
          f"channels_last={FLAGS.channels_last} "
          f"compile={FLAGS.torch_compile} release_scoring={FLAGS.release_scoring} "
          f"| torch={torch.__version__} threads={threads} nproc={os.cpu_count()} "
          f"load={load[0]:.2f}", flush=True)

    net = tr.release_init(tr.TorchSuperNet(space)).to(memory_format=fmt)
    sampler = tr.PathSampler(space, s["prior"], FLAGS.seed, s["skip_prob"])
    # Same data, in the same RNG order, as search_step.py (NHWC there, NCHW here).
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.normal(size=(b, r, r, 3)).astype(np.float32)
                              .transpose(0, 3, 1, 2).copy())
    labels = torch.from_numpy(rng.integers(0, space.num_classes, size=b).astype(np.int64))
    paths = [sampler.sample(s) for s in range(FLAGS.warmup + FLAGS.steps + 1)]
    board = tr.Board(k)
    for j in range(k):  # K entries with distinct paths and scores, as after the warm-up epochs
        path = sampler.sample(10 ** 6 + j)
        probs = rng.dirichlet(np.ones(space.num_classes), size=n).astype(np.float32)
        board_images = rng.normal(size=(n, r, r, 3)).astype(np.float32).transpose(0, 3, 1, 2)
        board.update(path, 90.0 - 10.0 * j / k, torch.from_numpy(board_images.copy()),
                     torch.from_numpy(probs))
    steps = tr.SearchSteps(net, images, labels, board, n, release_scoring=FLAGS.release_scoring,
                           channels_last=FLAGS.channels_last)
    skips = float(np.mean([np.mean(p == space.skip_index) for p in paths]))
    params = float(np.mean([sum(q.numel() for q in net.path_parameters(p)) for p in paths]))
    print(f"supernet {sum(q.numel() for q in net.parameters()) / 1e6:.2f}M parameters; "
          f"mean path {params / 1e6:.3f}M parameters, {skips:.0%} of layers skipped", flush=True)

    batches = sorted({b, k * n, n})
    if FLAGS.torch_compile:
        start = time.perf_counter()
        try:
            count = _prepare_blocks(torch, net, space, batches, fmt, compile_blocks=True)
        except Exception as e:  # noqa: BLE001  no compiler, no headers, ...: run eager instead
            print(f"torch.compile unavailable here ({type(e).__name__}: {str(e)[:200]}); "
                  f"timing eager", flush=True)
            torch.compiler.reset()
            net = tr.release_init(tr.TorchSuperNet(space)).to(memory_format=fmt)
            steps = tr.SearchSteps(net, images, labels, board, n,
                                   release_scoring=FLAGS.release_scoring,
                                   channels_last=FLAGS.channels_last)
        else:
            print(f"compiled {count} blocks in {time.perf_counter() - start:.0f} s", flush=True)
    if FLAGS.prewarm and not FLAGS.torch_compile:
        start = time.perf_counter()
        count = _prepare_blocks(torch, net, space, batches, fmt, compile_blocks=False)
        print(f"pre-warmed {count} blocks in {time.perf_counter() - start:.1f} s", flush=True)

    results, rows = {}, {}
    if "plain" in parts:
        results["plain"], _ = timing.median_time(lambda i: steps.plain(paths[i]), FLAGS.steps,
                                           FLAGS.warmup)
        rows["plain"] = timing.peak_rss_mb()
        print(f"  plain: {results['plain'] * 1e3:.1f} ms/step", flush=True)
    if "cream" in parts:
        results["cream"], _ = timing.median_time(lambda i: steps.cream(paths[i]), FLAGS.steps,
                                           FLAGS.warmup)
        rows["cream"] = timing.peak_rss_mb()
        print(f"  cream: {results['cream'] * 1e3:.1f} ms/step", flush=True)

    base = results.get("plain")
    print(f"{'part':8s} {'ms/step':>9s} {'images/s':>9s} {'x plain':>8s} {'peak MB':>8s}")
    for name, t in results.items():
        ratio = f"{t / base:8.2f}" if base else f"{'':8s}"
        print(f"{name:8s} {t * 1e3:9.1f} {b / t:9.0f} {ratio} {rows[name]:8.0f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    app.run(main)
