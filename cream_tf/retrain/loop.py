"""`retrain`: one run of `model.fit` with the recipe's optimizer, schedule and callbacks, resumable
from its workdir (the files: `cream_tf.retrain`)."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence

import keras
import tensorflow as tf

from cream_tf import arch as arch_lib
from cream_tf import atomic
from cream_tf import child
from cream_tf import data as data_lib
from cream_tf import safety
from cream_tf.retrain.bn_statistics import (EmaBatchNormStatistics, SyncReplicaStatistics,
                                            sync_replica_statistics)
from cream_tf.retrain.checkpoints import (AtomicBackupAndRestore, BestModelCheckpoint, HistoryLog,
                                          save_model_atomic)
from cream_tf.retrain.config import RetrainConfig
from cream_tf.retrain.optimizer import RMSpropTF
from cream_tf.retrain.schedule import learning_rate_schedule
from cream_tf.run_identity import RunIdentity
from cream_tf.space import Space

__all__ = ["RetrainResult", "retrain", "retrain_identity", "IDENTITY_FILE"]

IDENTITY_FILE = "run.json"


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


def retrain_identity(architecture, space: Space, workdir: str) -> RunIdentity:
    """The network a retraining workdir holds (`run.json`): a finished run or a backup of
    another architecture must not be returned or resumed as this one's."""
    if isinstance(architecture, (arch_lib.Arch, str)):
        arch = arch_lib.parse(architecture, space)
    else:
        arch = arch_lib.path_to_arch(architecture, space)
    return RunIdentity(
        workdir, IDENTITY_FILE,
        {"architecture": arch.to_paper(), "layout": space.layout,
         "resolution": space.resolution, "width": space.width,
         "num_classes": space.num_classes},
        noun="retraining", remedy="retrain in a new workdir, or pass overwrite=True to "
                                  "replace it")


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
    history = HistoryLog(os.path.join(workdir, "history.json"))
    identity = retrain_identity(architecture, space, workdir)
    if not overwrite:
        identity.check()
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
    identity.write()
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
    atomic.write_json(result_path,
                      {"val_accuracy": val_accuracy, "test_accuracy": test_accuracy,
                       "best_val_accuracy": checkpoint.best, "best_epoch": checkpoint.best_epoch,
                       "epochs": config.epochs, "config": dataclasses.asdict(config)},
                      indent=1, default=str)
    return RetrainResult(model=model, history=history.as_dict(), val_accuracy=val_accuracy,
                         test_accuracy=test_accuracy, best_val_accuracy=checkpoint.best,
                         best_path=best_path, final_path=final_path)
