"""`export_onnx`: the ONNX file, through the optional tf2onnx."""
from __future__ import annotations

import os

import keras
import tensorflow as tf

from cream_tf.export.target import ExportError, new_target

__all__ = ["export_onnx"]


def export_onnx(model: keras.Model, path: str, opset_version: int | None = None,
                overwrite: bool = False) -> str:
    """Writes `model` as ONNX through tf2onnx (input `image`, preprocessed float, NHWC).

    Needs the optional dependencies: `pip install "cream_tf[onnx]"` (tf2onnx, onnx;
    onnxruntime to run the result). The model must use the float32 dtype policy.
    """
    path = os.fspath(path)
    if not path.endswith(".onnx"):
        raise ExportError(f"an ONNX file name must end in '.onnx', got {path!r}")
    try:
        import onnx  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError as e:
        raise ImportError(f"ONNX export needs the 'onnx' extra: pip install \"cream_tf[onnx]\" "
                          f"(tf2onnx and onnx; missing: {e.name})") from e
    if model.dtype_policy.name != "float32":
        raise ExportError(f"ONNX export needs the float32 dtype policy, the model uses "
                          f"{model.dtype_policy.name!r}: rebuild it under float32 and copy weights")
    spec = [tf.TensorSpec((None,) + tuple(model.input_shape[1:]), tf.float32, name="image")]
    with new_target(path, overwrite, is_dir=False) as tmp:
        model.export(tmp, format="onnx", verbose=False, input_signature=spec,
                     opset_version=opset_version)
    return os.path.abspath(path)
