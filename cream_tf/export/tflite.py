"""TFLite: conversion (float32, or int8 calibrated on representative images) and running the
file with the TFLite interpreter, the way a phone would."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import tensorflow as tf
import keras

from cream_tf.export.model_io import image_shape
from cream_tf.export.saved_model import write_saved_model
from cream_tf.export.target import ExportError, new_target, refuse_existing

__all__ = ["export_tflite", "load_interpreter", "tflite_predict"]


def _batches_of_one(data, limit):
    """Yields up to `limit` float32 arrays of shape (1, H, W, 3) from an array or an iterable."""
    count = 0
    if isinstance(data, tf.data.Dataset):
        data = data.as_numpy_iterator()
    if isinstance(data, np.ndarray):
        array = data
        data = (array[i:i + 1] for i in range(len(array)))
    for batch in data:
        if isinstance(batch, (tuple, list)):
            batch = batch[0]  # (images, labels)
        batch = np.asarray(batch, np.float32)
        if batch.ndim == 3:
            batch = batch[None]
        for i in range(len(batch)):
            if count >= limit:
                return
            yield batch[i:i + 1]
            count += 1


def export_tflite(model: keras.Model, path: str, quantization: str | None = None,
                  representative_data=None, num_calibration_samples: int = 200,
                  overwrite: bool = False) -> str:
    """Converts `model` to a `.tflite` file (same input as the Keras model: preprocessed float).

    Args:
      quantization: None for float32, or 'int8' for full-integer quantization: int8 weights,
        activations, input and output (`input_details()[0]['quantization']` gives the scale and
        zero point), using only TFLITE_BUILTINS_INT8 ops, as integer-only accelerators need.
      representative_data: for 'int8': preprocessed images, an array (N, H, W, 3), a
        `tf.data.Dataset` or an iterable of batches (or (images, labels) pairs), drawn from the
        data the model will see; up to `num_calibration_samples` are used to set the ranges.
    """
    path = os.fspath(path)
    if not path.endswith(".tflite"):
        raise ExportError(f"a TFLite file name must end in '.tflite', got {path!r}")
    if quantization not in (None, "int8"):
        raise ExportError(f"quantization must be None (float32) or 'int8', got {quantization!r}")
    image_shape(model)
    refuse_existing(path, overwrite)
    if quantization == "int8" and representative_data is None:
        raise ExportError("int8 quantization needs representative_data: a few hundred "
                          "preprocessed images like those the model will see")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{os.path.basename(path)}.work-", dir=parent) as work:
        saved = os.path.join(work, "saved_model")
        write_saved_model(model, saved, {"serving_default": (
            lambda image: model(image, training=False),
            tf.TensorSpec((None,) + tuple(model.input_shape[1:]), tf.float32, name="image"))})
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        if quantization == "int8":
            samples = list(_batches_of_one(representative_data, num_calibration_samples))
            if not samples:
                raise ExportError("representative_data gave no images")
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([s] for s in samples)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        flatbuffer = converter.convert()
    with new_target(path, overwrite, is_dir=False) as tmp, open(tmp, "wb") as f:
        f.write(flatbuffer)
    return os.path.abspath(path)


def load_interpreter(path, num_threads):
    try:
        from ai_edge_litert.interpreter import Interpreter  # the successor of tf.lite
    except ImportError:
        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=os.fspath(path), num_threads=num_threads)


def tflite_predict(path: str, images, num_threads: int = 1) -> np.ndarray:
    """Float outputs of a `.tflite` model on preprocessed `images`, one image at a time.

    int8 models get their input quantized and their output dequantized with the scales stored
    in the file, so the result compares directly with the Keras model's output.
    """
    interpreter = load_interpreter(path, num_threads)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    images = np.asarray(images, np.float32)
    if images.shape[1:] != tuple(inp["shape"][1:]):
        raise ExportError(f"images of shape {images.shape[1:]} given to a TFLite model that takes "
                          f"{tuple(inp['shape'][1:])}")
    interpreter.resize_tensor_input(inp["index"], [1] + list(images.shape[1:]))
    interpreter.allocate_tensors()
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    results = []
    for image in images:
        x = image[None]
        if inp["dtype"] != np.float32:
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / in_scale + in_zero), info.min, info.max).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])
        if out["dtype"] != np.float32:
            y = (y.astype(np.float32) - out_zero) * out_scale
        results.append(y[0])
    return np.stack(results)
