"""Tests of cream_tf.tuner: the space as keras-tuner HyperParameters, MACs-range oracles, tune()."""
import json
import os

import keras_tuner as kt
import numpy as np
import pytest
import tensorflow as tf

from cream_tf import arch as arch_lib
from cream_tf import flops
from cream_tf import tuner
from cream_tf.space import SPACES, Space

# Small spaces: the HyperParameters mapping does not depend on resolution or width.
ROUND_TRIP_SPACES = [Space(name, depth=(1, 2, 3, 4, 6), resolution=32, width=0.25,
                           num_classes=10) for name in SPACES]
ORACLE_SPACE = Space("mbconv_res_conv", depth=2, resolution=32, width=0.25, num_classes=10)
ORACLES = {"random": tuner.MacsRandomSearchOracle,
           "bayesian": tuner.MacsBayesianOptimizationOracle}


def _random_path(space, rng):
    return tuple(tuple(int(rng.choice(layer.choices)) for layer in space.layers
                       if layer.stage == s) for s in range(space.num_stages))


# -- HyperParameters round trips ---------------------------------------------------------------

@pytest.mark.parametrize("space", ROUND_TRIP_SPACES, ids=lambda s: s.name)
def test_hyperparameters_mirror_space_layers(space):
    hp = tuner.hyperparameters_from_space(space)
    assert len(hp.space) == space.num_layers
    for choice, layer in zip(hp.space, space.layers):
        assert isinstance(choice, kt.engine.hyperparameters.Choice)
        assert choice.name == f"stage{layer.stage + 1}_layer{layer.index + 1}"
        assert choice.values == [space.ops[o].name for o in layer.choices]
        # SkipConnect exactly where the space allows it: never the first block of a stage.
        assert ("skip" in choice.values) == (layer.index > 0)
    assert hp.space[0].name == "stage1_layer1"
    assert hp.space[-1].name == f"stage5_layer{space.depth[-1]}"


@pytest.mark.parametrize("space", ROUND_TRIP_SPACES, ids=lambda s: s.name)
def test_path_hyperparameters_round_trip(space):
    rng = np.random.default_rng(len(space.ops))
    paths = [_random_path(space, rng) for _ in range(50)]
    # Extremes: first op everywhere; SkipConnect wherever allowed (the shallowest child).
    paths.append(tuple((0,) * d for d in space.depth))
    paths.append(tuple((0,) + (space.skip_index,) * (d - 1) for d in space.depth))
    for path in paths:
        hp = tuner.hyperparameters_from_path(path, space)
        assert tuner.path_from_hyperparameters(hp, space) == path
        assert tuner.path_from_hyperparameters(dict(hp.values), space) == path
        # And back again from values a keras-tuner oracle would hand out.
        hp2 = tuner.hyperparameters_from_space(space)
        hp2.values = dict(hp.values)
        assert tuner.hyperparameters_from_path(
            tuner.path_from_hyperparameters(hp2, space), space).values == hp.values


@pytest.mark.parametrize("space", ROUND_TRIP_SPACES, ids=lambda s: s.name)
def test_random_hyperparameter_samples_are_valid_paths(space):
    hp = tuner.hyperparameters_from_space(space)
    for seed in range(30):
        values = {h.name: h.random_sample(seed * 1000 + i) for i, h in enumerate(hp.space)}
        path = tuner.path_from_hyperparameters(values, space)
        assert arch_lib.validate_path(path, space) == path
        assert tuner.hyperparameters_from_path(path, space).values == values


def test_path_from_hyperparameters_names_the_bad_entry():
    space = ROUND_TRIP_SPACES[0]
    values = dict(tuner.hyperparameters_from_path(
        tuple((0,) * d for d in space.depth), space).values)
    bad = dict(values, stage1_layer1="skip")  # no SkipConnect in a stage's first block
    with pytest.raises(ValueError, match=r"stage1_layer1.*'skip'.*valid: ir_k3_e4"):
        tuner.path_from_hyperparameters(bad, space)
    missing = {k: v for k, v in values.items() if k != "stage3_layer2"}
    with pytest.raises(ValueError, match="stage3_layer2.*missing"):
        tuner.path_from_hyperparameters(missing, space)
    with pytest.raises(arch_lib.ArchError):
        tuner.hyperparameters_from_path([[0]] * 5, space)


# -- MACs-range oracles ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def table():
    return flops.cost_table(ORACLE_SPACE)


def _narrow_range(table, frac, rel_width):
    span = table.max_macs - table.min_macs
    mid = table.min_macs + frac * span
    return int(mid - rel_width * span / 2), int(mid + rel_width * span / 2)


def _drive(oracle, n, space, score=lambda path, i: float(i % 7) / 7):
    """Runs n trials through the oracle as a tuner would; returns their paths."""
    paths = []
    for i in range(n):
        trial = oracle.create_trial("tuner0")
        if trial.status == "STOPPED":
            break
        path = tuner.path_from_hyperparameters(trial.hyperparameters, space)
        paths.append(path)
        oracle.update_trial(trial.trial_id, {"val_accuracy": score(path, i)})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    return paths


@pytest.mark.parametrize("algorithm", sorted(ORACLES))
@pytest.mark.parametrize("frac", [0.05, 0.5, 0.95])
def test_oracle_proposes_only_in_range(algorithm, frac, table, tmp_path):
    lo, hi = _narrow_range(table, frac, 0.01)
    n = 40 if algorithm == "random" else 8
    kwargs = {"num_initial_points": 3} if algorithm == "bayesian" else {}
    oracle = ORACLES[algorithm](ORACLE_SPACE, (lo, hi), max_trials=n, seed=int(frac * 100) + 1,
                                **kwargs)
    oracle._set_project_dir(str(tmp_path), "p")
    paths = _drive(oracle, n, ORACLE_SPACE)
    assert len(paths) == n
    for path in paths:
        assert lo <= table.path_macs(path) <= hi
    assert len(set(paths)) == n, "a path was proposed twice"


def test_repair_keeps_what_the_budget_allows(table, tmp_path):
    """An out-of-range proposal (the most expensive path) comes back in range, changing only as
    many layers as needed; an in-range new proposal comes back unchanged."""
    lo, hi = _narrow_range(table, 0.6, 0.05)
    oracle = tuner.MacsBayesianOptimizationOracle(ORACLE_SPACE, (lo, hi), max_trials=5, seed=3,
                                                  acquisition="lbfgs")
    oracle._set_project_dir(str(tmp_path), "p")
    biggest = tuple(tuple(max(l.choices, key=lambda o: table.macs[i, o]) for i, l in
                          enumerate(ORACLE_SPACE.layers) if l.stage == s)
                    for s in range(ORACLE_SPACE.num_stages))
    flat_big = arch_lib.flat_path(biggest)
    assert table.path_macs(biggest) > hi
    values = tuner.hyperparameters_from_path(biggest, ORACLE_SPACE).values
    for trial_id in range(20):
        repaired = tuner.path_from_hyperparameters(oracle._repaired(values, trial_id),
                                                   ORACLE_SPACE)
        assert lo <= table.path_macs(repaired) <= hi
        kept = sum(a == b for a, b in zip(arch_lib.flat_path(repaired), flat_big))
        assert kept >= 1  # the repair starts from the proposal, it does not resample it all
    inside = tuner.sample_path_in_range(ORACLE_SPACE, (lo, hi), seed=5)
    inside_values = tuner.hyperparameters_from_path(inside, ORACLE_SPACE).values
    assert oracle._repaired(inside_values, 0) == inside_values


@pytest.mark.slow
def test_bayesian_lbfgs_proposals_are_repaired_into_range(table, tmp_path):
    """Past its random start the Gaussian process follows the score; a score that grows with MACs
    pulls the parent's L-BFGS proposal to the top of the space, outside the range, so the oracle
    must repair it. (Slow: keras-tuner's 50-restart L-BFGS takes ~10 s a proposal here.)"""
    lo, hi = _narrow_range(table, 0.3, 0.02)
    oracle = tuner.MacsBayesianOptimizationOracle(ORACLE_SPACE, (lo, hi), max_trials=4,
                                                  num_initial_points=2, seed=3,
                                                  acquisition="lbfgs")
    oracle._set_project_dir(str(tmp_path), "p")
    raw = []
    parent = kt.oracles.BayesianOptimizationOracle.populate_space

    def spy(self, trial_id):
        response = parent(self, trial_id)
        raw.append(table.path_macs(tuner.path_from_hyperparameters(response["values"],
                                                                    ORACLE_SPACE)))
        return response

    kt.oracles.BayesianOptimizationOracle.populate_space = spy
    try:
        paths = _drive(oracle, 4, ORACLE_SPACE,
                       score=lambda path, i: table.path_macs(path) / table.max_macs)
    finally:
        kt.oracles.BayesianOptimizationOracle.populate_space = parent
    assert len(paths) == 4
    assert all(lo <= table.path_macs(p) <= hi for p in paths)
    assert any(not lo <= m <= hi for m in raw), "test did not exercise the repair"


def test_bayesian_candidates_follow_the_score(table, tmp_path):
    """With a score that grows with MACs, the Gaussian process should steer proposals to the
    expensive end of the range more than random search does."""
    lo, hi = _narrow_range(table, 0.5, 0.4)
    score = lambda path, i: (table.path_macs(path) - lo) / (hi - lo)  # noqa: E731
    means = {}
    for name in ORACLES:
        scores = []
        for seed in (7, 1):  # two runs, so one lucky random draw cannot decide
            kwargs = {"num_initial_points": 4} if name == "bayesian" else {}
            oracle = ORACLES[name](ORACLE_SPACE, (lo, hi), max_trials=12, seed=seed, **kwargs)
            oracle._set_project_dir(str(tmp_path / f"{name}{seed}"), "p")
            paths = _drive(oracle, 12, ORACLE_SPACE, score=score)
            assert all(lo <= table.path_macs(p) <= hi for p in paths)
            scores += [score(p, 0) for p in paths[4:]]
        means[name] = np.mean(scores)
    assert means["bayesian"] > means["random"] + 0.05, means


@pytest.mark.parametrize("algorithm", sorted(ORACLES))
def test_oracle_state_reloads_and_guards_its_range(algorithm, table, tmp_path):
    rng = _narrow_range(table, 0.5, 0.1)
    kwargs = {"num_initial_points": 2} if algorithm == "bayesian" else {}
    first = ORACLES[algorithm](ORACLE_SPACE, rng, max_trials=4, seed=5, **kwargs)
    first._set_project_dir(str(tmp_path), "p")
    before = _drive(first, 2, ORACLE_SPACE)
    first.save()

    resumed = ORACLES[algorithm](ORACLE_SPACE, rng, max_trials=4, seed=5, **kwargs)
    resumed._set_project_dir(str(tmp_path), "p")
    resumed.reload()
    after = _drive(resumed, 4, ORACLE_SPACE)
    assert len(after) == 2, "the reloaded oracle should only fill the remaining budget"
    assert len(set(before + after)) == 4
    assert all(rng[0] <= table.path_macs(p) <= rng[1] for p in after)

    other = ORACLES[algorithm](ORACLE_SPACE, (rng[0], rng[1] + 1), max_trials=4, **kwargs)
    other._set_project_dir(str(tmp_path), "p")
    with pytest.raises(ValueError, match="searched with MACs range"):
        other.reload()


def test_random_oracle_is_reproducible(table, tmp_path):
    rng = _narrow_range(table, 0.4, 0.05)
    runs = []
    for k in range(2):
        oracle = tuner.MacsRandomSearchOracle(ORACLE_SPACE, rng, max_trials=5, seed=11)
        oracle._set_project_dir(str(tmp_path / str(k)), "p")
        runs.append(_drive(oracle, 5, ORACLE_SPACE))
    assert runs[0] == runs[1]


def test_oracle_stops_when_range_is_exhausted(table, tmp_path):
    # Only the cheapest path fits: one trial, then the oracle stops instead of repeating it.
    oracle = tuner.MacsRandomSearchOracle(ORACLE_SPACE, (None, table.min_macs), max_trials=5,
                                          seed=1, max_tries=300)
    oracle._set_project_dir(str(tmp_path), "p")
    paths = _drive(oracle, 5, ORACLE_SPACE)
    assert len(paths) == 1 and table.path_macs(paths[0]) == table.min_macs


@pytest.mark.parametrize("algorithm", sorted(ORACLES))
def test_unreachable_range_names_reachable_range(algorithm, table):
    reach = rf"\[{table.min_macs:,}, {table.max_macs:,}\]"
    with pytest.raises(tuner.MacsRangeError, match=reach):
        ORACLES[algorithm](ORACLE_SPACE, (table.max_macs + 1, None), max_trials=2)
    with pytest.raises(tuner.MacsRangeError, match=reach):
        ORACLES[algorithm](ORACLE_SPACE, (0, table.min_macs - 1), max_trials=2)
    with pytest.raises(ValueError, match="above max"):
        ORACLES[algorithm](ORACLE_SPACE, (2e6, 1e6), max_trials=2)


def test_range_with_no_path_inside_fails_clearly(table):
    # Reachable bounds straddle the range, but no sum of op costs lands in this 1-MAC window
    # just above the cheapest path (the next cheapest differs by hundreds of MACs).
    lo = table.min_macs + 1
    with pytest.raises(tuner.MacsRangeError, match="found no new path.*widen it"):
        tuner.sample_path_in_range(ORACLE_SPACE, (lo, lo), seed=0, max_tries=300)
    # The same window on the cheapest path itself is found.
    path = tuner.sample_path_in_range(ORACLE_SPACE, (table.min_macs, table.min_macs), seed=0)
    assert table.path_macs(path) == table.min_macs


# -- tune ----------------------------------------------------------------------------------------

TUNE_SPACE = Space("mbconv", depth=1, resolution=32, width=0.25, num_classes=10)


def digits_32(n_train=192, n_val=96):
    """sklearn digits (8x8 grey) as 32x32x3 float32 images in [-1, 1], int32 labels."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0 * 2.0 - 1.0
    images = np.repeat(np.repeat(images, 4, axis=1), 4, axis=2)
    images = np.repeat(images[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int32)
    train = tf.data.Dataset.from_tensor_slices((images[:n_train], labels[:n_train]))
    val = tf.data.Dataset.from_tensor_slices((images[-n_val:], labels[-n_val:]))
    return train, val


@pytest.mark.slow  # two real trainings: ~60 s on a shared 2-core CPU
def test_tune_runs_writes_json_and_resumes(tmp_path, monkeypatch):
    train, val = digits_32()
    table = flops.cost_table(TUNE_SPACE)
    macs_range = (None, (table.min_macs + table.max_macs) // 2)
    fits, interrupt_at = [], [2]
    original_fit = tuner.CreamHyperModel.fit

    def counting_fit(self, hp, model, *args, **kwargs):
        fits.append(tuner.path_from_hyperparameters(hp, TUNE_SPACE))
        if len(fits) == interrupt_at[0]:
            raise KeyboardInterrupt  # the user stops the run as the second trial starts
        return original_fit(self, hp, model, *args, **kwargs)

    monkeypatch.setattr(tuner.CreamHyperModel, "fit", counting_fit)
    workdir = str(tmp_path / "tune")
    results_file = os.path.join(workdir, tuner.RESULTS_FILE)
    kwargs = dict(epochs_per_trial=1, batch_size=32, macs_range=macs_range, seed=0, verbose=0)
    with pytest.raises(KeyboardInterrupt):
        tuner.tune(TUNE_SPACE, train, val, workdir, max_trials=2, **kwargs)
    assert len(fits) == 2
    with open(results_file) as f:
        partial = json.load(f)  # written when the first trial ended
    assert [t["trial_id"] for t in partial["trials"]] == ["0"]

    # Resuming keeps the finished trial and reruns only the interrupted one, with its path.
    interrupt_at[0] = None
    result = tuner.tune(TUNE_SPACE, train, val, workdir, max_trials=2, **kwargs)
    assert len(fits) == 3 and fits[2] == fits[1] != fits[0]
    assert len(result.trials) == 2
    finished = {k: v for k, v in partial["trials"][0].items() if k != "rank"}
    assert finished in [t.to_json() for t in result.trials]

    with open(os.path.join(workdir, tuner.RESULTS_FILE)) as f:
        data = json.load(f)
    best = data["best"]
    assert best["trial_id"] == result.best.trial_id
    best_path = tuple(tuple(s) for s in best["path"])
    assert best_path == result.best.path
    assert best["paper"] == arch_lib.path_to_arch(best_path, TUNE_SPACE).to_paper()
    assert best["macs"] == table.path_macs(best_path) <= macs_range[1]
    assert 0.0 <= best["val_accuracy"] <= 1.0
    assert [t["rank"] for t in data["trials"]] == [1, 2]
    accs = [t["val_accuracy"] for t in data["trials"]]
    assert accs == sorted(accs, reverse=True) and accs[0] == best["val_accuracy"]
    assert {t["status"] for t in data["trials"]} == {"COMPLETED"}
    assert sorted(tuple(tuple(s) for s in t["path"]) for t in data["trials"]) == sorted([fits[0], fits[2]])
    # MACs were recorded as a trial metric by keras-tuner too.
    trial_json = os.path.join(workdir, tuner.PROJECT_NAME, f"trial_{best['trial_id']}",
                              "trial.json")
    with open(trial_json) as f:
        metrics = json.load(f)["metrics"]["metrics"]
    assert metrics["macs"]["observations"][0]["value"][0] == best["macs"]
    assert not [n for n in os.listdir(workdir) if n.endswith(".tmp")]

    # A run whose budget is spent trains nothing and returns the same best.
    again = tuner.tune(TUNE_SPACE, train, val, workdir, max_trials=2, **kwargs)
    assert len(fits) == 3 and again.best == result.best
    # Other settings in the same workdir are refused, naming what changed.
    with pytest.raises(ValueError, match=r"holds a tuning run with other settings: "
                                         r"epochs_per_trial \(1 there, 2 now\)"):
        tuner.tune(TUNE_SPACE, train, val, workdir, max_trials=3,
                   **dict(kwargs, epochs_per_trial=2))


def test_tune_rejects_bad_input(tmp_path):
    train, val = digits_32(16, 16)
    with pytest.raises(ValueError, match="unknown algorithm 'grid'"):
        tuner.tune(TUNE_SPACE, train, val, str(tmp_path), algorithm="grid")
    with pytest.raises(ValueError, match="unbatched"):
        tuner.tune(TUNE_SPACE, train.batch(4), val, str(tmp_path))
    small = train.map(lambda x, y: (x[:16, :16], y))
    with pytest.raises(ValueError, match=r"\(16, 16, 3\); the space expects \(32, 32, 3\)"):
        tuner.tune(TUNE_SPACE, small, val, str(tmp_path))
    with pytest.raises(ValueError, match="steps_per_epoch"):
        tuner.tune(TUNE_SPACE, train.repeat(), val, str(tmp_path))
    with pytest.raises(ValueError, match="val_ds repeats forever"):
        tuner.tune(TUNE_SPACE, train, val.repeat(), str(tmp_path))
    with pytest.raises(tuner.MacsRangeError, match="reach"):
        tuner.tune(TUNE_SPACE, train, val, str(tmp_path), macs_range=(1, 2))
