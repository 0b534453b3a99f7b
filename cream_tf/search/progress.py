"""What a search reports while it runs: the figures of its progress bar and its TensorBoard
scalars (tags search/<name>)."""
from __future__ import annotations

import tensorflow as tf

__all__ = ["SHOWN", "scalar", "shown"]

# TensorBoard's scalar plugin tag, so tf.summary.write works without the tensorboard package
# (tf.summary.scalar needs it installed) and TensorBoard still plots the values as scalars.
_SCALAR_METADATA = tf.compat.v1.SummaryMetadata(
    plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars"))


def scalar(tag: str, value, step: int):
    """Writes one TensorBoard scalar to the default summary writer."""
    tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=_SCALAR_METADATA)


# The search's figures in its progress bar and in TensorBoard (tags search/<name>), in Keras'
# conventions: accuracies are fractions of the batch (0.9512), as in the bar of retraining. rho
# and the board's figures appear from the first distilling step on: during the warm-up rho is 0
# and no teacher is picked from the board, so they would mean nothing.
SHOWN = ("loss", "accuracy", "rho", "board_size", "board_best")


def shown(logs: dict) -> list:
    """(name, value) pairs of `SHOWN` for one step's logs: loss and accuracy, and from the first
    distilling step on rho and the board's size and best score (a fraction, as accuracy)."""
    return [(name, logs[name]) for name in (SHOWN if logs["distill"] else SHOWN[:2])]
