"""cream_tf: Cream of the Crop (distilling prioritized paths) one-shot NAS in TensorFlow/Keras."""
import importlib

from cream_tf import arch, blocks, child, flops, space, zoo
from cream_tf.arch import Arch, ArchError
from cream_tf.space import Space

__version__ = "0.1.0"

# Heavier or optional parts load on first use: `cream_tf.trainer` works without importing
# keras-tuner, TFDS or torch up front.
_LAZY = ("board", "cli", "data", "export", "job", "matching", "plots", "retrain", "sampler",
         "select", "supernet", "torch_weights", "trainer", "tuner")


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f"cream_tf.{name}")
    raise AttributeError(f"module 'cream_tf' has no attribute {name!r}")
