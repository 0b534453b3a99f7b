"""A train-from-scratch baseline for Cream: search a space with keras-tuner under a MACs budget.

Cream's one-shot search shares weights across paths; this module is the honest baseline it is
compared with: every proposed path is built as a standalone child network, trained briefly and
scored on held-out data. It reuses keras-tuner's machinery (persistence, resuming, random search,
Bayesian optimisation) and adds what a NAS space needs:

* the space as `keras_tuner.HyperParameters`: one `Choice` per searchable layer, named
  ``stage{s}_layer{i}`` (1-based), whose values are the op names (``ir_k5_e6``, ``res_k3``,
  ``conv_k1``, ``skip``) allowed there; `path_from_hyperparameters` and `hyperparameters_from_path`
  convert both ways;
* `CreamHyperModel`: builds and compiles the child of a proposal and reports its MACs as a metric;
* oracles that only propose paths whose MACs (`cream_tf.flops`, the thop convention of the paper)
  lie inside a range. Over-budget proposals are never trained and never counted as failed trials:
  random search rejection-samples uniformly among in-range paths; Bayesian optimisation *repairs*
  the Gaussian process' proposal, keeping as many of its choices as the budget allows;
* `tune`: the whole run, with an atomically written JSON summary and resuming.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Mapping

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf

from cream_tf.cli import write_json
from cream_tf import arch as arch_lib
from cream_tf import child
from cream_tf import flops
from cream_tf import internals
from cream_tf.errors import InputError
from cream_tf.space import Space

try:  # BayesianOptimizationOracle needs scipy; random search does not.
    import scipy  # noqa: F401
except ImportError:  # pragma: no cover - scipy is installed where we test
    scipy = None

__all__ = [
    "hp_name", "hyperparameters_from_space", "hyperparameters_from_path",
    "path_from_hyperparameters", "MacsRangeError", "resolve_macs_range", "sample_path_in_range",
    "CreamHyperModel", "MacsRandomSearchOracle", "MacsBayesianOptimizationOracle", "CreamTuner",
    "TrialResult", "TuneResult", "tune", "OBJECTIVE", "RESULTS_FILE", "ALGORITHMS", "OPTIMIZERS",
]

OBJECTIVE = "val_accuracy"
RESULTS_FILE = "tune_results.json"
CONFIG_FILE = "tune_config.json"
PROJECT_NAME = "keras_tuner"
ALGORITHMS = ("random", "bayesian")
OPTIMIZERS = ("adamw", "sgd")


# -- the space as HyperParameters ---------------------------------------------------------------

def hp_name(layer) -> str:
    """Name of the `Choice` of one searchable layer: 'stage2_layer3' (1-based)."""
    return f"stage{layer.stage + 1}_layer{layer.index + 1}"


def hyperparameters_from_space(space: Space) -> kt.HyperParameters:
    """One `Choice` per searchable layer, values the op names allowed there (SkipConnect last)."""
    hp = kt.HyperParameters()
    for layer in space.layers:
        hp.Choice(hp_name(layer), [space.ops[o].name for o in layer.choices], ordered=False)
    return hp


def hyperparameters_from_path(path, space: Space) -> kt.HyperParameters:
    """The space's `HyperParameters` with values set to `path` (validated against the space)."""
    flat = arch_lib.flat_path(arch_lib.validate_path(path, space))
    hp = hyperparameters_from_space(space)
    for layer, op_index in zip(space.layers, flat):
        hp.values[hp_name(layer)] = space.ops[op_index].name
    return hp


def _values_to_flat(values: Mapping, space: Space) -> list:
    flat = []
    for layer in space.layers:
        name = hp_name(layer)
        allowed = {space.ops[o].name: o for o in layer.choices}
        if name not in values:
            raise ValueError(f"hyperparameter {name!r} is missing; a path of space "
                             f"{space.name!r} needs one per searchable layer "
                             f"({hp_name(space.layers[0])} .. {hp_name(space.layers[-1])})")
        value = values[name]
        if value not in allowed:
            raise ValueError(f"hyperparameter {name!r} = {value!r} is not an op allowed at that "
                             f"layer; valid: {', '.join(allowed)}")
        flat.append(allowed[value])
    return flat


def path_from_hyperparameters(hp, space: Space) -> tuple:
    """The path (per-stage tuples of op indices) that `hp` (HyperParameters or a dict) encodes.

    Hyperparameters that are not layer choices (a learning rate, say) are ignored.
    """
    values = hp.values if isinstance(hp, kt.HyperParameters) else hp
    if not isinstance(values, Mapping):
        raise TypeError(f"expected keras_tuner.HyperParameters or a dict of values, got "
                        f"{type(hp).__name__}")
    return arch_lib.validate_path(arch_lib.nested_path(_values_to_flat(values, space), space), space)


def _values_from_flat(flat, space: Space) -> dict:
    return {hp_name(layer): space.ops[int(o)].name for layer, o in zip(space.layers, flat)}


# -- MACs ranges ---------------------------------------------------------------------------------

MacsRangeError = flops.MacsRangeError  # tuner.MacsRangeError: its first home


def resolve_macs_range(space: Space, macs_range) -> tuple:
    """`macs_range` = (min, max) (either may be None: open) as two ints within what the space
    reaches; `MacsRangeError` names the reachable range when no path can lie inside."""
    return flops.cost_table(space).resolve_range(macs_range)


class _RangeSampler:
    """Draws and repairs flat paths of a space so that their MACs lie in [lo, hi]."""

    def __init__(self, space: Space, lo: int, hi: int):
        table = flops.cost_table(space)
        self.space, self.lo, self.hi, self.table = space, lo, hi, table
        self.choices = [np.array(layer.choices) for layer in space.layers]
        self.costs = [table.macs[l, c] for l, c in enumerate(self.choices)]
        self.layer_min = np.array([c.min() for c in self.costs], np.int64)
        self.layer_max = np.array([c.max() for c in self.costs], np.int64)

    def macs(self, flat) -> int:
        return int(self.table.paths_macs(flat))

    def in_range(self, macs) -> bool:
        return self.lo <= macs <= self.hi

    def uniform(self, rng, n: int) -> np.ndarray:
        """n flat paths, each layer's op uniform among its choices; [n, layers]."""
        return np.stack([c[rng.integers(len(c), size=n)] for c in self.choices], axis=1)

    def repair(self, rng, proposal=None, keep: float = 1.0):
        """A flat path in range, built layer by layer in random order.

        A layer takes the proposal's op (with probability `keep`) when the layers still open can
        bring the total into range afterwards; otherwise a random op for which they can. Returns
        None when it paints itself into a corner (the range is narrow against the op costs).
        """
        order = rng.permutation(len(self.choices))
        rest_min, rest_max = int(self.layer_min.sum()), int(self.layer_max.sum())
        total = self.table.fixed_macs
        flat = np.zeros(len(self.choices), np.int64)
        for l in order:
            rest_min -= int(self.layer_min[l])
            rest_max -= int(self.layer_max[l])
            cand = total + self.costs[l]
            ok = (cand + rest_min <= self.hi) & (cand + rest_max >= self.lo)
            if not ok.any():
                return None
            pick = None
            if proposal is not None and rng.random() < keep:
                where = np.nonzero(self.choices[l] == proposal[l])[0]
                if len(where) and ok[where[0]]:
                    pick = where[0]
            if pick is None:
                pick = rng.choice(np.nonzero(ok)[0])
            flat[l] = self.choices[l][pick]
            total += int(self.costs[l][pick])
        return flat


def sample_path_in_range(space: Space, macs_range, seed=None, max_tries: int = 1000) -> tuple:
    """One random path of `space` with MACs in `macs_range` (uniform among them when they are not
    too rare; otherwise built layer by layer). Raises `MacsRangeError` if none is found."""
    lo, hi = resolve_macs_range(space, macs_range)
    sampler = _RangeSampler(space, lo, hi)
    rng = np.random.default_rng(seed)
    flat = _draw(sampler, rng, max_tries, lambda f: False)
    if flat is None:
        raise _not_found(space, lo, hi, max_tries)
    return arch_lib.nested_path(flat, space)


def _draw(sampler, rng, max_tries, is_duplicate, batch: int = 256):
    """Rejection sampling (uniform over in-range paths), then construction; None if nothing new."""
    for _ in range(max(1, max_tries // batch)):
        paths = sampler.uniform(rng, batch)
        macs = sampler.table.paths_macs(paths)
        for i in np.nonzero((macs >= sampler.lo) & (macs <= sampler.hi))[0]:
            if not is_duplicate(paths[i]):
                return paths[i]
    for _ in range(max_tries):
        flat = sampler.repair(rng)
        if flat is not None and not is_duplicate(flat):
            return flat
    return None


def _not_found(space, lo, hi, tries):
    table = flops.cost_table(space)
    return MacsRangeError(
        f"found no new path of {space} with MACs in [{lo:,}, {hi:,}] after {tries} tries; the "
        f"space reaches [{table.min_macs:,}, {table.max_macs:,}] but few paths (or only ones "
        f"already tried) lie in this range: widen it")


# -- oracles -------------------------------------------------------------------------------------

class _MacsRangeMixin:
    """Shared by both oracles: the range, the sampler, repair of proposals and saved state."""

    def _init_range(self, space, macs_range, max_tries):
        if not isinstance(space, Space):
            raise TypeError(f"space must be a cream_tf Space, got {type(space).__name__}")
        if not isinstance(max_tries, int) or max_tries < 1:
            raise ValueError(f"max_tries must be a positive int, got {max_tries!r}")
        self.space = space
        self.macs_range = resolve_macs_range(space, macs_range)
        self.max_tries = max_tries
        self._sampler = _RangeSampler(space, *self.macs_range)

    def _rng(self, trial_id, stream: int):
        try:
            tid = int(trial_id)
        except (TypeError, ValueError):
            tid = abs(hash(trial_id)) % (2 ** 31)
        return np.random.default_rng([int(self.seed), tid, stream])

    def _is_duplicate(self, flat) -> bool:
        return internals.oracle_has_tried(self, _values_from_flat(flat, self.space))

    def _in_range_random(self, trial_id):
        flat = _draw(self._sampler, self._rng(trial_id, 0), self.max_tries, self._is_duplicate)
        if flat is None:
            return None
        return _values_from_flat(flat, self.space)

    def _repaired(self, values, trial_id):
        """`values` if in range and new; else the nearest repair found; None if none is new."""
        proposal = np.array(_values_to_flat(values, self.space))
        if (self._sampler.in_range(self._sampler.macs(proposal))
                and not internals.oracle_has_tried(self, values)):
            return values
        rng = self._rng(trial_id, 1)
        for attempt in range(self.max_tries):
            # Keep all the proposal's feasible choices first; loosen as attempts go on so that
            # repeats of a tried path give way to its neighbours.
            keep = 1.0 - attempt / self.max_tries
            flat = self._sampler.repair(rng, proposal, keep)
            if flat is not None and not self._is_duplicate(flat):
                return _values_from_flat(flat, self.space)
        return self._in_range_random(trial_id)

    def _response(self, values):
        if values is None:
            # Every reachable in-range path we could find was tried already: stop, like keras-tuner
            # does when its space is exhausted. Raise if there is nothing in range at all.
            if not self.trials:
                raise _not_found(self.space, *self.macs_range, self.max_tries)
            return {"status": kt.engine.trial.TrialStatus.STOPPED, "values": None}
        return {"status": kt.engine.trial.TrialStatus.RUNNING, "values": values}

    def get_state(self):
        state = super().get_state()
        state["macs_range"] = list(self.macs_range)
        return state

    def set_state(self, state):
        saved = state.get("macs_range")
        if saved is not None and tuple(saved) != tuple(self.macs_range):
            raise InputError(f"this tuning project was searched with MACs range "
                             f"[{saved[0]:,}, {saved[1]:,}], not [{self.macs_range[0]:,}, "
                             f"{self.macs_range[1]:,}]; use the same range or a new directory "
                             f"(or overwrite=True)")
        super().set_state(state)


def _oracle_kwargs(space, kwargs):
    kwargs.setdefault("objective", kt.Objective(OBJECTIVE, "max"))
    kwargs.setdefault("hyperparameters", hyperparameters_from_space(space))
    # The space is closed: the hypermodel may not add or tune other entries.
    kwargs.setdefault("allow_new_entries", False)
    kwargs.setdefault("tune_new_entries", False)
    return kwargs


class MacsRandomSearchOracle(_MacsRangeMixin, kt.oracles.RandomSearchOracle):
    """Random search among the paths of `space` whose MACs lie in `macs_range` = (min, max).

    Proposals are uniform over the in-range paths (rejection sampling), falling back to building
    a path layer by layer when in-range paths are too rare to hit. Paths already tried are not
    proposed again; the search stops when no new one is found in `max_tries` tries.
    """

    def __init__(self, space: Space, macs_range=None, max_tries: int = 2000, **kwargs):
        self._init_range(space, macs_range, max_tries)
        super().__init__(**_oracle_kwargs(space, kwargs))

    def populate_space(self, trial_id):
        return self._response(self._in_range_random(trial_id))


class MacsBayesianOptimizationOracle(_MacsRangeMixin, kt.oracles.BayesianOptimizationOracle):
    """Gaussian-process Bayesian optimisation restricted to a MACs range. Needs scipy.

    The initial random points are drawn in range like `MacsRandomSearchOracle`. After them, with
    `acquisition='candidates'` (default), the upper confidence bound of keras-tuner's Gaussian
    process is minimised over `num_candidates` untried in-range paths: half uniform among them,
    half neighbours (one or two layers changed, then repaired) of the best trials so far. This
    respects the budget by construction and costs one batched prediction, where the parent's
    continuous L-BFGS search (50 restarts) takes seconds per proposal and ignores the budget.
    With `acquisition='lbfgs'` the parent's proposal is kept and *repaired* when it falls outside
    the range or repeats a tried path: layers, in random order, keep their proposed op while the
    others can still bring the total into range, and take a random op that can otherwise.
    """

    def __init__(self, space: Space, macs_range=None, max_tries: int = 2000,
                 acquisition: str = "candidates", num_candidates: int = 512, **kwargs):
        if scipy is None:
            raise ImportError("the Bayesian oracle needs scipy (pip install scipy, or "
                              "keras-tuner[bayesian]); random search works without it")
        if acquisition not in ("candidates", "lbfgs"):
            raise ValueError(f"unknown acquisition {acquisition!r}; valid: candidates, lbfgs")
        if not isinstance(num_candidates, int) or num_candidates < 2:
            raise ValueError(f"num_candidates must be an int >= 2, got {num_candidates!r}")
        self._init_range(space, macs_range, max_tries)
        self.acquisition = acquisition
        self.num_candidates = num_candidates
        super().__init__(**_oracle_kwargs(space, kwargs))

    def _in_random_phase(self) -> bool:
        """The parent's rule for its initial random points (keras-tuner 1.4.8)."""
        completed = [t for t in self.trials.values() if t.status == "COMPLETED"]
        dims = len(self.hyperparameters.space)
        return len(completed) < (self.num_initial_points or max(3 * dims, 3))

    def populate_space(self, trial_id):
        if self._in_random_phase():
            # The initial points, drawn in range; trial ids are sequential, so seed by the count.
            return self._response(self._in_range_random(len(self.trials)))
        if self.acquisition == "candidates":
            return self._response(self._best_candidate(trial_id))
        response = super().populate_space(trial_id)
        if response["status"] != kt.engine.trial.TrialStatus.RUNNING:
            return response
        return self._response(self._repaired(response["values"], trial_id))

    def _candidates(self, rng) -> list:
        sampler, seen, result = self._sampler, set(), []

        def add(flat):
            key = tuple(int(i) for i in flat)
            if key not in seen and not self._is_duplicate(flat):
                seen.add(key)
                result.append(key)

        half = self.num_candidates // 2
        for _ in range(max(1, self.max_tries // 256)):
            paths = sampler.uniform(rng, 256)
            macs = sampler.table.paths_macs(paths)
            for i in np.nonzero((macs >= sampler.lo) & (macs <= sampler.hi))[0]:
                add(paths[i])
            if len(result) >= half:
                break
        for _ in range(2 * half):  # rare in-range paths: build them instead
            if len(result) >= half:
                break
            flat = sampler.repair(rng)
            if flat is not None:
                add(flat)
        best = [t for t in self.get_best_trials(5) if t.status == "COMPLETED"]
        for i in range(2 * (self.num_candidates - half)):
            if not best or len(result) >= self.num_candidates:
                break
            flat = np.array(_values_to_flat(best[i % len(best)].hyperparameters.values,
                                            self.space))
            for l in rng.choice(len(flat), size=int(rng.integers(1, 3)), replace=False):
                flat[l] = rng.choice(sampler.choices[l])
            flat = sampler.repair(rng, flat)
            if flat is not None:
                add(flat)
        return result

    def _best_candidate(self, trial_id):
        rng = self._rng(trial_id, 2)
        candidates = self._candidates(rng)
        if not candidates:
            return None
        x, y, hps = internals.gp_training_data(self)
        self.gpr.fit(np.nan_to_num(x, posinf=0, neginf=0), np.nan_to_num(y, posinf=0, neginf=0))
        vectors = np.array([[hp.value_to_prob(self.space.ops[o].name) for hp, o in zip(hps, c)]
                            for c in candidates])
        mu, sigma = self.gpr.predict(vectors, return_std=True)
        # keras-tuner frames every objective as minimisation; lower confidence bound = optimism.
        return _values_from_flat(candidates[int(np.argmin(mu - self.beta * sigma))], self.space)


# -- the hypermodel ------------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package="cream_tf")
class SparseCategoricalCrossentropyWithSmoothing(keras.losses.Loss):
    """Cross-entropy of integer labels with label smoothing (Keras' sparse loss has none)."""

    def __init__(self, label_smoothing=0.0, from_logits=True,
                 name="sparse_categorical_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        y_true = keras.ops.reshape(keras.ops.cast(y_true, "int32"), (-1,))
        one_hot = keras.ops.one_hot(y_true, keras.ops.shape(y_pred)[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(
            one_hot, y_pred, from_logits=self.from_logits, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing,
                "from_logits": self.from_logits}


def make_loss(label_smoothing: float = 0.0):
    """Sparse cross-entropy on logits; with smoothing when `label_smoothing` > 0."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    if label_smoothing == 0.0:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return SparseCategoricalCrossentropyWithSmoothing(label_smoothing)


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


# -- the tuner and its results -------------------------------------------------------------------

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
        write_json(self.results_path, data)
        return result


# -- tune ----------------------------------------------------------------------------------------

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
    config_path = os.path.join(workdir, CONFIG_FILE)
    project_dir = os.path.join(workdir, PROJECT_NAME)
    if not overwrite and os.path.exists(config_path) and os.path.isdir(project_dir):
        with open(config_path) as f:
            saved = json.load(f)
        changed = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        if changed:
            raise InputError(
                f"{workdir} holds a tuning run with other settings ("
                + "; ".join(f"{k}: {saved.get(k)!r} then, {config.get(k)!r} now" for k in changed)
                + "); use the same settings to resume, another workdir, or overwrite=True")
    write_json(config_path, config)
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
