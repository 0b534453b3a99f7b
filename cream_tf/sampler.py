"""Path sampling for the search (docs/method.md, "Supernet training", step 1).

Per searchable layer, op probabilities come from a prior:

* ``"uniform"``: every allowed op of the layer equally likely (SkipConnect included where allowed).
* ``"release"``: the release's prior 0.05, 0.2, 0.05, 0.5, 0.05, 0.15 over the six MBConv ops
  (k3e4, k3e6, k5e4, k5e6, k7e4, k7e6). The release has no other ops; here every non-MBConv,
  non-skip op (ResBlock, Conv kxk) gets the same share as under ``"uniform"`` and the six MBConv
  ops split the rest in the prior's proportions.
* a sequence with one weight per op of the space (normalised per layer over its allowed ops).

SkipConnect only exists where a layer keeps its shape (never the first block of a stage). With
``skip_prob=None`` it gets the share a uniform choice would give it (1 / number of allowed ops);
a number in [0, 1) sets its probability directly, the other ops share the rest by the prior.

Paths outside the MACs range ``[min, max]`` are rejected and redrawn. At construction the range is
checked exactly (some path must fall inside it, found by a pruned search over per-layer costs), and
a range that is reachable but so rare under the prior that rejection cannot find a path in
``max_tries`` draws raises instead of looping forever.

The path of step ``t`` is a pure function of ``(seed, t)``, so every replica and every worker
samples the same path and a resumed search samples the paths an uninterrupted one would.
"""
from __future__ import annotations

import numpy as np

from cream_tf import arch as arch_lib
from cream_tf import flops
from cream_tf.errors import InputError
from cream_tf.space import Space

__all__ = ["RELEASE_PRIOR", "Sampler", "op_probabilities", "reachable_path", "SearchBudgetExceeded"]

RELEASE_PRIOR = (0.05, 0.2, 0.05, 0.5, 0.05, 0.15)


def op_probabilities(space: Space, prior="uniform", skip_prob=None) -> np.ndarray:
    """Per-layer op probabilities, float64 [num_layers, num_ops]; 0 where an op is not allowed."""
    n_ops = len(space.ops)
    skip = space.skip_index
    if isinstance(prior, str):
        if prior == "uniform":
            weights = None
        elif prior == "release":
            weights = "release"
        else:
            raise ValueError(f"unknown prior {prior!r}; use 'uniform', 'release' or one weight "
                             f"per op of the space ({n_ops} numbers)")
    else:
        weights = np.asarray(prior, np.float64)
        if weights.shape != (n_ops,) or not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ValueError(f"a prior sequence needs {n_ops} finite weights >= 0 (one per op of "
                             f"space {space.name!r}: {', '.join(o.paper for o in space.ops)}), "
                             f"got {prior!r}")
    if skip_prob is not None and not 0.0 <= float(skip_prob) < 1.0:
        raise ValueError(f"skip_prob must be in [0, 1) or None, got {skip_prob!r}")
    probs = np.zeros((space.num_layers, n_ops))
    for l, layer in enumerate(space.layers):
        choices = list(layer.choices)
        non_skip = [c for c in choices if c != skip]
        if skip in choices:
            p_skip = 1.0 / len(choices) if skip_prob is None else float(skip_prob)
        else:
            p_skip = 0.0
        rest = 1.0 - p_skip
        if weights is None:
            w = np.ones(len(non_skip))
        elif isinstance(weights, str):  # release
            mb = [c for c in non_skip if space.ops[c].kind == "ir"]
            share = len(mb) / len(non_skip)
            prior_mb = np.array([RELEASE_PRIOR[c] for c in mb])
            prior_mb = prior_mb / prior_mb.sum()
            w = np.array([share * prior_mb[mb.index(c)] if c in mb else 1.0 / len(non_skip)
                          for c in non_skip])
        else:
            w = weights[non_skip]
            if w.sum() <= 0:
                raise ValueError(f"the prior gives zero weight to every op allowed at layer {l} "
                                 f"(stage {layer.stage + 1}, block {layer.index + 1})")
        probs[l, non_skip] = rest * w / w.sum()
        if p_skip:
            probs[l, skip] = p_skip
    return probs


class SearchBudgetExceeded(RuntimeError):
    """`reachable_path` gave up before deciding (a very narrow window inside the space's range)."""


def reachable_path(table: flops.CostTable, low: int, high: int, budget: int = 200_000):
    """A flat path with MACs in [low, high], or None when no path of the space has such MACs.

    Exact: a depth-first search over layers with bounds (the smallest and largest MACs the
    remaining layers can add) and memoised dead ends; ops of equal cost at a layer are tried once,
    nearest to the window's centre first. Windows far narrower than one op's cost can take
    exponential time: after `budget` visited nodes it raises `SearchBudgetExceeded`.
    """
    macs = table.macs
    allowed = table.allowed
    n_layers = macs.shape[0]
    options = []
    for l in range(n_layers):
        seen = {}
        for o in np.flatnonzero(allowed[l]):
            seen.setdefault(int(macs[l, o]), int(o))
        options.append(sorted(seen.items()))  # (cost, op) by cost
    rest_min = [0] * (n_layers + 1)
    rest_max = [0] * (n_layers + 1)
    for l in range(n_layers - 1, -1, -1):
        rest_min[l] = rest_min[l + 1] + options[l][0][0]
        rest_max[l] = rest_max[l + 1] + options[l][-1][0]
    low -= table.fixed_macs
    high -= table.fixed_macs
    centre = (low + high) / 2
    dead = set()
    chosen = [0] * n_layers
    visited = [0]

    def visit(l, total):
        if total + rest_min[l] > high or total + rest_max[l] < low:
            return False
        if l == n_layers:
            return True
        if (l, total) in dead:
            return False
        visited[0] += 1
        if visited[0] > budget:
            raise SearchBudgetExceeded(
                f"could not decide within {budget:,} search nodes whether a path has MACs in "
                f"[{low + table.fixed_macs:,}, {high + table.fixed_macs:,}]; widen the window")
        mid_rest = (rest_min[l + 1] + rest_max[l + 1]) / 2
        for cost, op in sorted(options[l], key=lambda c: abs(total + c[0] + mid_rest - centre)):
            chosen[l] = op
            if visit(l + 1, total + cost):
                return True
        dead.add((l, total))
        return False

    return list(chosen) if visit(0, 0) else None


class Sampler:
    """Samples one path per global step, identically on every host, from (seed, step).

    Args:
      space: the search space.
      prior: 'uniform', 'release' or one weight per op (see the module docstring).
      skip_prob: probability of SkipConnect where it is allowed; None = uniform share.
      macs_range: (min, max) MACs of accepted paths, inclusive; None or a None end = unbounded.
      seed: the search seed.
      max_tries: paths drawn per step before giving up on a too-rare range.
    """

    def __init__(self, space: Space, prior="uniform", skip_prob=None, macs_range=None,
                 seed: int = 0, max_tries: int = 100_000):
        self.space = space
        self.table = flops.cost_table(space)
        self.probs = op_probabilities(space, prior, skip_prob)
        self.seed = int(seed)
        self.max_tries = int(max_tries)
        lo_all, hi_all = self.table.min_macs, self.table.max_macs
        low, high = self.macs_range = self.table.resolve_range(macs_range)
        reach = f"paths of this space reach [{lo_all:,}, {hi_all:,}] MACs"
        # Paths the prior can draw (probability > 0) must reach the range, not just the space.
        masked = flops.CostTable(space, self.table.fixed_macs, self.table.fixed_params,
                                 self.table.macs, self.table.params, self.probs > 0)
        try:
            witness = reachable_path(masked, low, high)
            if witness is None and reachable_path(self.table, low, high) is None:
                raise InputError(f"no path of {space} has MACs in [{low:,}, {high:,}]: {reach} "
                                 f"(min_macs={lo_all}, max_macs={hi_all}), but no path's MACs "
                                 f"fall inside this window; widen it")
        except SearchBudgetExceeded as e:
            raise InputError(f"{e} ({reach}, min_macs={lo_all}, max_macs={hi_all})") from None
        if witness is None:
            raise InputError(f"paths in [{low:,}, {high:,}] MACs exist ({reach}) but need ops "
                             f"the prior gives probability 0; change the prior or skip_prob")
        self.witness = witness
        self._cum = np.cumsum(self.probs, axis=1)
        for l in range(space.num_layers):  # rounding must never pick an op past the last allowed
            self._cum[l, np.flatnonzero(self.probs[l])[-1]:] = 2.0
        self.sample(0)  # a range the prior (almost) never draws fails now, not mid-search

    def _draw(self, rng, count: int) -> np.ndarray:
        u = rng.random((count, self.space.num_layers, 1))
        ops = (u > self._cum[None]).sum(axis=2)  # inverse CDF per layer
        return ops.astype(np.int32)

    def path_macs(self, flat) -> int:
        return int(self.table.paths_macs(flat))

    def sample(self, step: int) -> np.ndarray:
        """The flat int32 path of global step `step` (same for every caller with this seed)."""
        rng = np.random.default_rng([self.seed, int(step)])
        low, high = self.macs_range
        drawn = 0
        while drawn < self.max_tries:
            count = min(256, self.max_tries - drawn)
            paths = self._draw(rng, count)
            macs = self.table.paths_macs(paths)
            ok = np.flatnonzero((macs >= low) & (macs <= high))
            if ok.size:
                return paths[ok[0]]
            drawn += count
        raise RuntimeError(
            f"step {step}: none of {self.max_tries:,} sampled paths had MACs in "
            f"[{low:,}, {high:,}] (paths exist there, e.g. {self.nested(self.witness)}, but the "
            f"prior almost never draws them); widen macs_range, change the prior or raise "
            f"max_tries")

    def nested(self, flat) -> tuple:
        """A flat path as per-stage tuples (the `arch` path form): `arch.nested_path`."""
        return arch_lib.nested_path(flat, self.space)

    def __repr__(self):
        return (f"Sampler({self.space.name}, macs_range={self.macs_range}, seed={self.seed})")

