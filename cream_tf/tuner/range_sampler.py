"""Paths of a space with MACs inside a range: drawn uniformly, or built and repaired.

The tuner's oracles and `sample_path_in_range` need in-range paths that are *new* (not tried yet)
and, for Bayesian optimisation, a repair that keeps most of a proposal. `cream_tf.sampler` draws
one path per search step from a prior and proves a range reachable; neither fits here, so only the
costs (`flops.CostTable`) and the path forms (`cream_tf.arch`) are shared.
"""
from __future__ import annotations

import numpy as np

from cream_tf import arch as arch_lib
from cream_tf import flops
from cream_tf.space import Space

__all__ = ["MacsRangeError", "resolve_macs_range", "RangeSampler", "sample_path_in_range",
           "draw", "not_found"]

MacsRangeError = flops.MacsRangeError  # tuner.MacsRangeError: its first home


def resolve_macs_range(space: Space, macs_range) -> tuple:
    """`macs_range` = (min, max) (either may be None: open) as two ints within what the space
    reaches; `MacsRangeError` names the reachable range when no path can lie inside."""
    return flops.cost_table(space).resolve_range(macs_range)


class RangeSampler:
    """Draws and repairs flat paths of a space so that their MACs lie in [lo, hi]."""

    def __init__(self, space: Space, lo: int, hi: int):
        table = flops.cost_table(space)
        self.space, self.lo, self.hi, self.table = space, lo, hi, table
        self.choices = [np.array(layer.choices) for layer in space.layers]
        self.costs = [table.macs[l, c] for l, c in enumerate(self.choices)]
        self.layer_min, self.layer_max = table.layer_min_macs, table.layer_max_macs

    def macs(self, flat) -> int:
        return int(self.table.paths_macs(flat))

    def in_range(self, macs) -> bool:
        return self.lo <= macs <= self.hi

    def uniform(self, rng, n: int) -> np.ndarray:
        """n flat paths, each layer's op uniform among its choices; [n, layers]."""
        return np.stack([c[rng.integers(len(c), size=n)] for c in self.choices], axis=1)

    def uniform_in_range(self, rng, n: int) -> np.ndarray:
        """The in-range ones of n `uniform` paths, in draw order (uniform among in-range paths)."""
        paths = self.uniform(rng, n)
        macs = self.table.paths_macs(paths)
        return paths[(macs >= self.lo) & (macs <= self.hi)]

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
    sampler = RangeSampler(space, lo, hi)
    rng = np.random.default_rng(seed)
    flat = draw(sampler, rng, max_tries, lambda f: False)
    if flat is None:
        raise not_found(space, lo, hi, max_tries)
    return arch_lib.nested_path(flat, space)


def draw(sampler: RangeSampler, rng, max_tries, is_duplicate, batch: int = 256):
    """Rejection sampling (uniform over in-range paths), then construction; None if nothing new."""
    for _ in range(max(1, max_tries // batch)):
        for flat in sampler.uniform_in_range(rng, batch):
            if not is_duplicate(flat):
                return flat
    for _ in range(max_tries):
        flat = sampler.repair(rng)
        if flat is not None and not is_duplicate(flat):
            return flat
    return None


def not_found(space, lo, hi, tries) -> MacsRangeError:
    """The error for a range where no new path was found: it names what the space reaches."""
    table = flops.cost_table(space)
    return MacsRangeError(
        f"found no new path of {space} with MACs in [{lo:,}, {hi:,}] after {tries} tries; the "
        f"space reaches [{table.min_macs:,}, {table.max_macs:,}] but few paths (or only ones "
        f"already tried) lie in this range: widen it")
