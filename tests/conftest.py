"""Test setup: two logical CPU devices so MirroredStrategy runs with 2 replicas, TF op determinism,
and a fixed seed at the start of every test.

Determinism is what lets a test assert on a trained model: on two threads TensorFlow's float
reductions are not bit-reproducible by default, so a threshold on a training outcome would pass or
fail by chance. With op determinism and a seed per test, a test computes the same numbers on every
run, whatever ran before it (`python tests/repeat.py NODEID` proves it for a chosen test).

The device setup must happen before TensorFlow initialises its runtime, hence at import time.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
tf.config.experimental.enable_op_determinism()
SEED = 0


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end cases; run alone with -m slow")


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same Python, NumPy, TF and Keras random state, so its numbers
    do not depend on the order tests run in (a module fixture seeds itself when it trains)."""
    keras.utils.set_random_seed(SEED)


_MIRRORED = []


def mirrored():
    """The one 2-replica MirroredStrategy of the test session.

    Several strategies in one process reuse the same collective instance keys, and a later
    strategy's all-reduce of another shape then fails with a collective shape mismatch; one shared
    strategy keeps its keys increasing.
    """
    if not _MIRRORED:
        _MIRRORED.append(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    return _MIRRORED[0]


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "run.py")


def run_py(args, cwd, prelude="", timeout=1800):
    """run.py with `args` in a fresh process; `prelude` is Python run first (e.g. to inject a
    crash, or to split the CPU into logical devices before TensorFlow starts)."""
    import subprocess
    import sys
    import textwrap

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    script = textwrap.dedent(f"""
        import runpy, sys
        sys.argv = [{RUN!r}] + {list(args)!r}
    """) + textwrap.dedent(prelude) + f"\nrunpy.run_path({RUN!r}, run_name='__main__')\n"
    return subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


# Flags of tiny runs: synthetic data, 32 px, one block per stage, quarter width.
TINY_FLAGS = dict(dataset="synthetic:4", resolution=32, depth=["1"], width=0.25, batch_size=8)


def settings(**flag_values):
    """`Settings.from_flags()` with run.py's flags at their defaults, TINY_FLAGS, then
    `flag_values` (set through absl's flagsaver, so a value goes through the flag's parser)."""
    from absl.testing import flagsaver

    from cream_tf import run_flags  # noqa: F401  (defines the flags)
    from cream_tf.settings import Settings

    with flagsaver.flagsaver(**{**TINY_FLAGS, **flag_values}):
        return Settings.from_flags()


class EpochsBegun(keras.callbacks.Callback):
    """Records the epochs a fit starts (0-based): which ones a resumed fit ran again."""

    def __init__(self):
        super().__init__()
        self.started = []

    def on_epoch_begin(self, epoch, logs=None):
        self.started.append(epoch)
