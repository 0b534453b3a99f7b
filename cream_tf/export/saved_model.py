"""The TF Serving SavedModel: a version folder whose serving functions take raw pixels (or
encoded images) and do the preprocessing, softmax and top-k in the graph, so a client needs nothing
but the README written next to it."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import tensorflow as tf
import keras

from cream_tf.data import IMAGENET_MEAN, IMAGENET_STD  # the training pipeline's normalisation
from cream_tf.export import model_card
from cream_tf.export.model_io import image_shape, outputs_probabilities
from cream_tf.export.target import ExportError, new_target, refuse_existing

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SERVING_SIGNATURE", "BYTES_SIGNATURE",
           "METADATA_FILE", "export_saved_model", "next_version", "write_saved_model"]

SERVING_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "serving_bytes"
METADATA_FILE = os.path.join("assets.extra", "cream_export.json")


def write_saved_model(model, path, endpoints: dict):
    """Writes a SavedModel whose signatures are `endpoints` {name: (fn, TensorSpec)}.

    A plain tf.Module that tracks the model's tf.Variables once. (keras.export.ExportArchive in
    Keras 3.15 stores every variable twice, as Keras and as tf variables: a SavedModel twice the
    size of the weights.) The functions run the Keras model, whose layers are all built in, so
    the result loads without cream_tf or Keras.
    """
    root = tf.Module()
    root.model_variables = [v.value for v in model.variables]
    signatures = {}
    for name, (fn, spec) in endpoints.items():
        function = tf.function(fn, input_signature=[spec], autograph=False)
        setattr(root, name, function)
        signatures[name] = function.get_concrete_function()
    tf.saved_model.save(root, path, signatures=signatures)


def next_version(model_dir: str) -> int:
    """1 + the largest integer version folder under `model_dir` (1 when there is none)."""
    versions = [int(d) for d in (os.listdir(model_dir) if os.path.isdir(model_dir) else [])
                if d.isdigit()]
    return max(versions, default=0) + 1


def _check_stats(name, values):
    values = tuple(float(v) for v in values)
    if len(values) != 3:
        raise ExportError(f"{name} must have 3 values (R, G, B), got {values}")
    return values


class _ServingModule:
    """The traced serving functions: preprocessing + model + softmax + top-k, all in-graph."""

    def __init__(self, model, mean, std, class_names, top_k):
        self.model = model
        self.height, self.width, _ = image_shape(model)
        self.mean = tf.constant(mean, tf.float32)
        self.std = tf.constant(std, tf.float32)
        self.has_softmax = outputs_probabilities(model)
        self.top_k = top_k
        self.class_names = None if class_names is None else tf.constant(list(class_names))

    def _predict(self, pixels):
        """`pixels`: float32 RGB in [0, 255] at the model's size."""
        x = (pixels / 255.0 - self.mean) / self.std
        y = tf.cast(self.model(x, training=False), tf.float32)
        probabilities = y if self.has_softmax else tf.nn.softmax(y, axis=-1)
        scores, ids = tf.math.top_k(probabilities, k=self.top_k)
        out = {"probabilities": probabilities, "top_k_ids": ids, "top_k_scores": scores}
        if self.class_names is not None:
            out["top_k_names"] = tf.gather(self.class_names, ids)
        return out

    def serve_image(self, image):
        return self._predict(tf.cast(image, tf.float32))

    def serve_bytes(self, image_bytes):
        def decode(data):
            img = tf.io.decode_image(data, channels=3, expand_animations=False)
            img = tf.image.resize(tf.cast(img, tf.float32), (self.height, self.width),
                                  method="bilinear", antialias=True)
            return tf.ensure_shape(img, (self.height, self.width, 3))
        pixels = tf.map_fn(decode, image_bytes,
                           fn_output_signature=tf.TensorSpec((self.height, self.width, 3),
                                                             tf.float32))
        return self._predict(pixels)


def export_saved_model(model: keras.Model, export_dir: str, model_name: str | None = None,
                       version: int | None = None, class_names=None,
                       mean=IMAGENET_MEAN, std=IMAGENET_STD, top_k: int = 5,
                       overwrite: bool = False) -> str:
    """Writes a TF Serving SavedModel to `<export_dir>/<model_name>/<version>/`.

    Signatures (both return `probabilities` (batch, classes), `top_k_ids` int32 and
    `top_k_scores` (batch, k) with k = min(top_k, classes), and `top_k_names` when `class_names`
    are given):
      * `serving_default`: input `image`, uint8 (batch, H, W, 3) RGB at the model's resolution.
      * `serving_bytes`: input `image_bytes`, a string batch of encoded JPEG/PNG/BMP/GIF images,
        decoded and resized (bilinear, antialiased) to H x W in the graph.
    Preprocessing runs in the graph: x / 255, then (x - mean) / std per channel; `mean`, `std`,
    names and shapes are recorded in `assets.extra/cream_export.json`, and a README.md with the
    `tensorflow_model_server` command and REST examples is written next to `saved_model.pb`.

    Args:
      version: positive integer; default the next one after the largest existing version.
        An existing version folder is an error unless `overwrite=True`.
    Returns:
      The version directory.
    """
    height, width, _ = image_shape(model)
    model_name = model_name or model.name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", model_name):
        raise ExportError(f"model_name must be letters, digits, '_', '.', '-', got {model_name!r}")
    mean, std = _check_stats("mean", mean), _check_stats("std", std)
    if any(s <= 0 for s in std):
        raise ExportError(f"std must be positive, got {std}")
    num_classes = int(model.output_shape[-1])
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) != num_classes:
            raise ExportError(f"{len(class_names)} class_names given for a model with "
                              f"{num_classes} classes")
    if not isinstance(top_k, int) or top_k < 1:
        raise ExportError(f"top_k must be a positive integer, got {top_k!r}")
    k = min(top_k, num_classes)
    model_dir = os.path.join(os.path.abspath(os.fspath(export_dir)), model_name)
    if version is None:
        version = next_version(model_dir)
    elif not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ExportError(f"version must be a positive integer (TF Serving ignores other folder "
                          f"names), got {version!r}")
    target = os.path.join(model_dir, str(version))
    refuse_existing(target, overwrite,
                    f" (or leave version=None to write version {next_version(model_dir)})")

    module = _ServingModule(model, mean, std, class_names, k)
    endpoints = {
        SERVING_SIGNATURE: (module.serve_image,
                            tf.TensorSpec((None, height, width, 3), tf.uint8, name="image")),
        BYTES_SIGNATURE: (module.serve_bytes,
                          tf.TensorSpec((None,), tf.string, name="image_bytes")),
    }
    gray = np.full((1, height, width, 3), 128, np.uint8)
    example = {key: value.numpy() for key, value in
               module.serve_image(tf.constant(gray)).items()}
    metadata = {
        "format": "cream_tf TF Serving SavedModel", "model_name": model_name, "version": version,
        "signatures": {
            SERVING_SIGNATURE: {"inputs": {"image": {"dtype": "uint8",
                                                     "shape": [-1, height, width, 3]}}},
            BYTES_SIGNATURE: {"inputs": {"image_bytes": {"dtype": "string", "shape": [-1]}}},
        },
        "outputs": {name: {"dtype": "string" if v.dtype == object else str(v.dtype),
                           "shape": [-1] + list(v.shape[1:])}
                    for name, v in example.items()},
        "preprocessing": {"scale": 1.0 / 255.0, "mean": list(mean), "std": list(std),
                          "formula": "(image / 255 - mean) / std", "resize": "bilinear"},
        "num_classes": num_classes, "top_k": k, "class_names": class_names,
    }
    with new_target(target, overwrite, is_dir=True) as tmp:
        write_saved_model(model, tmp, endpoints)
        os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
        with open(os.path.join(tmp, METADATA_FILE), "w") as f:
            json.dump(metadata, f, indent=2)
        with open(os.path.join(tmp, "README.md"), "w") as f:
            f.write(model_card.serving_readme(model_dir, metadata, example,
                                              SERVING_SIGNATURE, BYTES_SIGNATURE))
    return target
