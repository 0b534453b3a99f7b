"""Retraining a found architecture from scratch with `model.fit`.

The recipe and its defaults: docs/method.md, "Selection and retraining".

The release recipe, scaled by `RetrainConfig`: TF-style RMSprop (lr 0.064 per 1024 examples,
decay 0.9, momentum 0.9, epsilon 1e-3 inside the square root, accumulators starting at one),
L2 weight decay 1e-5 on conv/dense kernels only, linear warm-up then cosine, label smoothing 0.1,
dropout 0.2, RandAugment(2, 9) + random erasing 0.2, and a weight EMA whose accuracy is the one
reported.

Files in `workdir` (a rerun with the same workdir resumes; nothing is left half-written):
  backup/        `keras.callbacks.BackupAndRestore` state (weights, optimizer incl. EMA, epoch);
                 deleted when training finishes.
  best.keras     the EMA model of the epoch with the best `val_accuracy` (+ best.keras.json).
  final.keras    the EMA model after the last epoch.
  history.json   per-epoch logs over all runs.
  result.json    accuracies of the finished run; while it and final.keras exist, `retrain`
                 returns them instead of training again (pass overwrite=True to retrain anew).
Both .keras files hold built-in layers only and no optimizer: `keras.saving.load_model` reads
them without cream_tf.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from cream_tf.cli import atomic_write
from cream_tf import child
from cream_tf import data as data_lib
from cream_tf import internals
from cream_tf import safety
from cream_tf.errors import is_count, require
from cream_tf.space import Space

__all__ = ["RetrainConfig", "RetrainResult", "RMSpropTF", "BestModelCheckpoint", "retrain",
           "learning_rate_schedule", "save_model_atomic", "sync_replica_statistics",
           "SyncReplicaStatistics", "EmaBatchNormStatistics", "AtomicBackupAndRestore"]


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


@dataclasses.dataclass
class RetrainResult:
    """What `retrain` returns. Accuracies are fractions in [0, 1], of the EMA weights when the
    EMA is on. `test_accuracy` is None when the dataset has no test split."""

    model: keras.Model
    history: dict
    val_accuracy: float
    test_accuracy: Optional[float]
    best_val_accuracy: Optional[float]
    best_path: str
    final_path: str


# ------------------------------------------------------------------------------------------
# Optimizer and schedule
# ------------------------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package="cream_tf")
class RMSpropTF(keras.optimizers.Optimizer):
    """RMSprop as TensorFlow 1 and the release's timm `RMSpropTF` define it.

    Differs from `keras.optimizers.RMSprop` in two ways that matter at epsilon 1e-3: the mean
    square starts at one (not zero), and epsilon sits inside the square root:
        ms  = rho * ms + (1 - rho) * g^2
        mom = momentum * mom + lr * g / sqrt(ms + epsilon)
        w  -= mom
    `l2` adds l2 * w to the gradient of every variable with more than one dimension (conv and
    dense kernels), the release's "weight decay on weights" (not decoupled). Keras' `use_ema`
    and `ema_momentum` work as for built-in optimizers.
    """

    def __init__(self, learning_rate=0.064, rho=0.9, momentum=0.9, epsilon=1e-3, l2=0.0,
                 name="rmsprop_tf", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.rho = rho
        self.momentum = momentum
        self.epsilon = epsilon
        self.l2 = l2

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._mean_squares = [self.add_variable_from_reference(v, "mean_square", "ones")
                              for v in var_list]
        self._momenta = [self.add_variable_from_reference(v, "momentum") for v in var_list]

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.l2 and len(variable.shape) > 1:
            gradient = ops.add(gradient, ops.multiply(self.l2, variable))
        i = internals.optimizer_variable_index(self, variable)
        ms, mom = self._mean_squares[i], self._momenta[i]
        self.assign(ms, ops.add(ops.multiply(self.rho, ms),
                                ops.multiply(1.0 - self.rho, ops.square(gradient))))
        step = ops.divide(ops.multiply(lr, gradient), ops.sqrt(ops.add(ms, self.epsilon)))
        self.assign(mom, ops.add(ops.multiply(self.momentum, mom), step))
        self.assign_sub(variable, mom)

    def get_config(self):
        config = super().get_config()
        config.update(rho=self.rho, momentum=self.momentum, epsilon=self.epsilon, l2=self.l2)
        return config


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


# ------------------------------------------------------------------------------------------
# Callbacks and saving
# ------------------------------------------------------------------------------------------

def save_model_atomic(model: keras.Model, path: str) -> str:
    """Saves a clean copy of `model` (architecture + current weights, no optimizer) as a .keras
    file: written under a temporary name in the same directory, then renamed over `path`."""
    if not path.endswith(".keras"):
        raise ValueError(f"a .keras path is expected, got {path!r}")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # from_config, not clone_model: clone_model also compiles the copy, which would store the
    # optimizer (a cream_tf class) in the file.
    clean = model.__class__.from_config(model.get_config())
    clean.set_weights(model.get_weights())
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}.keras")
    try:
        clean.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


class BestModelCheckpoint(keras.callbacks.Callback):
    """Keeps the model of the best epoch by `monitor` as a clean .keras file, atomically.

    Like `keras.callbacks.ModelCheckpoint(save_best_only=True)`, but the file holds no optimizer
    (so it loads without cream_tf), a crash never leaves it half-written, and the best score is
    kept in `<path>.json`, so a resumed run does not overwrite a better model from before the
    crash. Place it after `SwapEMAWeights(swap_on_epoch=True)` to save EMA weights.
    """

    def __init__(self, path: str, monitor: str = "val_accuracy", mode: str = "max"):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.path, self.monitor, self.mode = path, monitor, mode
        self.best = None
        self.best_epoch = None

    @property
    def meta_path(self) -> str:
        return self.path + ".json"

    def on_train_begin(self, logs=None):
        if os.path.exists(self.meta_path) and os.path.exists(self.path):
            with open(self.meta_path) as f:
                meta = json.load(f)
            self.best, self.best_epoch = meta[self.monitor], meta["epoch"]

    def _better(self, value) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise ValueError(f"BestModelCheckpoint: metric {self.monitor!r} is not in the logs "
                             f"({', '.join(logs or {})}); pass validation data to fit")
        value = float(value)
        if self._better(value):
            save_model_atomic(self.model, self.path)
            self.best, self.best_epoch = value, epoch + 1
            atomic_write(self.meta_path, json.dumps(
                {self.monitor: value, "epoch": epoch + 1}))


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


class AtomicBackupAndRestore(internals.BackupHook, keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` whose files are written whole or not at all (temp name + os.replace),
    and which saves and raises `safety.Interrupted` when SIGINT/SIGTERM arrived (checked after
    every batch; see `safety.catch_signals`). A run stopped mid-epoch resumes at the start of that
    epoch from the weights it had when stopped (Keras resumes per epoch)."""

    def save_backup(self):
        """Keras' backup (the files Keras restores from, `internals.backup_files`), atomic."""
        files = internals.backup_files(self)
        os.makedirs(self.backup_dir, exist_ok=True)
        if self.double_checkpoint and os.path.exists(files.weights):
            _copy_atomic(files.weights, files.prev_weights)
        if self.double_checkpoint and os.path.exists(files.metadata):
            _copy_atomic(files.metadata, files.prev_metadata)
        tmp = os.path.join(self.backup_dir, f".tmp{os.getpid()}.weights.h5")
        try:
            self.model.save_weights(tmp, overwrite=True)
            os.replace(tmp, files.weights)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        epoch, batch = internals.backup_position(self)
        atomic_write(files.metadata, json.dumps({"epoch": epoch, "batch": batch}))

    def resumed_epoch(self) -> int:
        """The epoch a fit with this callback starts at: the backup's, or 0 without one."""
        path = internals.backup_files(self).metadata
        if os.path.exists(path):
            with open(path) as f:
                return int(json.load(f).get("epoch", 0))
        return 0

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        signum = safety.requested()
        if signum is not None:
            self.save_backup()
            epoch, _ = internals.backup_position(self)
            raise safety.Interrupted(
                signum, f"retraining interrupted by {safety.signal_name(signum)} in epoch "
                        f"{epoch + 1}; backup {self.backup_dir} written. Run the same command "
                        f"again to resume (from the start of that epoch)")


def _copy_atomic(src: str, dst: str):
    import shutil

    tmp = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.tmp{os.getpid()}")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class _HistoryLog(keras.callbacks.Callback):
    """Per-epoch logs in a JSON file that survives restarts (fit's History does not)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.epochs = []

    def on_train_begin(self, logs=None):
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.epochs = json.load(f)

    def on_epoch_begin(self, epoch, logs=None):
        # The first epoch of a fit is the one a backup resumed at: later entries are replaced.
        self.epochs = [e for e in self.epochs if e["epoch"] <= epoch]

    def on_epoch_end(self, epoch, logs=None):
        entry = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        self.epochs = [e for e in self.epochs if e["epoch"] != epoch + 1] + [entry]
        atomic_write(self.path, json.dumps(self.epochs, indent=1))

    def as_dict(self) -> dict:
        keys = sorted({k for e in self.epochs for k in e})
        return {k: [e.get(k) for e in self.epochs] for k in keys}


# ------------------------------------------------------------------------------------------
# Retraining
# ------------------------------------------------------------------------------------------

def retrain(architecture, space: Space, splits: data_lib.Splits, info: data_lib.DatasetInfo,
            workdir: str, config: RetrainConfig = RetrainConfig(),
            strategy: Optional[tf.distribute.Strategy] = None,
            callbacks: Sequence[keras.callbacks.Callback] = (),
            overwrite: bool = False) -> RetrainResult:
    """Trains `architecture` of `space` from scratch and returns the EMA model and its accuracy.

    Args:
      architecture: an `Arch`, a path or any architecture string of `space`.
      space: gives resolution, width and classes (must match `info.num_classes`).
      splits, info: from `data.load`; trains on `train`, selects the best epoch on `val`,
        reports `test`.
      workdir: where backup/, best.keras, final.keras and history.json go; rerunning with the
        same workdir after a crash resumes from the last finished epoch.
      config: `RetrainConfig`.
      strategy: a `tf.distribute.Strategy` (default: the current one); `config.batch_size` is
        global.
      callbacks: extra Keras callbacks, run after the built-in ones.
      overwrite: retrain even when `workdir` holds a finished run. Without it a finished run is
        returned as it is (its model loaded from final.keras, uncompiled).
    """
    if space.num_classes != info.num_classes:
        raise ValueError(f"space has {space.num_classes} classes but dataset {info.spec!r} has "
                         f"{info.num_classes}; build the space with num_classes="
                         f"{info.num_classes}")
    strategy = strategy or tf.distribute.get_strategy()
    os.makedirs(workdir, exist_ok=True)
    best_path = os.path.join(workdir, "best.keras")
    final_path = os.path.join(workdir, "final.keras")
    result_path = os.path.join(workdir, "result.json")
    history = _HistoryLog(os.path.join(workdir, "history.json"))
    if not overwrite and os.path.exists(result_path) and os.path.exists(final_path):
        with open(result_path) as f:
            stored = json.load(f)
        if os.path.exists(history.path):
            with open(history.path) as f:
                history.epochs = json.load(f)
        print(f"cream_tf.retrain: {workdir} holds a finished run (val accuracy "
              f"{stored['val_accuracy']:.4f}); returning it. Pass overwrite=True to retrain.")
        return RetrainResult(model=keras.saving.load_model(final_path), history=history.as_dict(),
                             val_accuracy=stored["val_accuracy"],
                             test_accuracy=stored["test_accuracy"],
                             best_val_accuracy=stored["best_val_accuracy"],
                             best_path=best_path, final_path=final_path)
    if overwrite:
        for path in (result_path, best_path + ".json", history.path):
            if os.path.exists(path):
                os.remove(path)
    resolution = space.resolution
    n_train = info.split_sizes.get("train")
    steps = config.steps_per_epoch
    if steps is None:
        if not n_train:
            raise ValueError(f"the size of the train split of {info.spec!r} is unknown; set "
                             f"RetrainConfig.steps_per_epoch")
        steps = max(1, n_train // config.batch_size)
    if config.ema_decay and 1.0 / (1.0 - config.ema_decay) > config.epochs * steps / 10:
        print(f"cream_tf.retrain: warning: ema_decay {config.ema_decay} averages over "
              f"~{1 / (1 - config.ema_decay):.0f} steps but training has only "
              f"{config.epochs * steps}; the EMA model will lag far behind (use a smaller "
              f"ema_decay for short runs)")

    backup = AtomicBackupAndRestore(os.path.join(workdir, "backup"), double_checkpoint=True)
    start_epoch = backup.resumed_epoch()
    augment = config.augment or data_lib.Augment.retrain(info)
    # A resumed run sees a fresh data order rather than replaying the first epochs' batches.
    train_ds = data_lib.train_pipeline(
        splits.train, resolution, batch_size=config.batch_size, augment=augment,
        seed=config.seed + 1_000_003 * start_epoch, shuffle_buffer=info.shuffle_buffer,
        one_hot=info.num_classes)
    eval_batch = max(config.batch_size, strategy.num_replicas_in_sync)
    val_ds = data_lib.eval_pipeline(splits.val, resolution, batch_size=eval_batch,
                                    crop_pct=info.eval_crop_pct, cache=True,
                                    one_hot=info.num_classes)

    with strategy.scope():
        model = child.build(architecture, space, dropout=config.dropout, name="cream_retrained")
        optimizer = RMSpropTF(
            learning_rate=learning_rate_schedule(config, steps), rho=config.rho,
            momentum=config.momentum, epsilon=config.epsilon, l2=config.weight_decay,
            use_ema=config.ema_decay > 0, ema_momentum=config.ema_decay or 0.99)
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.CategoricalCrossentropy(from_logits=True,
                                                      label_smoothing=config.label_smoothing),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])

    checkpoint = BestModelCheckpoint(best_path, monitor="val_accuracy")
    # Order matters: the backup is written before the EMA swap (raw weights + EMA in the
    # optimizer), the checkpoint after it (EMA weights in the model).
    cbs = [SyncReplicaStatistics(strategy), backup]
    if config.ema_decay:
        cbs.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
        if config.ema_batch_norm:
            cbs.append(EmaBatchNormStatistics(config.ema_decay, every=max(1, steps // 50)))
    cbs += [checkpoint, history, *callbacks]

    with safety.catch_signals():
        model.fit(train_ds, epochs=config.epochs, steps_per_epoch=steps, validation_data=val_ds,
                  callbacks=cbs, verbose=config.verbose)
    # fit ends with optimizer.finalize_variable_values: the model now holds the EMA weights.
    sync_replica_statistics(model, strategy)
    save_model_atomic(model, final_path)
    val_accuracy = float(model.evaluate(val_ds, verbose=0, return_dict=True)["accuracy"])
    test_accuracy = None
    if splits.test is not None:
        test_ds = data_lib.eval_pipeline(splits.test, resolution, batch_size=eval_batch,
                                         crop_pct=info.eval_crop_pct, one_hot=info.num_classes)
        test_accuracy = float(model.evaluate(test_ds, verbose=0, return_dict=True)["accuracy"])
    atomic_write(result_path, json.dumps(
        {"val_accuracy": val_accuracy, "test_accuracy": test_accuracy,
         "best_val_accuracy": checkpoint.best, "best_epoch": checkpoint.best_epoch,
         "epochs": config.epochs, "config": dataclasses.asdict(config)}, indent=1, default=str))
    return RetrainResult(model=model, history=history.as_dict(), val_accuracy=val_accuracy,
                         test_accuracy=test_accuracy, best_val_accuracy=checkpoint.best,
                         best_path=best_path, final_path=final_path)
