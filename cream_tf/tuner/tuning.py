"""`tune`: the whole train-from-scratch search, and the keras-tuner `Tuner` that runs it.

After every trial the ranked results are written atomically to ``workdir/tune_results.json``;
a rerun with the same settings resumes the keras-tuner project, other settings are refused.
"""
from __future__ import annotations

import dataclasses
import math
import os

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf

from cream_tf import arch as arch_lib
from cream_tf import flops
from cream_tf import internals
from cream_tf import atomic
from cream_tf.run_identity import RunIdentity
from cream_tf.space import Space
from cream_tf.tuner.hyperparameters import path_from_hyperparameters
from cream_tf.tuner.hypermodel import OBJECTIVE, CreamHyperModel
from cream_tf.tuner.oracles import MacsBayesianOptimizationOracle, MacsRandomSearchOracle
from cream_tf.tuner.range_sampler import resolve_macs_range

__all__ = ["TrialResult", "TuneResult", "CreamTuner", "tune", "ALGORITHMS", "RESULTS_FILE",
           "CONFIG_FILE", "PROJECT_NAME"]

RESULTS_FILE = "tune_results.json"
CONFIG_FILE = "tune_config.json"
PROJECT_NAME = "keras_tuner"
ALGORITHMS = ("random", "bayesian")


@dataclasses.dataclass(frozen=True)
class TrialResult:
    trial_id: str
    status: str
    path: tuple
    paper: str
    macs: int
    params: int
    val_accuracy: float | None

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["path"] = [list(s) for s in self.path]
        return d


@dataclasses.dataclass(frozen=True)
class TuneResult:
    """The best trial and every trial, ranked (completed by val_accuracy, then fewer MACs)."""

    best: TrialResult | None
    trials: tuple
    results_path: str


def _trial_results(oracle, space: Space) -> list:
    table = flops.cost_table(space)
    results = []
    for trial in oracle.trials.values():
        try:
            path = path_from_hyperparameters(trial.hyperparameters, space)
        except ValueError:
            continue
        acc = None
        if trial.status == "COMPLETED" and trial.metrics.exists(OBJECTIVE):
            acc = trial.metrics.get_best_value(OBJECTIVE)
            acc = None if acc is None or not math.isfinite(acc) else float(acc)
        results.append(TrialResult(str(trial.trial_id), str(trial.status), path,
                                   arch_lib.path_to_arch(path, space).to_paper(),
                                   table.path_macs(path), table.path_params(path), acc))
    results.sort(key=lambda r: (r.val_accuracy is None, -(r.val_accuracy or 0.0), r.macs,
                                r.trial_id))
    return results


def _space_json(space: Space) -> dict:
    return {"name": space.name, "layout": space.layout, "depth": list(space.depth),
            "resolution": space.resolution, "width": space.width,
            "num_classes": space.num_classes}


class CreamTuner(internals.TunerHooks, kt.Tuner):
    """keras-tuner's `Tuner` for a Cream space: writes the ranked results after every trial.

    The space comes complete from the oracle, so unlike the stock tuner it does not build a
    throw-away model at start-up to discover hyperparameters, and it imports tensorboard only for
    a TensorBoard callback (`internals.TunerHooks`).
    """

    def __init__(self, oracle, hypermodel: CreamHyperModel, results_path=None, extra_info=None,
                 **kwargs):
        self.results_path = results_path
        self.extra_info = dict(extra_info or {})
        super().__init__(oracle, hypermodel, **kwargs)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        if self.results_path:
            self.write_results()

    def results(self) -> TuneResult:
        ranked = _trial_results(self.oracle, self.hypermodel.space)
        best = ranked[0] if ranked and ranked[0].val_accuracy is not None else None
        return TuneResult(best, tuple(ranked), self.results_path)

    def write_results(self) -> TuneResult:
        result = self.results()
        space = self.hypermodel.space
        lo, hi = self.oracle.macs_range
        data = {
            "space": _space_json(space),
            "macs_range": [lo, hi],
            **self.extra_info,
            "best": result.best.to_json() if result.best else None,
            "trials": [dict(rank=i + 1, **r.to_json()) for i, r in enumerate(result.trials)],
        }
        # a rerun that trained nothing leaves the file as it is
        atomic.write_json_if_changed(self.results_path, data)
        return result


def _check_dataset(ds, space: Space, what: str) -> None:
    if not isinstance(ds, tf.data.Dataset):
        raise TypeError(f"{what} must be an unbatched tf.data.Dataset of (image, label), got "
                        f"{type(ds).__name__}")
    spec = ds.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise ValueError(f"{what} must yield (image, label) pairs, got elements {spec}")
    image, label = spec
    want = (space.resolution, space.resolution, 3)
    if image.shape.rank != 3:
        raise ValueError(f"{what} must be unbatched: images of shape {want}, got {image.shape}; "
                         f"tune batches them itself")
    if image.shape.is_fully_defined() and tuple(image.shape) != want:
        raise ValueError(f"{what} images are {tuple(image.shape)}; the space expects {want} "
                         f"(resize them, or set the space's resolution)")
    if label.shape.rank not in (0, None) and label.shape != (1,):
        raise ValueError(f"{what} labels must be scalar class indices, got shape {label.shape}")


def _batched(ds, batch_size, shuffle_seed=None, shuffle=False):
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), tf.cast(tf.reshape(y, []), tf.int32)),
                num_parallel_calls=tf.data.AUTOTUNE)
    if shuffle:
        # Bounded by memory (~256 MB of float32 images: 10,000 at 32x32, ~400 at 224x224); a
        # large dataset should arrive shuffled at the file level too.
        image_bytes = 4 * max(1, int(np.prod([d or 1 for d in ds.element_spec[0].shape])))
        buffer = int(min(10_000, max(8 * batch_size, 256 * 2 ** 20 // image_bytes)))
        ds = ds.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def tune(space: Space, train_ds, val_ds, workdir: str, max_trials: int = 20,
         epochs_per_trial: int = 5, batch_size: int = 128, macs_range=None,
         algorithm: str = "random", seed: int = 0, steps_per_epoch=None,
         optimizer: str = "adamw", learning_rate=None, weight_decay=None,
         label_smoothing: float = 0.1, dropout: float = 0.0, overwrite: bool = False,
         verbose: int = 1) -> TuneResult:
    """Searches `space` by training every proposed path from scratch (the baseline to one-shot).

    Args:
      space: the search space.
      train_ds, val_ds: unbatched datasets of (float32 HWC image at the space's resolution,
        int32 label), already normalised. `train_ds` is shuffled here; if it repeats forever,
        give `steps_per_epoch`.
      workdir: keras-tuner project under `workdir/keras_tuner`, the summary in
        `workdir/tune_results.json` (rewritten atomically after every trial).
      max_trials: trials in total, counting those of a resumed run.
      epochs_per_trial, batch_size: the standalone training of one trial.
      macs_range: (min, max) MACs; None for either end means unbounded. Checked against what the
        space can reach before anything runs.
      algorithm: 'random' or 'bayesian'.
      seed: seeds the oracle, shuffling and weight initialisation.
      overwrite: False resumes a project in `workdir` (finished trials are kept, a trial cut
        short is rerun); True starts over.

    Returns:
      `TuneResult`: the best trial (path, paper notation, MACs, val accuracy) and the ranked table.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; valid: {', '.join(ALGORITHMS)}")
    for name, v in (("max_trials", max_trials), ("epochs_per_trial", epochs_per_trial),
                    ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    _check_dataset(train_ds, space, "train_ds")
    _check_dataset(val_ds, space, "val_ds")
    macs_range = resolve_macs_range(space, macs_range)

    if int(val_ds.cardinality()) == tf.data.INFINITE_CARDINALITY:
        raise ValueError("val_ds repeats forever: pass a finite validation set")
    n = int(train_ds.cardinality())
    given_steps = steps_per_epoch is not None
    if given_steps and (isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int)
                        or steps_per_epoch < 1):
        raise ValueError(f"steps_per_epoch must be a positive int or None, got {steps_per_epoch!r}")
    if steps_per_epoch is None:
        if n == tf.data.INFINITE_CARDINALITY:
            raise ValueError("train_ds repeats forever: give steps_per_epoch")
        steps_per_epoch = math.ceil(n / batch_size) if n > 0 else None
    total_steps = steps_per_epoch * epochs_per_trial if steps_per_epoch else None

    os.makedirs(workdir, exist_ok=True)
    config = {"space": _space_json(space), "macs_range": list(macs_range),
              "algorithm": algorithm, "seed": seed, "epochs_per_trial": epochs_per_trial,
              "batch_size": batch_size, "steps_per_epoch": steps_per_epoch,
              "optimizer": optimizer, "learning_rate": learning_rate,
              "weight_decay": weight_decay, "label_smoothing": label_smoothing,
              "dropout": dropout}
    identity = RunIdentity(workdir, CONFIG_FILE, config, noun="tuning run",
                           remedy="use the same settings to resume, another workdir, or "
                                  "overwrite=True")
    if not overwrite and os.path.isdir(os.path.join(workdir, PROJECT_NAME)):
        identity.check()
    identity.write()  # a rerun of the same run leaves the file as it is
    results_path = os.path.join(workdir, RESULTS_FILE)
    if overwrite and os.path.exists(results_path):
        os.remove(results_path)  # a fresh run must not show the old run's results

    hypermodel = CreamHyperModel(space, dropout=dropout, label_smoothing=label_smoothing,
                                 optimizer=optimizer, learning_rate=learning_rate,
                                 weight_decay=weight_decay, total_steps=total_steps)
    oracle_cls = {"random": MacsRandomSearchOracle,
                  "bayesian": MacsBayesianOptimizationOracle}[algorithm]
    # keras-tuner treats seed 0 as "no seed"; shift so that every int is a seed.
    oracle = oracle_cls(space, macs_range, max_trials=max_trials, seed=seed + 1)
    tuner = CreamTuner(oracle, hypermodel, results_path=results_path,
                       extra_info={"algorithm": algorithm, "max_trials": max_trials,
                                   "epochs_per_trial": epochs_per_trial},
                       directory=workdir, project_name=PROJECT_NAME, overwrite=overwrite)

    keras.utils.set_random_seed(seed)
    train = _batched(train_ds, batch_size, shuffle_seed=seed, shuffle=True)
    val = _batched(val_ds, batch_size)
    # shuffle=False: `train` is shuffled above (Keras ignores its own flag for datasets, loudly).
    fit_kwargs = {"validation_data": val, "epochs": epochs_per_trial, "verbose": verbose,
                  "shuffle": False}
    if given_steps:
        fit_kwargs["steps_per_epoch"] = steps_per_epoch
    tuner.search(train, **fit_kwargs)
    return tuner.write_results()
