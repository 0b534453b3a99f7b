"""How much accuracy an export keeps: top-1 of TFLite files against the Keras model on held-out
images, in batches so memory does not grow with the held-out set."""
from __future__ import annotations

import keras
import numpy as np

from cream_tf.export.target import ExportError
from cream_tf.export.tflite import tflite_predict

__all__ = ["evaluate_tflite", "compare_accuracy"]


def _labelled_batches(images, labels, batch_size=256):
    """(float32 images, int labels) numpy batches from arrays (cut into `batch_size`), or from an
    iterable of batches (e.g. a batched tf.data.Dataset) when `labels` is None."""
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        for start in range(0, len(labels), batch_size):
            yield (np.asarray(images[start:start + batch_size], np.float32),
                   labels[start:start + batch_size])
        return
    for x, y in images:
        yield np.asarray(x, np.float32), np.asarray(y).reshape(-1)


def evaluate_tflite(path: str, images, labels=None, num_threads: int = 1) -> float:
    """Top-1 accuracy of a `.tflite` model on preprocessed `images` with integer `labels`, or on
    an iterable of (images, labels) batches (memory bounded by the batch)."""
    correct = total = 0
    for x, y in _labelled_batches(images, labels):
        correct += int(np.sum(tflite_predict(path, x, num_threads).argmax(-1) == y))
        total += len(y)
    return correct / total if total else float("nan")


def compare_accuracy(model: keras.Model, tflite_paths: dict, images, labels=None,
                     num_threads: int = 1) -> dict:
    """Held-out top-1 of the Keras model and of each TFLite file, and their agreement with Keras.

    `images` and `labels` are arrays, or `images` is an iterable of (images, labels) batches such
    as a batched tf.data.Dataset and `labels` is None: then memory is bounded by the batch, not
    by the held-out set. Returns {'keras': {'accuracy': a}, name: {'accuracy': a, 'agreement':
    f}, ...}, where agreement is the fraction of images whose top-1 class equals the Keras
    model's.
    """
    counts = {"keras": 0, **{name: [0, 0] for name in tflite_paths}}
    total = 0
    for x, y in _labelled_batches(images, labels):
        reference = np.asarray(model.predict_on_batch(x)).argmax(-1)
        counts["keras"] += int(np.sum(reference == y))
        for name, path in tflite_paths.items():
            predicted = tflite_predict(path, x, num_threads).argmax(-1)
            counts[name][0] += int(np.sum(predicted == y))
            counts[name][1] += int(np.sum(predicted == reference))
        total += len(y)
    if not total:
        raise ExportError("compare_accuracy got no images")
    report = {"keras": {"accuracy": counts["keras"] / total}}
    for name in tflite_paths:
        report[name] = {"accuracy": counts[name][0] / total, "agreement": counts[name][1] / total}
    return report
