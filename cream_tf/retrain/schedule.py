"""The learning rate over the steps of a retraining run."""
from __future__ import annotations

import keras

from cream_tf.retrain.config import RetrainConfig

__all__ = ["learning_rate_schedule"]


def learning_rate_schedule(config: RetrainConfig, steps_per_epoch: int):
    """Linear warm-up from `warmup_lr` to the scaled peak, then cosine decay to 0, per step."""
    total = config.epochs * steps_per_epoch
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    peak = config.scaled_lr
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(peak, decay_steps=total)
    return keras.optimizers.schedules.CosineDecay(
        config.warmup_lr, decay_steps=max(1, total - warmup), warmup_target=peak,
        warmup_steps=warmup)
