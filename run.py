"""cream_tf's job: search a supernet, select, retrain and export the found network.

    python run.py --flags=configs/small.flags              # the whole pipeline (--mode=all)
    python run.py --flags=configs/small.flags --mode=search  # one phase; later flags override the file
    python run.py --mode=profile --arch=cream_14            # MACs/params table of a zoo name or an arch

Everything a run makes lives in --workdir; rerunning a mode picks up what earlier modes left there,
and rerunning after a crash resumes.
"""
from __future__ import annotations

import os
import shlex
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out

from absl import app, flags, logging  # noqa: E402

from cream_tf import cli  # noqa: E402
from cream_tf import run_flags  # noqa: E402  (defines the flags)
from cream_tf.run_flags import MODES  # noqa: E402,F401  (run.MODES: the modes of --mode)

OUR_FLAGS = run_flags.NAMES
flags.adopt_module_key_flags(run_flags)  # --helpshort lists them as run.py's own


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {' '.join(argv[1:])!r}; flags start with --")
    if not flags.FLAGS["verbosity"].present:  # -v / --verbosity=0 bring TF's INFO logs back
        logging.set_verbosity(logging.WARNING)
    from cream_tf import job  # heavy imports (TensorFlow) only after the flags are good
    from cream_tf import safety
    from cream_tf.settings import Settings

    if flags.FLAGS.verbosity < 0:  # --verbosity=-1 also hides TF's Python warnings
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")  # e.g. the retracing notes of per-path evaluation
    try:
        job.run(Settings.from_flags())
    except cli.UsageError as e:
        cli.fail(str(e))
    except safety.Interrupted as e:  # a checkpoint was written: say how to resume, exit 128+sig
        print(f"run.py: {e}: {' '.join(shlex.quote(a) for a in [sys.executable] + sys.argv)}",
              file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    except safety.TooManyBadSteps as e:
        print(f"run.py: error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


def _parse(argv):
    return cli.parse_flags(argv, OUR_FLAGS)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse)
