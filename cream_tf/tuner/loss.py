"""The trials' training loss: cross-entropy of integer labels, with label smoothing.

Keras' sparse cross-entropy has no label smoothing and its smoothing one needs one-hot labels,
which `tune`'s integer-labelled datasets do not carry.
"""
from __future__ import annotations

import keras

__all__ = ["SparseCategoricalCrossentropyWithSmoothing", "make_loss"]


@keras.saving.register_keras_serializable(package="cream_tf")
class SparseCategoricalCrossentropyWithSmoothing(keras.losses.Loss):
    """Cross-entropy of integer labels with label smoothing (Keras' sparse loss has none)."""

    def __init__(self, label_smoothing=0.0, from_logits=True,
                 name="sparse_categorical_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        y_true = keras.ops.reshape(keras.ops.cast(y_true, "int32"), (-1,))
        one_hot = keras.ops.one_hot(y_true, keras.ops.shape(y_pred)[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(
            one_hot, y_pred, from_logits=self.from_logits, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing,
                "from_logits": self.from_logits}


def make_loss(label_smoothing: float = 0.0):
    """Sparse cross-entropy on logits; with smoothing when `label_smoothing` > 0."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    if label_smoothing == 0.0:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return SparseCategoricalCrossentropyWithSmoothing(label_smoothing)
