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
