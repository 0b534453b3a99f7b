"""Command-line plumbing shared by run.py and the benchmarks: flag files, one-line usage errors,
the distribution strategy by name, and reading JSON files of a workdir (written by `atomic`)."""
from __future__ import annotations

import difflib
import json
import os
import sys

from absl import flags

from cream_tf import atomic

USAGE_EXIT = 2


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2, nothing written."""


def fail(message: str, program: str = "run.py"):
    print(f"{program}: error: {message}", file=sys.stderr)
    sys.exit(USAGE_EXIT)


def expand_flags_file(argv: list) -> list:
    """`--flags=FILE` (or `--flags FILE`) loads FILE the way `--flagfile` does; flags given after it
    on the command line override the file. A missing file is a usage error."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--flags" or arg.startswith("--flags="):
            if arg == "--flags":
                if i + 1 >= len(argv):
                    raise UsageError("--flags needs a file, e.g. --flags=configs/small.flags")
                i += 1
                path = argv[i]
            else:
                path = arg.split("=", 1)[1]
            if not os.path.isfile(path):
                here = os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), "configs")
                choices = sorted(f for f in os.listdir(here) if f.endswith(".flags")) \
                    if os.path.isdir(here) else []
                raise UsageError(f"flags file {path!r} not found" +
                                 (f"; configs/ has: {', '.join(choices)}" if choices else ""))
            out.append(f"--flagfile={path}")
        else:
            out.append(arg)
        i += 1
    return out


def parse_flags(argv: list, module_flags: list, program: str = "run.py") -> list:
    """absl parsing with one-line errors (exit 2) instead of a usage dump."""
    try:
        argv = expand_flags_file(argv)
        return flags.FLAGS(argv)
    except UsageError as e:
        fail(str(e), program)
    except flags.UnrecognizedFlagError as e:
        names = sorted(module_flags)
        close = difflib.get_close_matches(e.flagname, names, n=3)
        hint = f" (did you mean {', '.join('--' + c for c in close)}?)" if close else ""
        fail(f"unknown flag --{e.flagname}{hint}; valid flags: "
             f"{', '.join('--' + n for n in names)}", program)
    except flags.Error as e:
        fail(str(e).replace("\n", " "), program)


def atomic_write(path: str, data, mode: str = "w"):
    """`atomic.write_text`, or `atomic.write_bytes` for mode 'wb' (the older name)."""
    (atomic.write_bytes if "b" in mode else atomic.write_text)(path, data)


write_json = atomic.write_json  # the older name


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def make_strategy(name: str):
    """'auto' (MultiWorker with TF_CONFIG, Mirrored with several devices, else default),
    'mirrored', 'multi_worker', 'tpu' or 'default'."""
    import tensorflow as tf

    if name == "auto":
        if os.environ.get("TF_CONFIG"):
            name = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise UsageError("--strategy=multi_worker needs TF_CONFIG (the TF cluster description)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise UsageError(f"unknown strategy {name!r}; valid: auto, mirrored, multi_worker, tpu, "
                     f"default")
