"""cream_tf: Cream of the Crop (distilling prioritized paths) one-shot NAS in TensorFlow/Keras.

Submodules load on first use (`cream_tf.zoo.build(...)` imports `cream_tf.zoo` then), so the
command line can reject a bad flag before TensorFlow starts, and keras-tuner, TFDS or torch are
only imported by the parts that need them.
"""
import importlib

__version__ = "0.1.0"

_MODULES = ("arch", "atomic", "blocks", "board", "child", "cli", "data", "errors", "export",
            "flops", "internals", "job", "matching", "plots", "ranking", "retrain", "run_flags",
            "run_identity", "safety", "sampler", "search", "select", "settings", "space",
            "supernet", "torch_weights", "trainer", "tuner", "workdir_lock", "zoo")
_NAMES = {"Arch": "arch", "ArchError": "arch", "InputError": "errors", "Space": "space"}

__all__ = list(_MODULES) + list(_NAMES)


def __getattr__(name):
    if name in _MODULES:
        return importlib.import_module(f"cream_tf.{name}")
    if name in _NAMES:
        return getattr(importlib.import_module(f"cream_tf.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'cream_tf' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
