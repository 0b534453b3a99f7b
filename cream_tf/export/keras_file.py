"""`export_keras`: the `.keras` file, checked to load without cream_tf."""
from __future__ import annotations

import os

import keras

from cream_tf import internals
from cream_tf.export.target import ExportError, new_target

__all__ = ["export_keras"]


def export_keras(model: keras.Model, path: str, overwrite: bool = False) -> str:
    """Saves `model` as a `.keras` file that loads with `safe_mode=True` without cream_tf.

    This works because child networks are made of built-in layers only (no Lambda, no custom
    class); a model with custom layers is rejected here rather than at the user's load time.
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ExportError(f"a Keras file name must end in '.keras', got {path!r}")
    custom = sorted({type(layer).__module__ + "." + type(layer).__name__
                     for layer in internals.all_sublayers(model)
                     if not type(layer).__module__.startswith("keras.")})
    if custom:
        raise ExportError(f"the model has layers that are not built into Keras "
                          f"({', '.join(custom)}); the .keras file would not load without "
                          f"their code")
    with new_target(path, overwrite, is_dir=False) as tmp:
        model.save(tmp)
    return os.path.abspath(path)
