"""Does the matching network do anything? M's weights and teacher choices over one search.

    python benchmarks/matching_activity.py                                  # small.flags' search
    python benchmarks/matching_activity.py --flags=configs/small.flags --teacher=top1

Runs the search phase of a flags file (default configs/small.flags; any run.py flag overrides
it) in a fresh temporary workdir, recording every step's teacher and rho, and prints M's weights
at the start and the end, how far they moved, how often the teacher was not the board's best
entry (the one `--teacher=top1` always takes) and rho's range. The last line is
`matching: delta_norm=<float> relative=<float> teacher_not_best=<float> distill_steps=<int>`.
"""
import os
import sys
import tempfile
import time

import numpy as np
from absl import app

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cream_tf import run_flags  # noqa: E402,F401  (defines run.py's flags)


def search_setup():
    """(job, space, SearchConfig, train_ds, val_ds) of the parsed flags' search."""
    from cream_tf import data as data_lib
    from cream_tf.job import Job
    from cream_tf.settings import Settings

    settings = Settings.from_flags()
    job = Job(settings)
    splits, info = job.data()
    space, config = job.space, job.search_config()
    train_ds, val_ds = data_lib.search_inputs(splits, info, space.resolution, seed=settings.seed)
    return job, space, config, train_ds, val_ds


def run(main):
    """app.run(main) with run.py's --flags handling, small.flags unless another is given."""
    from cream_tf import cli

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = sys.argv[1:]
    if not any(a == "--flags" or a.startswith("--flags=") for a in args):
        args = ["--flags=" + os.path.join(here, "configs", "small.flags")] + args
    app.run(main, argv=[sys.argv[0]] + cli.expand_flags_file(args))


def main(argv):
    del argv
    from cream_tf import search as search_lib
    from cream_tf.matching import MatchingNetwork

    job, space, config, train_ds, val_ds = search_setup()
    start = [w.copy() for w in MatchingNetwork(config.board_images, space.num_classes,
                                               seed=config.seed).get_weights()]
    record = []

    def callback(step, logs):
        if logs["distill"]:
            record.append((step, logs["teacher"], logs["rho"]))

    began = time.time()
    with tempfile.TemporaryDirectory() as workdir:
        result = search_lib.search(space, train_ds, val_ds, workdir, config, job.strategy,
                                   callback=callback)
    seconds = time.time() - began
    end = result.matching.get_weights()
    flat0 = np.concatenate([w.ravel() for w in start])
    flat1 = np.concatenate([w.ravel() for w in end])
    delta = float(np.linalg.norm(flat1 - flat0))
    relative = delta / float(np.linalg.norm(flat0))
    teachers = np.array([t for _, t, _ in record])
    rhos = np.array([r for _, _, r in record])
    not_best = float(np.mean(teachers != 0)) if len(teachers) else 0.0
    print(f"search: {space}, {config.total_steps} steps, teacher={config.teacher}, "
          f"{config.meta_updates} meta updates, {seconds:.0f} s")
    print("| | value |")
    print("|---|---|")
    print(f"| distillation steps | {len(record)} |")
    print(f"| M at start: kernel norm, bias | {np.linalg.norm(start[0]):.4f}, "
          f"{float(start[1][0]):+.6f} |")
    print(f"| M at end: kernel norm, bias | {np.linalg.norm(end[0]):.4f}, {float(end[1][0]):+.6f} |")
    print(f"| change of M (L2), relative to its start | {delta:.6f}, {relative:.2e} |")
    print(f"| largest change of one weight | {np.abs(flat1 - flat0).max():.6f} |")
    print(f"| teacher not the best entry | {100 * not_best:.1f}% of distillation steps |")
    if len(rhos):
        print(f"| rho: mean, min, max | {rhos.mean():.4f}, {rhos.min():.4f}, {rhos.max():.4f} |")
    print(f"matching: delta_norm={delta:.6g} relative={relative:.6g} "
          f"teacher_not_best={not_best:.4f} distill_steps={len(record)}")


if __name__ == "__main__":
    run(main)
