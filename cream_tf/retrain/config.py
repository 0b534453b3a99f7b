"""`RetrainConfig`: the retraining recipe's hyper-parameters, checked when the config is made so a
bad value fails before any data is read."""
from __future__ import annotations

import dataclasses
from typing import Optional

from cream_tf import data as data_lib
from cream_tf.errors import is_count, require

__all__ = ["RetrainConfig"]


@dataclasses.dataclass(frozen=True)
class RetrainConfig:
    """Retraining hyper-parameters; defaults are the release's ImageNet recipe.

    Attributes:
      epochs: training epochs (release: 500).
      batch_size: global batch size over all replicas.
      lr: peak learning rate per 1024 examples; the rate used is lr * batch_size / 1024.
      rho, momentum, epsilon: TF-style RMSprop.
      weight_decay: L2 on conv and dense kernels (not on biases or BN), added to the gradient.
      warmup_epochs: linear warm-up from `warmup_lr`, then cosine decay to 0.
      label_smoothing, dropout: as named.
      ema_decay: weight EMA momentum per step; 0 disables the EMA. The EMA
        needs several times 1 / (1 - ema_decay) steps to forget its start: 0.9999 suits 500
        ImageNet epochs; a run of a few hundred steps wants about 0.9.
      ema_batch_norm: also average the BN moving statistics (`EmaBatchNormStatistics`), as timm's
        ModelEma does. Off by default: BN statistics are already moving averages, and averaging
        them again made the EMA model worse in short runs.
      steps_per_epoch: default: train examples // batch_size.
      augment: `data.Augment`; default `Augment.retrain(info)` (RandAugment 2 ops magnitude 9,
        random erasing 0.2).
      seed: data order and augmentation (weights are initialised by Keras' global seed; call
        `keras.utils.set_random_seed` for fully repeatable runs).
      verbose: `fit` verbosity: 1 progress bar, 2 one line per epoch, 0 silent.
    """

    epochs: int = 500
    batch_size: int = 1024
    lr: float = 0.064
    rho: float = 0.9
    momentum: float = 0.9
    epsilon: float = 1e-3
    weight_decay: float = 1e-5
    warmup_epochs: float = 3.0
    warmup_lr: float = 1e-6
    label_smoothing: float = 0.1
    dropout: float = 0.2
    ema_decay: float = 0.9999
    ema_batch_norm: bool = False
    steps_per_epoch: Optional[int] = None
    augment: Optional[data_lib.Augment] = None
    seed: int = 0
    verbose: int = 1

    def __post_init__(self):
        def need(field, ok, requirement):
            require("RetrainConfig", field, getattr(self, field), ok, requirement)

        need("epochs", is_count(self.epochs), "an int >= 1")
        need("batch_size", is_count(self.batch_size), "an int >= 1")
        need("lr", self.lr > 0, "> 0")
        need("rho", 0 <= self.rho < 1, "in [0, 1)")
        need("momentum", 0 <= self.momentum < 1, "in [0, 1)")
        need("epsilon", self.epsilon > 0, "> 0")
        need("weight_decay", self.weight_decay >= 0, ">= 0")
        need("warmup_epochs", 0 <= self.warmup_epochs < self.epochs,
             lambda name: f"in [0, {name('epochs')}={self.epochs})")
        need("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)")
        need("dropout", 0 <= self.dropout < 1, "in [0, 1)")
        need("ema_decay", 0 <= self.ema_decay < 1, "in [0, 1) (0 disables the EMA)")
        need("steps_per_epoch", self.steps_per_epoch is None or is_count(self.steps_per_epoch),
             "None or an int >= 1")

    @property
    def scaled_lr(self) -> float:
        """The peak rate for this batch size: lr * batch_size / 1024 (linear scaling)."""
        return self.lr * self.batch_size / 1024.0

    def replace(self, **changes) -> "RetrainConfig":
        return dataclasses.replace(self, **changes)
