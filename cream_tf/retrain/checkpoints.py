"""What a retraining run keeps in its workdir, each file written whole or not at all
(`cream_tf.atomic`): the best model, the resumable backup and the per-epoch history."""
from __future__ import annotations

import json
import os

import keras

from cream_tf import atomic
from cream_tf import internals
from cream_tf import safety

__all__ = ["save_model_atomic", "BestModelCheckpoint", "AtomicBackupAndRestore", "HistoryLog"]


def save_model_atomic(model: keras.Model, path: str) -> str:
    """Saves a clean copy of `model` (architecture + current weights, no optimizer) as a .keras
    file, written whole or not at all."""
    if not path.endswith(".keras"):
        raise ValueError(f"a .keras path is expected, got {path!r}")
    # from_config, not clone_model: clone_model also compiles the copy, which would store the
    # optimizer (a cream_tf class) in the file.
    clean = model.__class__.from_config(model.get_config())
    clean.set_weights(model.get_weights())
    with atomic.file(path) as tmp:
        clean.save(tmp)
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
            atomic.write_json(self.meta_path, {self.monitor: value, "epoch": epoch + 1},
                              indent=None)


class AtomicBackupAndRestore(internals.BackupHook, keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` whose files are written whole or not at all (`cream_tf.atomic`),
    and which saves and raises `safety.Interrupted` when SIGINT/SIGTERM arrived (checked after
    every batch; see `safety.catch_signals`). A run stopped mid-epoch resumes at the start of that
    epoch from the weights it had when stopped (Keras resumes per epoch)."""

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self._epoch_begun = epoch

    def _position(self) -> tuple:
        """(epoch, batch) to record: Keras' counters, but never before the epoch in progress.
        Keras restores its epoch counter only at the end of the first epoch after a resume, so a
        stop inside that epoch would otherwise record epoch 0 and throw the finished ones away."""
        epoch, batch = internals.backup_position(self)
        return max(epoch, getattr(self, "_epoch_begun", 0)), batch

    def save_backup(self):
        """Keras' backup (the files Keras restores from, `internals.backup_files`), atomic."""
        files = internals.backup_files(self)
        if self.double_checkpoint and os.path.exists(files.weights):
            atomic.copy(files.weights, files.prev_weights)
        if self.double_checkpoint and os.path.exists(files.metadata):
            atomic.copy(files.metadata, files.prev_metadata)
        with atomic.file(files.weights) as tmp:
            self.model.save_weights(tmp, overwrite=True)
        epoch, batch = self._position()
        atomic.write_json(files.metadata, {"epoch": epoch, "batch": batch}, indent=None)

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
            epoch, _ = self._position()
            raise safety.Interrupted(
                signum, f"retraining interrupted by {safety.signal_name(signum)} in epoch "
                        f"{epoch + 1}; backup {self.backup_dir} written. Run the same command "
                        f"again to resume (from the start of that epoch)")


class HistoryLog(keras.callbacks.Callback):
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
        atomic.write_json(self.path, self.epochs, indent=1)

    def as_dict(self) -> dict:
        keys = sorted({k for e in self.epochs for k in e})
        return {k: [e.get(k) for e in self.epochs] for k in keys}
