"""ranking: the statistics against scipy and by hand, and the check itself: candidates, records
as it goes, resumes, reruns that write nothing, more seeds, and refusals of another ranking.

The library cases score paths on a tiny untrained supernet with the real `select.evaluate_path`
and replace the standalone training (tens of seconds each) by a stand-in that says what it was
asked; the real trainings run in the slow end-to-end case through run.py.
"""
import json
import os
import shutil
import types

import numpy as np
import pytest
import scipy.stats

import conftest
from conftest import run_py
from cream_tf import cli, data, flops, job, ranking
from cream_tf import select as select_lib
from cream_tf.board import Board
from cream_tf.errors import InputError
from cream_tf.retrain import RetrainConfig
from cream_tf.sampler import Sampler
from cream_tf.space import Space
from cream_tf.supernet import SuperNet, nested_path

# -- statistics ------------------------------------------------------------------------------

PAIRS = {
    "no ties": ([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]),
    "ties in both": ([1, 1, 2, 3], [1, 2, 2, 3]),
    "many ties": ([0, 0, 0, 1, 1, 2, 2, 2], [3, 1, 1, 2, 2, 0, 5, 5]),
    "reversed": ([1, 2, 3, 4], [9, 7, 5, 1]),
    "floats": ([71.3, 70.1, 69.9, 72.5, 65.0, 71.3], [95.1, 94.0, 94.3, 96.2, 93.0, 95.5]),
    "two": ([1.0, 2.0], [3.0, 1.0]),
}


@pytest.mark.parametrize("x,y", PAIRS.values(), ids=list(PAIRS))
def test_tau_and_rho_equal_scipy_with_ties(x, y):
    assert ranking.kendall_tau(x, y) == pytest.approx(scipy.stats.kendalltau(x, y).statistic,
                                                      abs=1e-12)
    assert ranking.spearman_rho(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic,
                                                       abs=1e-12)
    np.testing.assert_allclose(ranking.average_ranks(x), scipy.stats.rankdata(x))


def test_tau_and_rho_equal_scipy_on_random_tied_data():
    rng = np.random.default_rng(7)
    for _ in range(100):
        n = int(rng.integers(3, 25))
        x, y = rng.integers(0, 4, n).astype(float), rng.integers(0, 6, n).astype(float)
        if len(set(x)) == 1 or len(set(y)) == 1:
            continue
        assert ranking.kendall_tau(x, y) == pytest.approx(scipy.stats.kendalltau(x, y).statistic)
        assert ranking.spearman_rho(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic)


GOLDEN = [  # worked by hand (docs/ranking.md shows the first)
    ([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], 0.6, 0.8),       # 8 concordant, 2 discordant of 10 pairs
    ([1, 1, 2, 3], [1, 2, 2, 3], 0.8, 5 / 6),            # tau-b: 4 / sqrt(5 * 5)
    ([1, 2, 3, 4], [4, 3, 2, 1], -1.0, -1.0),
]


@pytest.mark.parametrize("x,y,tau,rho", GOLDEN)
def test_golden_values(x, y, tau, rho):
    assert ranking.kendall_tau(x, y) == pytest.approx(tau)
    assert ranking.spearman_rho(x, y) == pytest.approx(rho)


def test_a_constant_side_has_no_correlation_and_bad_input_is_refused():
    assert np.isnan(ranking.kendall_tau([1, 1, 1], [1, 2, 3]))
    assert np.isnan(ranking.spearman_rho([1, 2, 3], [5, 5, 5]))
    with pytest.raises(ValueError, match="one length"):
        ranking.kendall_tau([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="finite"):
        ranking.spearman_rho([1, float("nan")], [1, 2])


def _noisy(n, noise, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return x, x + noise * rng.normal(size=n)


@pytest.mark.parametrize("n,noise,seed", [(8, 0.5, 0), (20, 1.0, 1), (20, 3.0, 2), (40, 0.2, 3)])
@pytest.mark.parametrize("statistic", [ranking.kendall_tau, ranking.spearman_rho],
                         ids=["tau", "rho"])
def test_bootstrap_interval_holds_the_estimate_and_depends_on_the_seed_only(n, noise, seed,
                                                                            statistic):
    x, y = _noisy(n, noise, seed)
    low, high = ranking.bootstrap_interval(statistic, x, y, resamples=1000, seed=5)
    assert -1.0 <= low <= statistic(x, y) <= high <= 1.0
    assert (low, high) == ranking.bootstrap_interval(statistic, x, y, resamples=1000, seed=5)


def test_bootstrap_resamples_come_from_the_seed():
    x, y = _noisy(20, 1.0, 0)
    mean = lambda a, b: float(np.mean(a) + np.mean(b))  # continuous: every resample shows
    assert (ranking.bootstrap_interval(mean, x, y, seed=5) !=
            ranking.bootstrap_interval(mean, x, y, seed=6))
    low, high = ranking.bootstrap_interval(mean, x, y, resamples=4000, seed=5, level=0.5)
    spread = np.std(x + y) / np.sqrt(20)  # the mean's standard error: a 50% interval ~ 1.35 of it
    assert high - low == pytest.approx(1.35 * spread, rel=0.15)


def test_bootstrap_leaves_out_resamples_without_an_order():
    # two paths: half the resamples draw one path twice (a tie: no tau), the rest give -1
    low, high = ranking.bootstrap_interval(ranking.kendall_tau, [1, 2], [2, 1], resamples=200)
    assert (low, high) == (-1.0, -1.0)
    assert np.isnan(ranking.bootstrap_interval(ranking.kendall_tau, [1, 1], [2, 1])[0])


TOP_K = [
    ([5, 4, 3, 2, 1], [5, 4, 3, 2, 1], 3, 3),
    ([5, 4, 3, 2, 1], [1, 2, 3, 4, 5], 2, 0),
    ([5, 4, 3, 2, 1], [1, 2, 3, 4, 5], 3, 1),   # the middle path is in both top-3
    ([9, 1, 8, 2, 7, 3], [6, 5, 1, 4, 3, 2], 3, 1),
    ([1, 1, 0], [0, 1, 1], 1, 0),                # ties: the earlier path ranks higher
    ([1, 1, 0], [1, 0, 1], 1, 1),
]


@pytest.mark.parametrize("scores,accuracies,k,overlap", TOP_K)
def test_top_k_overlap(scores, accuracies, k, overlap):
    assert ranking.top_k_overlap(scores, accuracies, k) == overlap


def test_statistics_uses_k_of_at_most_five_and_is_json():
    stats = ranking.statistics([1, 2, 3], [1, 3, 2], resamples=50, seed=1)
    assert stats["top_k"] == {"k": 3, "overlap": 3}
    assert ranking.statistics(list(range(9)), list(range(9)), resamples=50)["top_k"]["k"] == 5
    assert stats["kendall_tau"]["value"] == pytest.approx(1 / 3)
    assert json.loads(json.dumps(stats)) == stats
    tied = ranking.statistics([1, 1, 1], [1, 2, 3], resamples=20)
    assert tied["kendall_tau"] == {"value": None, "low": None, "high": None}  # no NaN in JSON


# -- settings --------------------------------------------------------------------------------

@pytest.mark.parametrize("changes,field", [(dict(paths=1), "paths"), (dict(epochs=0), "epochs"),
                                           (dict(seeds=0), "seeds"), (dict(top_k=0), "top_k")])
def test_config_bounds(changes, field):
    with pytest.raises(ValueError, match=f"RankConfig.{field} must be an int >= "):
        ranking.RankConfig(**changes)


def test_training_is_the_recipe_over_fewer_epochs():
    recipe = RetrainConfig(epochs=500, warmup_epochs=3.0, lr=0.1, batch_size=64)
    config = ranking.RankConfig(epochs=10, seed=4, retrain=recipe)
    second = config.training(1)
    assert (second.epochs, second.seed, second.lr, second.batch_size) == (10, 5, 0.1, 64)
    assert second.warmup_epochs == pytest.approx(3.0 * 10 / 500)


# -- the check on a tiny supernet ------------------------------------------------------------

SPACE = Space("mbconv", depth=1, resolution=32, width=0.25, num_classes=4)


@pytest.fixture(scope="module")
def world():
    """An untrained tiny supernet with a board of two paths, its sampler and data."""
    import keras

    keras.utils.set_random_seed(0)
    splits, info = data.load("synthetic:4", 32)
    supernet = SuperNet(SPACE)
    board = Board(3, SPACE.num_layers, 2, (32, 32, 3), 4)
    table = flops.cost_table(SPACE)
    for score, path in ((60.0, [3, 3, 3, 3, 3]), (50.0, [0, 1, 2, 3, 4])):
        board.update(path, score, table.path_macs(nested_path(path, SPACE)),
                     np.zeros((2, 32, 32, 3), np.float32), np.full((2, 4), 0.25, np.float32))
    sampler = Sampler(SPACE, prior="release", seed=3)
    return types.SimpleNamespace(search=types.SimpleNamespace(supernet=supernet, board=board),
                                 sampler=sampler, splits=splits, info=info)


CONFIG = ranking.RankConfig(paths=3, epochs=1, seeds=1, seed=2, bn_batches=1, batch_size=64,
                            resamples=100, retrain=RetrainConfig(epochs=1, warmup_epochs=0))


class Trainings:
    """Stands in for the standalone trainings: records each (path, seed) it is asked for and
    returns an accuracy made from the path and the seed."""

    def __init__(self, monkeypatch):
        self.calls = []
        monkeypatch.setattr(ranking, "_train", self)

    def __call__(self, retrain_lib, space, path, splits, info, workdir, config, strategy):
        self.calls.append((tuple(map(tuple, path)), config.seed))
        assert config.epochs == CONFIG.epochs and os.path.basename(workdir) == f"seed{config.seed}"
        return float(10 * sum(map(sum, path)) % 97 + config.seed)


class Scores:
    """Counts the supernet scores (the real `select.evaluate_path`)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        self.evaluate = select_lib.evaluate_path
        monkeypatch.setattr(select_lib, "evaluate_path", self)

    def __call__(self, *args):
        self.calls += 1
        return self.evaluate(*args)


def _rank(world, folder, config=CONFIG, **kwargs):
    return ranking.rank(SPACE, world.search, world.sampler, world.splits, world.info,
                        str(folder), config, **kwargs)


def snapshot(folder):
    return {os.path.relpath(os.path.join(root, n), folder):
            os.stat(os.path.join(root, n)).st_mtime_ns
            for root, _, names in os.walk(folder) for n in names}


def test_candidates_are_the_samplers_paths_then_the_boards_in_range(world):
    rows = ranking.candidate_paths(world.sampler, world.search.board.entries(), 4)
    assert rows == ranking.candidate_paths(world.sampler, world.search.board.entries(), 4)
    flats = [tuple(o for s in r["path"] for o in s) for r in rows]
    assert len(set(flats)) == len(flats) == 6  # 4 drawn, both board paths on top
    assert flats[-2:] == [(3, 3, 3, 3, 3), (0, 1, 2, 3, 4)]
    assert [r["sampled"] for r in rows] == [True] * 4 + [False] * 2
    assert [r["on_board"] for r in rows] == [False] * 4 + [True] * 2
    drawn = []
    for step in range(ranking.FIRST_STEP, ranking.FIRST_STEP + 50):
        flat = tuple(int(o) for o in world.sampler.sample(step))
        if flat not in drawn:
            drawn.append(flat)
    assert flats[:4] == drawn[:4]  # the search's sampler, reused
    table = flops.cost_table(SPACE)
    assert all(r["macs"] == table.path_macs(r["path"]) for r in rows)
    # a board path above the MACs range is no candidate
    big, small = rows[-2]["macs"], rows[-1]["macs"]
    assert big > small
    narrow = Sampler(SPACE, prior="release", seed=3, macs_range=(None, small))
    kept = ranking.candidate_paths(narrow, world.search.board.entries(), 2)
    kept = [tuple(o for s in r["path"] for o in s) for r in kept]
    assert (3, 3, 3, 3, 3) not in kept and (0, 1, 2, 3, 4) in kept


def test_too_few_distinct_paths_is_bad_input():
    space = Space("mbconv", depth=1, resolution=32, width=0.25, num_classes=4)
    table = flops.cost_table(space)
    only = table.path_macs([[0], [0], [0], [0], [0]])
    sampler = Sampler(space, prior="uniform", seed=0, macs_range=(only, only))
    with pytest.raises(InputError, match="drew only 1 distinct paths"):
        ranking.candidate_paths(sampler, [], 2)


def test_rank_records_each_result_and_resumes_after_a_kill(world, tmp_path, monkeypatch):
    trainings, scores = Trainings(monkeypatch), Scores(monkeypatch)
    folder = tmp_path / "rank"

    def killed_after_the_first_training(kind, index, seed):
        if kind == "train":
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        _rank(world, folder, on_record=killed_after_the_first_training)
    saved = json.loads((folder / ranking.RESULT_FILE).read_text())
    assert scores.calls == 5 and len(trainings.calls) == 1
    assert all(r["supernet_score"] is not None for r in saved["paths"])
    assert [list(r["accuracies"]) for r in saved["paths"]] == [["2"], [], [], [], []]
    assert saved["complete"] is False and saved["statistics"] is None
    first = trainings.calls[0]

    done = _rank(world, folder)
    assert scores.calls == 5  # every score was kept
    assert len(trainings.calls) == 5 and first not in trainings.calls[1:]  # nothing redone
    assert done["complete"] and done == json.loads((folder / ranking.RESULT_FILE).read_text())
    rows = done["paths"]
    assert [r["supernet_score"] for r in rows][:1] == [saved["paths"][0]["supernet_score"]]
    means = [r["mean"] for r in rows]
    assert means == [r["accuracies"]["2"] for r in rows] and all(r["std"] is None for r in rows)
    stats = done["statistics"]
    scored = [r["supernet_score"] for r in rows]
    assert stats["kendall_tau"]["value"] == pytest.approx(
        scipy.stats.kendalltau(scored, means).statistic)
    assert stats["spearman_rho"]["value"] == pytest.approx(
        scipy.stats.spearmanr(scored, means).statistic)
    assert stats["top_k"]["k"] == 5 and stats["paths"] == 5
    for row in rows:  # the path's score is selection's measure, re-measured here
        assert row["notation"].startswith("DS | MB")
    row = rows[-1]
    assert row["supernet_score"] == pytest.approx(select_lib.evaluate_path(
        SPACE, world.search.supernet, row["path"], *select_lib.selection_inputs(
            world.splits, world.info, 32), CONFIG.bn_batches, CONFIG.batch_size))
    pytest.importorskip("matplotlib")
    assert (folder / ranking.PLOT_FILE).stat().st_size > 1000


@pytest.fixture(scope="module")
def finished_once(world, tmp_path_factory):
    folder = tmp_path_factory.mktemp("finished") / "rank"
    with pytest.MonkeyPatch.context() as patch:
        Trainings(patch)
        _rank(world, folder)
    return folder


@pytest.fixture
def finished(finished_once, tmp_path, monkeypatch):
    """A copy of a finished ranking (mtimes kept) in tmp_path/rank, and fresh stand-ins."""
    folder = tmp_path / "rank"
    shutil.copytree(finished_once, folder)
    return folder, Trainings(monkeypatch), Scores(monkeypatch)


def test_a_rerun_of_a_finished_ranking_writes_nothing(world, finished):
    folder, trainings, scores = finished
    before = snapshot(folder)
    assert set(before) >= {"rank.json", "run.json"}
    again = _rank(world, folder)
    assert snapshot(folder) == before
    assert (trainings.calls, scores.calls) == ([], 0)
    assert again["complete"]


def test_more_seeds_extend_a_ranking_fewer_are_refused(world, finished):
    folder, trainings, scores = finished
    more = _rank(world, folder, ranking.RankConfig(**{**vars(CONFIG), "seeds": 2}))
    assert len(trainings.calls) == 5 and {s for _, s in trainings.calls} == {3}
    assert scores.calls == 0 and more["seeds"] == [2, 3]
    assert all(r["std"] is not None and r["mean"] == pytest.approx(
        np.mean(list(r["accuracies"].values()))) for r in more["paths"])
    assert json.loads((folder / "run.json").read_text())["seeds"] == 2
    before = snapshot(folder)
    with pytest.raises(InputError) as info:
        _rank(world, folder)  # back to one seed
    assert "holds a ranking over 2 seeds" in str(info.value) and "\n" not in str(info.value)
    assert snapshot(folder) == before


@pytest.mark.parametrize("changes,named", [
    (dict(epochs=2), "epochs (1 there, 2 now)"),
    (dict(paths=4), "paths (3 there, 4 now)"),
    (dict(seed=5), "seed (2 there, 5 now)"),
    (dict(bn_batches=2), "bn_batches (1 there, 2 now)"),
    (dict(retrain=RetrainConfig(epochs=1, warmup_epochs=0, lr=0.1)), "retrain.lr (0.064 there"),
])
def test_another_rankings_settings_are_refused_in_one_line(world, finished, changes, named):
    folder, trainings, _ = finished
    before, calls = snapshot(folder), len(trainings.calls)
    with pytest.raises(InputError) as info:
        _rank(world, folder, ranking.RankConfig(**{**vars(CONFIG), **changes}))
    message = str(info.value)
    assert "holds a ranking with other settings" in message and named in message
    assert "\n" not in message
    assert snapshot(folder) == before and len(trainings.calls) == calls


def test_other_candidate_paths_are_refused(world, finished):
    folder, _, _ = finished
    before = snapshot(folder)
    other = types.SimpleNamespace(**vars(world))
    other.sampler = Sampler(SPACE, prior="release", seed=4)  # not the search's sampler
    with pytest.raises(InputError, match="ranks other paths"):
        ranking.rank(SPACE, other.search, other.sampler, world.splits, world.info, str(folder),
                     CONFIG)
    assert snapshot(folder) == before


def test_a_stop_signal_keeps_what_was_measured(world, tmp_path, monkeypatch):
    import signal

    from cream_tf import safety

    Trainings(monkeypatch)
    folder = tmp_path / "rank"

    def ctrl_c_during_the_second_score(kind, index, seed):
        if (kind, index) == ("score", 1):
            os.kill(os.getpid(), signal.SIGINT)  # caught: a flag the loop reads

    with pytest.raises(safety.Interrupted, match="ranking interrupted by SIGINT") as info:
        _rank(world, folder, on_record=ctrl_c_during_the_second_score)
    assert info.value.exit_code == 130
    saved = json.loads((folder / ranking.RESULT_FILE).read_text())
    assert [r["supernet_score"] is not None for r in saved["paths"]] == [True, True] + [False] * 3
    assert not [n for n in os.listdir(folder) if n.startswith(".tmp-")]


# -- run.py's side -----------------------------------------------------------------------------

def test_settings_give_the_ranking_its_config_and_flag_names():
    s = conftest.settings(rank_paths=5, rank_epochs=3, rank_seeds=2, seed=7, select_bn_batches=4,
                          retrain_epochs=30, retrain_warmup_epochs=3.0, batch_size=512)
    config = s.rank_config()
    assert (config.paths, config.epochs, config.seeds, config.seed) == (5, 3, 2, 7)
    assert (config.bn_batches, config.batch_size) == (4, 256)  # selection's scoring batch
    assert config.training(0).warmup_epochs == pytest.approx(0.3)
    from cream_tf import settings as settings_lib

    names = {k: settings_lib.rank_flag(k) for k in config.identity()}
    assert names["epochs"] == "--rank_epochs" and names["retrain.lr"] == "--retrain_lr"
    assert names["retrain.rho"] == "retrain.rho"  # no flag sets it


def test_job_refuses_another_ranking_before_reading_the_search(tmp_path):
    workdir = str(tmp_path / "w")
    first = conftest.settings(workdir=workdir, mode="rank", rank_epochs=8)
    ranking.rank_identity(os.path.join(workdir, "rank"), first.rank_config()).write(seeds=1)
    with pytest.raises(cli.UsageError) as info:  # no search here: the ranking is refused first
        job.Job(conftest.settings(workdir=workdir, mode="rank", rank_epochs=4)).rank()
    message = str(info.value)
    assert "--rank_epochs (8 there, 4 now)" in message and "\n" not in message
    assert "rank in a new --workdir, or delete" in message and "--rank_seeds may grow" in message


def test_job_on_a_workdir_without_a_search_says_what_select_says(tmp_path):
    def error(mode, method):
        with pytest.raises(cli.UsageError) as info:
            getattr(job.Job(conftest.settings(workdir=str(tmp_path / "w"), mode=mode)), method)()
        return str(info.value)

    said = error("rank", "rank")
    assert said == error("select", "select") and "holds no search checkpoint" in said
    assert not (tmp_path / "w").exists()


# -- end to end ------------------------------------------------------------------------------

TINY = ["--dataset=digits", "--resolution=32", "--depth=1", "--width=0.25", "--batch_size=16",
        "--search_epochs=1", "--warmup_epochs=0", "--steps_per_epoch=4", "--board_size=2",
        "--board_images=2", "--meta_interval=3", "--select_bn_batches=2", "--strategy=default",
        "--seed=1", "--deterministic", "--retrain_batch_size=128", "--retrain_epochs=1",
        "--retrain_warmup_epochs=0", "--ema_decay=0"]
RANK = ["--mode=rank", "--rank_paths=2", "--rank_epochs=1", "--rank_seeds=1"]

# SIGKILL once the first standalone training is recorded: nothing of ours runs after it.
KILL_AFTER_FIRST_TRAINING = """
import os, signal
from cream_tf import ranking
_rank = ranking.rank
def rank(*args, **kwargs):
    def kill(kind, index, seed):
        if kind == "train":
            os.kill(os.getpid(), signal.SIGKILL)
    return _rank(*args, on_record=kill, **kwargs)
ranking.rank = rank
"""


def _error_lines(result):
    return [l for l in result.stderr.splitlines() if l.startswith("run.py: error:")]


@pytest.mark.slow  # a tiny search, then four standalone trainings: minutes on 2 cores
def test_rank_mode_end_to_end(tmp_path):
    workdir = tmp_path / "w"
    common = [f"--workdir={workdir}", *TINY]
    early = run_py([*common, *RANK], tmp_path)
    assert early.returncode == 2 and len(_error_lines(early)) == 1  # no search yet
    searched = run_py(["--mode=search", *common], tmp_path)
    assert searched.returncode == 0, searched.stderr[-4000:]
    board = json.loads((workdir / "search" / "board.json").read_text())

    killed = run_py([*common, *RANK], tmp_path, prelude=KILL_AFTER_FIRST_TRAINING)
    assert killed.returncode == -9, killed.stderr[-4000:]
    rank_dir = workdir / "rank"
    saved = json.loads((rank_dir / "rank.json").read_text())
    assert [len(r["accuracies"]) for r in saved["paths"]][:2] == [1, 0]
    first = rank_dir / "train" / "path000" / "seed1" / "final.keras"
    first_mtime = first.stat().st_mtime_ns

    done = run_py([*common, *RANK], tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Kendall tau-b" in done.stdout and "top-" in done.stdout
    trained = [l for l in done.stdout.splitlines() if l.startswith("rank: path") and
               "training" in l]
    assert trained and not [l for l in trained if l.startswith("rank: path 1/")]
    assert first.stat().st_mtime_ns == first_mtime  # the first training was not redone
    report = json.loads((rank_dir / "rank.json").read_text())
    rows = report["paths"]
    assert report["complete"] and len(rows) >= 2 and report["held_out"] == "test"
    assert rows[0]["accuracies"] == saved["paths"][0]["accuracies"]
    on_board = {tuple(e["path"]) for e in board}
    assert {tuple(o for s in r["path"] for o in s) for r in rows if r["on_board"]} <= on_board
    for row in rows:
        assert set(row) >= {"path", "notation", "macs", "supernet_score", "accuracies", "mean",
                            "std"}
        assert 0 <= row["mean"] <= 100 and list(row["accuracies"]) == ["1"]
    stats = report["statistics"]
    assert stats["top_k"]["k"] == min(5, len(rows))
    if stats["kendall_tau"]["value"] is not None:
        assert stats["kendall_tau"]["low"] <= stats["kendall_tau"]["value"] <= \
            stats["kendall_tau"]["high"]
    pytest.importorskip("matplotlib")
    assert (rank_dir / "rank.png").stat().st_size > 1000

    before = snapshot(workdir)
    before.pop("run.lock", None)
    again = run_py([*common, *RANK], tmp_path)
    assert again.returncode == 0, again.stderr[-4000:]
    after = snapshot(workdir)
    after.pop("run.lock", None)
    assert after == before  # a finished ranking: nothing written

    other = run_py([*common, *RANK[:2], "--rank_epochs=2"], tmp_path)
    assert other.returncode == 2
    line, = _error_lines(other)
    assert "--rank_epochs (1 there, 2 now)" in line and "new --workdir" in line
