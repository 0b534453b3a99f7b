"""Reliability: non-finite steps are skipped and counted, bad flags and corrupted checkpoints give
clear errors and leave the workdir as it was, and killed or interrupted runs resume exactly."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import types

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings, strategies as st

import conftest
from cream_tf import cli, safety, trainer
from cream_tf.space import Space

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPACE = Space("mbconv", depth=1, resolution=32, width=0.25, num_classes=10)
PROPS = settings(max_examples=12, derandomize=True, deadline=None,
                 suppress_health_check=list(HealthCheck))


def _arrays(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 32, 32, 3)).astype(np.float32)
    y = (np.arange(n) % 10).astype(np.int32)
    return x, y


def _datasets(x, y):
    train = tf.data.Dataset.from_tensor_slices((x, y)).repeat()  # fixed order: batch k = rows 4k..
    return train, tf.data.Dataset.from_tensor_slices(_arrays(16, seed=1))


def _config(**kw):
    base = dict(epochs=1, steps_per_epoch=6, warmup_epochs=1, batch_size=4, learning_rate=0.1,
                board_size=2, board_images=2, meta_slice=2, checkpoint_interval=2, seed=1,
                verbose=0)
    base.update(kw)
    return trainer.SearchConfig(**base)


def listing(folder):
    """Every path under `folder` with size and mtime: equal listings mean nothing was touched."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            st_ = os.stat(path)
            out[os.path.relpath(path, folder)] = (st_.st_size if name in files else -1,
                                                  st_.st_mtime_ns)
    return out


# -- non-finite steps --------------------------------------------------------------------------

def _snapshot(result_or_state):
    net, opt = result_or_state.supernet, result_or_state.optimizer
    return ([v.numpy().copy() for v in net.weights],
            [v.numpy().copy() for v in opt.momentums])


@pytest.fixture(scope="module")
def nan_run(tmp_path_factory):
    """One search over a fixed data stream: a NaN pixel in the batch of step 2, then every batch
    from step 9 on is NaN (checkpoints every 2 steps, max_bad_steps=3). Records each step's logs
    and a snapshot of weights, BN statistics and momentum after it."""
    x, y = _arrays()
    x[5, 3, 3, 0] = np.nan  # rows 4..7 form the batch of step 2
    x[32:] = np.nan         # steps 9.. (rows 32..)
    workdir = str(tmp_path_factory.mktemp("nan") / "w")
    seen, snapshots, held = {}, {}, {}
    original = trainer._SearchState.__init__

    def capture(self, *a, **k):
        original(self, *a, **k)
        held["state"] = self

    def callback(step, logs):
        seen[step + 1] = logs
        snapshots[step + 1] = _snapshot(held["state"])

    trainer._SearchState.__init__ = capture
    try:
        with pytest.raises(safety.TooManyBadSteps) as info:
            trainer.search(SPACE, *_datasets(x, y), workdir,
                           _config(steps_per_epoch=20, max_bad_steps=3, warmup_epochs=0), callback=callback)
    finally:
        trainer._SearchState.__init__ = original
    return types.SimpleNamespace(workdir=workdir, seen=seen, snapshots=snapshots,
                                 error=str(info.value), state=held["state"])


def test_one_nan_image_skips_that_step_only(nan_run):
    seen, snap = nan_run.seen, nan_run.snapshots
    # step 11 (the third bad one in a row) stops the search before its callback
    assert [seen[s]["finite"] for s in range(1, 11)] == [True, False] + [True] * 6 + [False] * 2
    assert seen[8]["bad_steps"] == 1 and seen[10]["bad_steps"] == 3 and 11 not in seen
    # the bad step changed nothing: weights, BN statistics and momentum are bit-identical
    for before, after in zip(snap[1][0] + snap[1][1], snap[2][0] + snap[2][1]):
        np.testing.assert_array_equal(before, after)
    # the good step after it did move the weights, and everything stays finite
    assert any(not np.array_equal(a, b) for a, b in zip(snap[2][0], snap[3][0]))
    for v in nan_run.state.supernet.weights:
        assert np.isfinite(v.numpy()).all(), v.path
    board = nan_run.state.board
    assert np.isfinite(board.scores.numpy()[:int(board.size.numpy())]).all()


def test_nan_every_step_stops_with_the_step_path_and_last_good_checkpoint(nan_run):
    message, workdir = nan_run.error, nan_run.workdir
    assert "stopped at step 11" in message and "3 steps in a row" in message
    assert "last path [" in message and workdir in message
    # checkpoints at 2, 4, 6, 8; none at 10, inside the bad run
    assert message.split("last good checkpoint: ")[1].startswith(
        os.path.join(workdir, "checkpoints", "ckpt-8."))
    assert not os.path.exists(os.path.join(workdir, "checkpoints", "ckpt-10.index"))


def test_load_search_reads_the_checkpoint_and_refuses_an_unfinished_search(nan_run):
    """What selection uses: the newest checkpoint (step 8 here) without a trainer."""
    config = _config(steps_per_epoch=20, max_bad_steps=3, warmup_epochs=0)
    with pytest.raises(trainer.UnfinishedSearch, match=r"trained 8 of 20 steps \(12 left\)"):
        trainer.load_search(SPACE, nan_run.workdir, config)
    loaded = trainer.load_search(SPACE, nan_run.workdir, config, allow_unfinished=True)
    assert (loaded.steps, loaded.total_steps, loaded.finished) == (8, 20, False)
    weights_at_8 = nan_run.snapshots[8][0]
    assert len(loaded.supernet.weights) == len(weights_at_8)
    for v, saved in zip(loaded.supernet.weights, weights_at_8):  # BN statistics included
        np.testing.assert_array_equal(v.numpy(), saved, err_msg=v.path)
    # steps 9 and 10 were skipped (NaN), so the board at the end is the board of step 8 (the
    # board fills from the end of the warm-up on: none here, so it is not empty)
    assert loaded.board.entries() == nan_run.state.board.entries() != []
    with pytest.raises(ValueError, match=r"holds a search with other settings: total_steps \("):
        trainer.load_search(SPACE, nan_run.workdir, _config(steps_per_epoch=21))


def test_load_search_without_a_checkpoint_says_so(tmp_path):
    with pytest.raises(trainer.UnfinishedSearch, match="holds no search checkpoint"):
        trainer.load_search(SPACE, str(tmp_path), _config())


def test_max_bad_steps_is_validated():
    with pytest.raises(ValueError, match="max_bad_steps"):
        _config(max_bad_steps=0)


@pytest.mark.slow
@pytest.mark.parametrize("poison", ["one_entry", "all_entries"])
def test_non_finite_board_never_leaves_the_student_without_a_teacher(poison):
    config = _config(steps_per_epoch=4, warmup_epochs=0, teacher="meta")
    strategy = tf.distribute.get_strategy()
    state = trainer._SearchState(SPACE, config, strategy)
    steps = trainer._StepFunctions(state)
    x, y = _arrays(8)
    rng = np.random.default_rng(0)
    for i in range(2):
        path = [int(rng.choice(layer.choices)) for layer in SPACE.layers]
        probs = np.full((2, 10), 0.1, np.float32)
        state.board.update(np.array(path), 50.0 + 10 * i, 1000 * (i + 1), x[:2], probs)
    assert int(state.board.size.numpy()) == 2
    bad = state.board.probs.numpy()
    rows = [0] if poison == "one_entry" else [0, 1]
    bad[rows] = np.nan
    state.board.probs.assign(bad)
    path = tf.constant([layer.choices[0] for layer in SPACE.layers], tf.int32)
    before = [v.numpy().copy() for v in state.supernet.trainable_variables]
    out = steps.distill(tf.constant(x[:4]), tf.constant(y[:4]), path)
    teacher = int(out["teacher"].numpy())
    assert teacher in ((1,) if poison == "one_entry" else (0,))
    assert np.isfinite(out["loss"].numpy()) and np.isfinite(out["rho"].numpy())
    # with all teacher outputs unusable the fallback teacher's logits are still finite (its
    # forward pass does not read the stored probabilities), so the step trains
    assert bool(out["finite"].numpy())
    after = [v.numpy() for v in state.supernet.trainable_variables]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))


# -- corrupted checkpoints ---------------------------------------------------------------------

CORRUPT_CONFIG = dict(steps_per_epoch=20, max_bad_steps=3)


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """A search workdir (search.json of this search) whose newest checkpoint, ckpt-8, holds
    kernels, slots and a data iterator; it is what a resumed search verifies first."""
    workdir = str(tmp_path_factory.mktemp("ckpt") / "w")
    config = _config(**CORRUPT_CONFIG)
    trainer.write_atomic(os.path.join(workdir, "search.json"), json.dumps(
        {"signature": trainer._signature(SPACE, config), "config": config.to_dict()}))
    rng = np.random.default_rng(0)
    model = tf.keras.Sequential([tf.keras.Input((16,)), tf.keras.layers.Dense(32),
                                 tf.keras.layers.Dense(10)])
    optimizer = tf.keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    data = iter(tf.data.Dataset.from_tensor_slices(rng.normal(size=(64, 16))).shuffle(64, seed=1))
    next(data)
    checkpoint = tf.train.Checkpoint(supernet=model, optimizer=optimizer, train_data=data,
                                     step=tf.Variable(8, dtype=tf.int64))
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(workdir, "checkpoints"), 3)
    manager.save(checkpoint_number=4)
    manager.save(checkpoint_number=8)
    safety.verify_checkpoint(manager.latest_checkpoint)  # intact: passes (incl. the iterator)
    return workdir


@PROPS
@given(which=st.sampled_from(["data", "index"]), cut=st.booleans(),
       where=st.floats(0.0, 0.999), bits=st.integers(1, 255))
def test_corrupted_checkpoint_is_a_clear_error_and_nothing_changes(checkpointed, which, cut,
                                                                    where, bits):
    folder = tempfile.mkdtemp(prefix="corrupt_")
    try:
        workdir = os.path.join(folder, "w")
        shutil.copytree(checkpointed, workdir)
        prefix = os.path.join(workdir, "checkpoints", "ckpt-8")
        target = prefix + (".index" if which == "index" else ".data-00000-of-00001")
        data = bytearray(open(target, "rb").read())
        at = int(where * len(data))
        if cut:
            data = data[:at]
        else:
            data[at] ^= bits
        with open(target, "wb") as f:
            f.write(bytes(data))
        before = listing(workdir)
        x, y = _arrays()
        with pytest.raises(ValueError) as info:
            trainer.search(SPACE, *_datasets(x, y), workdir, _config(**CORRUPT_CONFIG))
        message = str(info.value)
        assert f"checkpoint {prefix} " in message and "cannot be read" in message, message
        assert "truncated or corrupted (or of another search); delete those files" in message
        assert listing(workdir) == before
    finally:
        shutil.rmtree(folder)


# -- bad flag values ---------------------------------------------------------------------------

SIZES = ["batch_size", "board_size", "board_images", "meta_interval", "select_bn_batches",
         "retrain_batch_size", "checkpoint_every", "max_bad_steps", "search_epochs",
         "retrain_epochs", "tune_trials", "tune_epochs"]


@PROPS
@given(name=st.sampled_from(SIZES), value=st.integers(-10**6, 0))
def test_non_positive_sizes_name_the_flag(name, value):
    with pytest.raises(cli.UsageError, match=f"^--{name} must be (> 0|an int >= 1), got {value}"):
        conftest.settings(**{name: value})


@PROPS
@given(name=st.sampled_from(["lr", "meta_lr", "retrain_lr"]), value=st.floats(-10, 0))
def test_non_positive_rates_name_the_flag(name, value):
    with pytest.raises(cli.UsageError, match=f"^--{name} must be > 0, got "):
        conftest.settings(**{name: value})


@PROPS
@given(low=st.floats(0.01, 1e4), gap=st.floats(0.01, 1e4))
def test_flops_min_above_max_is_refused(low, gap):
    with pytest.raises(cli.UsageError, match="^--flops_min/--flops_max .* above max"):
        conftest.settings(flops_min=low + gap, flops_max=low)


@PROPS
@given(resolution=st.integers(1, 31))
def test_resolution_below_the_networks_stride_is_refused(resolution):
    with pytest.raises(cli.UsageError, match="^--resolution must be an int >= 32"):
        conftest.settings(resolution=resolution)


GOOD_ARCH = "DS | {} | MB4 3x3 | MB4 3x3 | MB4 3x3 | MB4 3x3"


@settings(max_examples=6, derandomize=True, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(op=st.sampled_from(["MB9 3x3", "MB4 9x9", "Conv5x5", "Res 3x3", "Conv 3x3", "XX"]))
def test_unknown_op_in_arch_is_refused_and_nothing_is_written(op):
    from cream_tf import arch as arch_lib
    from cream_tf import job

    arch_lib.parse(GOOD_ARCH.format("MB6 5x5"), SPACE)  # the rest of the string is valid
    folder = tempfile.mkdtemp(prefix="arch_")
    try:
        workdir = os.path.join(folder, "w")
        settings = conftest.settings(mode="retrain", workdir=workdir,
                                     arch=GOOD_ARCH.format(op))
        before = listing(folder)
        with pytest.raises(cli.UsageError, match="--arch: ") as info:
            job.run(settings)
        assert f"bad token {op!r} in stage 1" in str(info.value)
        assert "expected one of MB4 3x3" in str(info.value)
        assert listing(folder) == before
    finally:
        shutil.rmtree(folder)


# -- interrupted and killed runs through run.py ------------------------------------------------

RUN_FLAGS = ["--mode=search", "--dataset=synthetic:4", "--resolution=32", "--depth=1",
             "--width=0.25", "--batch_size=8", "--search_epochs=2", "--steps_per_epoch=6",
             "--warmup_epochs=1", "--board_size=3", "--board_images=2", "--meta_interval=3",
             "--checkpoint_every=4", "--deterministic", "--strategy=default", "--seed=3"]
KILLER = os.path.join(ROOT, "tests", "signal_runner.py")


def run_search(workdir, at_step=0, signum=0, extra=(), timeout=900):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    cmd = [sys.executable, KILLER, str(at_step), str(signum), "search",
           f"--workdir={workdir}", *RUN_FLAGS, *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def final_state(workdir):
    """board.json, the board history and a checksum of every variable in the final checkpoint
    (supernet, optimizer, board, matching network; not the save counter)."""
    search = os.path.join(workdir, "search")
    prefix = tf.train.latest_checkpoint(os.path.join(search, "checkpoints"))
    reader = tf.train.load_checkpoint(prefix)
    digest = hashlib.sha256()
    for name in sorted(reader.get_variable_to_shape_map()):
        if name.startswith(("save_counter", "train_data", "val_data", "_CHECKPOINTABLE")):
            continue
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(reader.get_tensor(name)).tobytes())
    with open(os.path.join(search, "board.json")) as f:
        board = json.load(f)
    with open(os.path.join(search, "board_history.json")) as f:
        history = json.load(f)
    return os.path.basename(prefix), board, history, digest.hexdigest()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("full") / "w")
    result = run_search(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return final_state(workdir)


@pytest.mark.slow
@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_sigterm_checkpoint_and_say_how_to_resume(tmp_path, uninterrupted, signum, code):
    workdir = str(tmp_path / "w")
    result = run_search(workdir, at_step=5, signum=int(signum))
    assert result.returncode == code, result.stderr[-3000:]
    lines = [l for l in result.stderr.splitlines() if l.startswith("run.py: search interrupted")]
    assert len(lines) == 1, result.stderr[-3000:]
    name = "SIGINT" if signum == signal.SIGINT else "SIGTERM"
    assert f"by {name} after step 5" in lines[0] and "ckpt-5" in lines[0]
    assert "Run the same command again to resume" in lines[0] and "--mode=search" in lines[0]
    assert os.path.exists(os.path.join(workdir, "search", "checkpoints", "ckpt-5.index"))
    # selection needs a finished search: it says how many steps are left, and trains nothing
    early = run_search(workdir, extra=["--mode=select"])
    assert early.returncode == 2, early.stderr[-3000:]
    errors = [l for l in early.stderr.splitlines() if l.startswith("run.py: error:")]
    assert len(errors) == 1 and "trained 5 of 12 steps (7 left)" in errors[0], early.stderr
    assert "--use_unfinished_search" in errors[0]
    assert not os.path.exists(os.path.join(workdir, "select"))
    assert tf.train.latest_checkpoint(os.path.join(workdir, "search", "checkpoints")).endswith(
        "ckpt-5")
    resumed = run_search(workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert final_state(workdir) == uninterrupted


@pytest.mark.slow
@pytest.mark.parametrize("at_step", [1, 4, 7, 11])
def test_kill_9_then_rerun_ends_like_an_uninterrupted_run(tmp_path, uninterrupted, at_step):
    workdir = str(tmp_path / "w")
    result = run_search(workdir, at_step=at_step, signum=int(signal.SIGKILL))
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    leftovers = [n for n in os.listdir(os.path.join(workdir, "search")) if ".tmp" in n]
    assert not leftovers
    resumed = run_search(workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert final_state(workdir) == uninterrupted


@pytest.mark.slow
def test_retrain_sigterm_then_kill_9_resume_and_finish(tmp_path):
    workdir = str(tmp_path / "w")
    extra = ["--mode=retrain", "--arch=" + GOOD_ARCH.format("MB4 3x3"), "--retrain_epochs=3",
             "--retrain_warmup_epochs=1",
             "--retrain_batch_size=8", "--ema_decay=0.9"]

    def retrain(at_step=0, signum=0):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
        cmd = [sys.executable, KILLER, str(at_step), str(signum), "retrain",
               f"--workdir={workdir}", *RUN_FLAGS, *extra]
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=900)

    first = retrain(at_step=3, signum=int(signal.SIGTERM))
    assert first.returncode == 143, first.stderr[-3000:]
    assert "retraining interrupted by SIGTERM" in first.stderr
    backup = os.path.join(workdir, "retrain", "backup")
    assert os.path.exists(os.path.join(backup, "latest.weights.h5"))
    second = retrain(at_step=2, signum=int(signal.SIGKILL))
    assert second.returncode == -signal.SIGKILL
    assert not [n for n in os.listdir(backup) if n.startswith(".")]
    third = retrain()
    assert third.returncode == 0, third.stderr[-3000:]
    with open(os.path.join(workdir, "retrain", "result.json")) as f:
        assert 0.0 <= json.load(f)["val_accuracy"] <= 1.0
    assert not os.path.exists(backup)
