"""Shipping a trained child network: `.keras`, TF Serving SavedModel, TFLite (fp32 / int8), ONNX.

Every artifact is standalone: the networks are made of built-in Keras layers only, so nothing here
needs cream_tf (or Python) where the model is served. Every export is written under a temporary
name next to its target and renamed into place when complete, so a crash never leaves a
half-written file or a directory TF Serving would try to load; an existing target is an error
unless `overwrite=True`.

Where things live: `keras_file`, `saved_model` (+ `model_card`, the README written next to it),
`tflite`, `onnx_file`: one form each; `accuracy` and `latency`: what a form costs; `target`: the
overwrite rule and `ExportError`; `model_io`: what every form checks of the model.
"""
from cream_tf.export.accuracy import compare_accuracy, evaluate_tflite
from cream_tf.export.keras_file import export_keras
from cream_tf.export.latency import median_latency, tflite_latency
from cream_tf.export.onnx_file import export_onnx
from cream_tf.export.saved_model import (BYTES_SIGNATURE, IMAGENET_MEAN, IMAGENET_STD,
                                         METADATA_FILE, SERVING_SIGNATURE, export_saved_model,
                                         next_version)
from cream_tf.export.target import ExportError, disk_size
from cream_tf.export.tflite import export_tflite, tflite_predict

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "ExportError", "export_keras", "export_saved_model",
    "next_version", "export_tflite", "tflite_predict", "evaluate_tflite", "compare_accuracy",
    "tflite_latency", "median_latency", "export_onnx", "disk_size",
]
