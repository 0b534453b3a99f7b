"""Test setup: two logical CPU devices so MirroredStrategy runs with 2 replicas.

This must happen before TensorFlow initialises its runtime, hence at import time of conftest.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end cases; run alone with -m slow")


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
