"""Batch-norm moving statistics, which neither Keras' replicas nor its weight EMA look after:
averaged over replicas, and averaged over time for the EMA model."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

__all__ = ["sync_replica_statistics", "SyncReplicaStatistics", "EmaBatchNormStatistics"]


def sync_replica_statistics(model: keras.Model, strategy: tf.distribute.Strategy) -> None:
    """Sets every non-trainable variable (BN moving mean/variance) to its mean over replicas.

    Under MirroredStrategy Keras 3 keeps one copy of the BN statistics per replica and never
    reconciles them: it creates the moving mean and variance as mirrored variables with
    aggregation NONE, so each replica writes its own copy and the copies drift apart. Evaluation
    under the strategy would then mix the copies while a saved model keeps replica 0's.
    Averaging them makes both see the same, better estimate.
    """
    if strategy.num_replicas_in_sync == 1:
        return
    for var in model.non_trainable_variables:
        inner = getattr(var, "value", var)
        local = strategy.experimental_local_results(inner)
        if len(local) > 1:
            var.assign(tf.add_n([tf.convert_to_tensor(v) for v in local]) / len(local))


class SyncReplicaStatistics(keras.callbacks.Callback):
    """Calls `sync_replica_statistics` before every evaluation and at every epoch end."""

    def __init__(self, strategy: tf.distribute.Strategy):
        super().__init__()
        self.strategy = strategy

    def on_test_begin(self, logs=None):
        sync_replica_statistics(self.model, self.strategy)

    def on_epoch_end(self, epoch, logs=None):
        sync_replica_statistics(self.model, self.strategy)


class EmaBatchNormStatistics(keras.callbacks.Callback):
    """Keeps an EMA of the BN moving statistics and puts it in wherever the weight EMA is used.

    Keras' optimizer EMA (`use_ema`) averages trainable variables only, so evaluating the EMA
    weights would use BN statistics of the raw weights, which can be far off while the weights
    still move quickly (timm's ModelEma averages both). This callback averages every
    non-trainable variable, reading it every `every` steps with momentum `momentum ** every`, and
    mirrors `keras.callbacks.SwapEMAWeights(swap_on_epoch=True)`: averaged statistics are in the
    model during evaluation and from each epoch end to the next epoch's start, and stay in after
    the last epoch. Place it right after SwapEMAWeights. A resumed run restarts the average from
    the restored statistics.
    """

    def __init__(self, momentum: float, every: int = 1):
        super().__init__()
        if not 0 <= momentum < 1 or every < 1:
            raise ValueError(f"need 0 <= momentum < 1 and every >= 1, got {momentum}, {every}")
        self.momentum, self.every = momentum, every
        self.average = None
        self._raw = None
        self._steps = 0

    def _variables(self):
        return self.model.non_trainable_variables

    def on_train_begin(self, logs=None):
        self.average = [np.array(v.numpy(), np.float64) for v in self._variables()]
        self._raw, self._steps = None, 0

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        if self._steps % self.every == 0:
            m = self.momentum ** self.every
            for avg, var in zip(self.average, self._variables()):
                avg *= m
                avg += (1.0 - m) * var.numpy()

    def _swap_in(self):
        if self._raw is None:
            self._raw = [v.numpy() for v in self._variables()]
            for var, avg in zip(self._variables(), self.average):
                var.assign(avg.astype(var.dtype))

    def _swap_out(self):
        if self._raw is not None:
            for var, raw in zip(self._variables(), self._raw):
                var.assign(raw)
            self._raw = None

    def on_test_begin(self, logs=None):
        self._swap_in()

    def on_test_end(self, logs=None):
        self._swap_out()

    def on_epoch_begin(self, epoch, logs=None):
        self._swap_out()

    def on_epoch_end(self, epoch, logs=None):
        self._swap_in()
