"""keras-tuner oracles that only propose paths whose MACs lie inside a range.

Over-budget proposals are never trained and never counted as failed trials: random search
rejection-samples uniformly among in-range paths; Bayesian optimisation ranks in-range candidates
with its Gaussian process, or *repairs* the process' own proposal, keeping as many of its choices
as the budget allows. MACs follow `cream_tf.flops` (the thop convention of the paper).
"""
from __future__ import annotations

import keras_tuner as kt
import numpy as np

from cream_tf import internals
from cream_tf.errors import InputError
from cream_tf.space import Space
from cream_tf.tuner.hyperparameters import (flat_from_values, hyperparameters_from_space,
                                            values_from_flat)
from cream_tf.tuner.hypermodel import OBJECTIVE
from cream_tf.tuner.range_sampler import RangeSampler, draw, not_found, resolve_macs_range

try:  # BayesianOptimizationOracle needs scipy; random search does not.
    import scipy  # noqa: F401
except ImportError:  # pragma: no cover - scipy is installed where we test
    scipy = None

__all__ = ["MacsRandomSearchOracle", "MacsBayesianOptimizationOracle"]


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
        self._sampler = RangeSampler(space, *self.macs_range)

    def _rng(self, trial_id, stream: int):
        try:
            tid = int(trial_id)
        except (TypeError, ValueError):
            tid = abs(hash(trial_id)) % (2 ** 31)
        return np.random.default_rng([int(self.seed), tid, stream])

    def _is_duplicate(self, flat) -> bool:
        return internals.oracle_has_tried(self, values_from_flat(flat, self.space))

    def _in_range_random(self, trial_id):
        flat = draw(self._sampler, self._rng(trial_id, 0), self.max_tries, self._is_duplicate)
        if flat is None:
            return None
        return values_from_flat(flat, self.space)

    def _repaired(self, values, trial_id):
        """`values` if in range and new; else the nearest repair found; None if none is new."""
        proposal = np.array(flat_from_values(values, self.space))
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
                return values_from_flat(flat, self.space)
        return self._in_range_random(trial_id)

    def _response(self, values):
        if values is None:
            # Every reachable in-range path we could find was tried already: stop, like keras-tuner
            # does when its space is exhausted. Raise if there is nothing in range at all.
            if not self.trials:
                raise not_found(self.space, *self.macs_range, self.max_tries)
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
            for flat in sampler.uniform_in_range(rng, 256):
                add(flat)
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
            flat = np.array(flat_from_values(best[i % len(best)].hyperparameters.values,
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
        return values_from_flat(candidates[int(np.argmin(mu - self.beta * sigma))], self.space)
