"""The hypermodel: builds, compiles and trains the child network a proposal encodes.

Each trial is trained from scratch, briefly; the optimizer recipe is chosen for that.
"""
from __future__ import annotations

import keras
import keras_tuner as kt
import numpy as np

from cream_tf import child
from cream_tf import flops
from cream_tf.space import Space
from cream_tf.tuner.hyperparameters import path_from_hyperparameters
from cream_tf.tuner.loss import make_loss

__all__ = ["OBJECTIVE", "OPTIMIZERS", "make_optimizer", "CreamHyperModel"]

OBJECTIVE = "val_accuracy"  # what a trial reports and the oracles maximise
OPTIMIZERS = ("adamw", "sgd")


def make_optimizer(name: str = "adamw", learning_rate=None, weight_decay=None,
                   total_steps=None):
    """An optimizer for short from-scratch trials, with cosine decay when `total_steps` is known.

    'adamw' (default; lr 2e-3, weight decay 0.05) forgives an untuned learning rate, which matters
    when each trial gets a few epochs. 'sgd' (Nesterov momentum 0.9, lr 0.05, decay 4e-5) is the
    classic ImageNet recipe, better for long runs.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    lr = learning_rate if learning_rate is not None else {"adamw": 2e-3, "sgd": 0.05}[name]
    wd = weight_decay if weight_decay is not None else {"adamw": 0.05, "sgd": 4e-5}[name]
    if total_steps:
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=int(total_steps))
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=wd)
    return keras.optimizers.SGD(learning_rate=lr, momentum=0.9, nesterov=True, weight_decay=wd)


class CreamHyperModel(kt.HyperModel):
    """Builds the child network a proposal encodes, compiled for standalone training.

    `build(hp)` returns logits, a sparse cross-entropy from logits (with `label_smoothing`) and
    an `accuracy` metric; it records the path, MACs and parameters of the last build in
    `last_path`, `last_macs`, `last_params`. `fit` trains and returns the trial's metrics: the
    best `val_accuracy` over the epochs, with `macs` and `params` reported beside it.

    Args:
      space: the space whose paths `hp` encodes.
      dropout: dropout before the classifier.
      label_smoothing: in [0, 1).
      optimizer: 'adamw' or 'sgd' (see `make_optimizer`); learning_rate / weight_decay override.
      total_steps: steps of one trial, for cosine learning-rate decay (None: constant rate).
    """

    def __init__(self, space: Space, dropout: float = 0.0, label_smoothing: float = 0.1,
                 optimizer: str = "adamw", learning_rate=None, weight_decay=None,
                 total_steps=None, name=None):
        super().__init__(name=name, tunable=False)
        self.space = space
        self.dropout = dropout
        self.label_smoothing = label_smoothing
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.total_steps = total_steps
        make_loss(label_smoothing)  # validate now, not in the first trial
        make_optimizer(optimizer, learning_rate, weight_decay)
        self.last_path = self.last_macs = self.last_params = None

    def build(self, hp):
        path = path_from_hyperparameters(hp, self.space)
        model = child.build(path, self.space, dropout=self.dropout)
        model.compile(
            optimizer=make_optimizer(self.optimizer, self.learning_rate, self.weight_decay,
                                     self.total_steps),
            loss=make_loss(self.label_smoothing),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
        table = flops.cost_table(self.space)
        self.last_path = path
        self.last_macs = table.path_macs(path)
        self.last_params = table.path_params(path)
        return model

    def fit(self, hp, model, *args, **kwargs):
        history = model.fit(*args, **kwargs)
        curve = history.history.get(OBJECTIVE)
        if not curve:
            raise kt.errors.FatalValueError(
                f"training reported no {OBJECTIVE!r}: pass validation_data to the search")
        best = int(np.nanargmax(curve)) if not np.all(np.isnan(curve)) else len(curve) - 1
        path = path_from_hyperparameters(hp, self.space)
        table = flops.cost_table(self.space)
        metrics = {OBJECTIVE: float(curve[best]),
                   "macs": float(table.path_macs(path)),
                   "params": float(table.path_params(path)),
                   "best_epoch": float(best)}
        for key in ("val_loss", "loss", "accuracy"):
            if key in history.history:
                metrics[key] = float(history.history[key][best])
        return metrics
