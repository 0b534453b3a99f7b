"""Sampler: inside the MACs range, SkipConnect only where allowed, clear errors, (seed, step)."""
import numpy as np
import pytest

from cream_tf import flops
from cream_tf.sampler import RELEASE_PRIOR, Sampler, op_probabilities, reachable_path
from cream_tf.space import Space

SPACES = [Space("mbconv", depth=2, resolution=32, width=0.25, num_classes=10),
          Space("mbconv_res", depth=(1, 2, 2, 1, 2), resolution=32, width=0.25, num_classes=10),
          Space("mbconv_res_conv", depth=2, resolution=32, width=0.25, num_classes=10)]


@pytest.mark.parametrize("space", SPACES, ids=lambda s: s.name)
@pytest.mark.parametrize("prior", ["uniform", "release"])
def test_samples_stay_in_range_and_skip_only_where_allowed(space, prior):
    table = flops.cost_table(space)
    lo, hi = table.min_macs, table.max_macs
    low, high = lo + (hi - lo) // 4, lo + (hi - lo) // 2
    sampler = Sampler(space, prior=prior, macs_range=(low, high), seed=3)
    for step in range(200):
        flat = sampler.sample(step)
        assert low <= sampler.path_macs(flat) <= high
        assert sampler.path_macs(flat) == table.path_macs(sampler.nested(flat))
        for layer, op in zip(space.layers, flat):
            assert op in layer.choices  # SkipConnect never at a stage's first layer


def test_probabilities():
    space = SPACES[2]
    probs = op_probabilities(space, "release")
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    first = probs[0]  # no skip at a stage's first layer; 10 non-skip ops
    assert first[space.skip_index] == 0
    np.testing.assert_allclose(first[6:10], 0.1)  # Res and Conv ops: uniform share
    np.testing.assert_allclose(first[:6], 0.6 * np.array(RELEASE_PRIOR))
    second = probs[1]
    assert second[space.skip_index] == pytest.approx(1 / 11)
    uniform = op_probabilities(SPACES[0], "uniform", skip_prob=0.5)
    assert uniform[1, -1] == 0.5 and uniform[1, 0] == pytest.approx(0.5 / 6)
    # mbconv alone: release prior exactly
    np.testing.assert_allclose(op_probabilities(SPACES[0], "release")[0, :6], RELEASE_PRIOR)
    with pytest.raises(ValueError, match="unknown prior"):
        op_probabilities(space, "flat")
    with pytest.raises(ValueError, match="skip_prob"):
        op_probabilities(space, "uniform", skip_prob=1.0)


def test_sampling_frequencies_follow_the_prior():
    space = SPACES[0]
    sampler = Sampler(space, prior="release", seed=0)
    counts = np.zeros(len(space.ops))
    for step in range(3000):
        counts[sampler.sample(step)[0]] += 1
    np.testing.assert_allclose(counts / counts.sum(), list(RELEASE_PRIOR) + [0], atol=0.03)


def test_unreachable_range_names_the_reachable_range():
    space = SPACES[0]
    table = flops.cost_table(space)
    with pytest.raises(ValueError) as e:
        Sampler(space, macs_range=(table.max_macs + 1, table.max_macs + 10))
    assert f"[{table.min_macs:,}, {table.max_macs:,}]" in str(e.value)
    with pytest.raises(ValueError, match=f"{table.min_macs:,}"):
        Sampler(space, macs_range=(0, table.min_macs - 1))
    with pytest.raises(ValueError, match="min <= max"):
        Sampler(space, macs_range=(10, 5))
    # inside [min, max] but between reachable values: exact check
    with pytest.raises(ValueError, match="no path's MACs fall inside"):
        Sampler(space, macs_range=(table.min_macs + 1, table.min_macs + 1))
    # the extremes themselves are reachable
    assert reachable_path(table, table.min_macs, table.min_macs) is not None
    assert reachable_path(table, table.max_macs, table.max_macs) is not None
    Sampler(space, macs_range=(table.min_macs, None))


def test_reachable_path_is_exact_on_small_space():
    space = Space("mbconv", depth=1, resolution=32, width=0.25, num_classes=10)
    table = flops.cost_table(space)
    import itertools
    sums = sorted({table.fixed_macs + sum(int(table.macs[l, o]) for l, o in enumerate(p))
                   for p in itertools.product(*[l.choices for l in space.layers])})
    rng = np.random.default_rng(0)
    for _ in range(200):
        a, b = sorted(rng.integers(sums[0] - 10, sums[-1] + 10, 2))
        witness = reachable_path(table, a, b)
        inside = any(a <= s <= b for s in sums)
        assert (witness is not None) == inside
        if witness is not None:
            assert a <= table.path_macs([[o] for o in witness]) <= b


def test_rare_range_fails_with_a_clear_error():
    space = SPACES[0]
    table = flops.cost_table(space)
    # only the single largest path: reachable, but the release prior gives it ~0.15^5 * ...
    with pytest.raises(RuntimeError, match="widen macs_range"):
        Sampler(space, prior="release", macs_range=(table.max_macs, table.max_macs),
                max_tries=2000)


def test_determinism_from_seed_and_step():
    space = SPACES[1]
    a = Sampler(space, seed=7)
    b = Sampler(space, seed=7)
    c = Sampler(space, seed=8)
    forward = [a.sample(s).tolist() for s in range(50)]
    # any order, any instance: step t gives the same path (what a resumed search relies on)
    backward = [b.sample(s).tolist() for s in reversed(range(50))][::-1]
    assert forward == backward
    assert forward != [c.sample(s).tolist() for s in range(50)]
    assert len({tuple(p) for p in forward}) > 40
