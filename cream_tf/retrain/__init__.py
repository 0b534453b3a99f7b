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
  run.json       the network this workdir retrains (architecture and input settings): a rerun
                 with another one is refused (`cream_tf.run_identity`), not resumed.
Both .keras files hold built-in layers only and no optimizer: `keras.saving.load_model` reads
them without cream_tf.

Where things live: `config` (RetrainConfig), `optimizer` (RMSpropTF), `schedule` (the learning
rate), `bn_statistics` (BN statistics across replicas and for the EMA), `checkpoints` (the files
above), `loop` (`retrain` itself).
"""
from cream_tf.retrain.bn_statistics import (EmaBatchNormStatistics, SyncReplicaStatistics,
                                            sync_replica_statistics)
from cream_tf.retrain.checkpoints import (AtomicBackupAndRestore, BestModelCheckpoint,
                                          save_model_atomic)
from cream_tf.retrain.config import RetrainConfig
from cream_tf.retrain.loop import RetrainResult, retrain, retrain_identity
from cream_tf.retrain.optimizer import RMSpropTF
from cream_tf.retrain.schedule import learning_rate_schedule

__all__ = ["RetrainConfig", "RetrainResult", "RMSpropTF", "BestModelCheckpoint", "retrain",
           "learning_rate_schedule", "save_model_atomic", "sync_replica_statistics",
           "SyncReplicaStatistics", "EmaBatchNormStatistics", "AtomicBackupAndRestore",
           "retrain_identity"]
