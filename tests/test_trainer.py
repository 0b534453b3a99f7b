"""The search loop: path-only updates, one trace for every path, LR schedule, resume, end to end."""
import contextlib
import functools
import io
import json
import os
import re
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

from cream_tf import select as select_lib
from cream_tf import trainer
from cream_tf.space import Space
from cream_tf.supernet import VariableOwner
from conftest import mirrored

TINY = Space("mbconv", depth=(1, 2, 1, 1, 1), resolution=32, width=0.25, num_classes=10)


def _mirrored():
    return mirrored()


def digits(split_seed=0):
    """sklearn's bundled digits as 32x32x3 float images in [0, 1]; (train, held-out) arrays."""
    data = load_digits()
    x = data.images.astype(np.float32) / 16.0
    x = tf.image.resize(x[..., None], (32, 32), method="bilinear").numpy()
    x = np.repeat(x, 3, axis=-1)
    y = data.target.astype(np.int32)
    order = np.random.default_rng(split_seed).permutation(len(y))
    x, y = x[order], y[order]
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def _datasets(train, held_out, seed=0):
    # the shuffle order depends on the global seed too (search() sets it): pin it, so every
    # search in a test reads the same stream
    tf.random.set_seed(seed)
    train_ds = tf.data.Dataset.from_tensor_slices(train).shuffle(
        len(train[1]), seed=seed, reshuffle_each_iteration=True).repeat()
    return train_ds, tf.data.Dataset.from_tensor_slices(held_out)


def test_linear_decay_for_any_base_rate():
    schedule = trainer.LinearDecay(0.4, 100)
    values = [float(schedule(s)) for s in (0, 1, 25, 50, 99, 100, 150)]
    np.testing.assert_allclose(values, [0.4, 0.396, 0.3, 0.2, 0.004, 0.0, 0.0], rtol=1e-6,
                               atol=1e-7)
    with pytest.raises(ValueError):
        trainer.LinearDecay(0.0, 10)
    # the optimizer applies it per step
    opt = trainer.PathSGD(lambda v: None, 1, learning_rate=schedule)
    opt.iterations.assign(30)
    assert float(opt.learning_rate) == pytest.approx(0.4 * 0.7)


def test_config_validation():
    with pytest.raises(ValueError, match="teacher"):
        trainer.SearchConfig(teacher="best")
    with pytest.raises(ValueError, match="warmup_epochs"):
        trainer.SearchConfig(epochs=2, warmup_epochs=3)
    with pytest.raises(ValueError, match="batch_size"):
        trainer.SearchConfig(batch_size=0)
    with pytest.raises(ValueError, match="weight_decay"):
        trainer.PathSGD(lambda v: None, 1, weight_decay=1e-4)
    with pytest.raises(ValueError, match="trace_meta"):
        trainer.SearchConfig(trace_meta="yes")


def test_meta_step_traced_for_long_searches_only():
    """The rule of thumb: tracing the meta update costs minutes once, so it pays off from ~100
    updates on (small.flags makes 10, the release's ImageNet search 600)."""
    small = trainer.SearchConfig(epochs=15, steps_per_epoch=100, warmup_epochs=5, meta_interval=50)
    assert small.meta_updates == 10 and not small.meta_traced
    # the release's rule: batches 20, 40, ..., 1000 of each epoch after the warm-up
    hundred = trainer.SearchConfig(epochs=3, steps_per_epoch=1001, warmup_epochs=1,
                                   meta_interval=20)
    assert hundred.meta_updates == 100 and hundred.meta_traced
    assert not trainer.SearchConfig(epochs=3, steps_per_epoch=1000, warmup_epochs=1,
                                    meta_interval=20).meta_traced  # 2 x 49
    assert trainer.SearchConfig().meta_updates == 600
    assert trainer.SearchConfig().meta_traced  # the release's ImageNet search
    assert trainer.SearchConfig(trace_meta=False).meta_traced is False
    assert trainer.SearchConfig(epochs=1, warmup_epochs=0, trace_meta=True).meta_traced


def test_off_path_ops_stay_bit_identical_and_one_trace_serves_all_paths():
    """Real step under 2 replicas: an op on none of 20 paths keeps weights and momentum exactly."""
    config = trainer.SearchConfig(epochs=1, steps_per_epoch=40, warmup_epochs=1, batch_size=8,
                                  learning_rate=0.5, seed=3)
    strategy = _mirrored()
    state = trainer.SearchState(TINY, config, strategy)
    steps = trainer.StepFunctions(state)
    net, opt = state.supernet, state.optimizer
    frozen_layer, frozen_op = 2, 4           # stage 2, second layer, MB4 7x7: never sampled
    used_layer, used_op = 0, 1
    rng = np.random.default_rng(0)
    paths = []
    for _ in range(20):
        p = [int(rng.choice([c for c in layer.choices
                             if not (l == frozen_layer and c == frozen_op)]))
             for l, layer in enumerate(TINY.layers)]
        paths.append(p)
    paths[0][used_layer] = used_op

    def owned(layer, op):
        return [(i, v) for i, v in enumerate(net.trainable_variables)
                if net.variable_owner(v) == VariableOwner(layer, op)]

    frozen = owned(frozen_layer, frozen_op)
    used = owned(used_layer, used_op)
    assert frozen and used
    before = {i: (v.numpy().copy(), opt.momentums[i].numpy().copy()) for i, v in frozen + used}
    stats = {name: [v for v in net.non_trainable_variables
                    if net.variable_owner(v) == VariableOwner(*where)]
             for name, where in (("frozen", (frozen_layer, frozen_op)),
                                 ("used", (used_layer, used_op)))}
    stats_before = {name: [v.numpy().copy() for v in vs] for name, vs in stats.items()}
    assert stats["frozen"] and stats["used"]
    x = tf.random.stateless_uniform([8, 32, 32, 3], seed=[1, 2])
    y = tf.constant(np.arange(8) % 10, tf.int32)
    for p in paths:
        out = steps.warmup(x, y, tf.constant(p, tf.int32))
        assert np.isfinite(out["loss"].numpy())
    assert steps.step.experimental_get_tracing_count() == 1
    # the supernet's forward is traced once, for both replicas and all three calls of the step
    assert steps.forward.tracing_count == 1
    for v, b in zip(stats["frozen"], stats_before["frozen"]):  # BatchNorm statistics too
        np.testing.assert_array_equal(v.numpy(), b, err_msg=v.path)
        for copy in strategy.experimental_local_results(v.value):
            np.testing.assert_array_equal(copy.numpy(), b)
    assert any(not np.array_equal(v.numpy(), b)
               for v, b in zip(stats["used"], stats_before["used"]))
    for i, v in frozen:
        np.testing.assert_array_equal(v.numpy(), before[i][0], err_msg=v.path)
        np.testing.assert_array_equal(opt.momentums[i].numpy(), before[i][1], err_msg=v.path)
        for copy in strategy.experimental_local_results(v.value):  # every replica's copy
            np.testing.assert_array_equal(copy.numpy(), before[i][0])
    moved = [not np.array_equal(v.numpy(), before[i][0]) for i, v in used]
    assert all(moved)
    assert any(not np.array_equal(opt.momentums[i].numpy(), before[i][1]) for i, _ in used)
    assert int(opt.iterations.numpy()) == 20


@pytest.mark.slow
def test_two_replicas_step_like_one_device():
    """Loss scaling: one warm-up step on 2 replicas moves trainable weights as one device does.

    The two halves of the batch are the same 4 images: training-mode BatchNorm then sees the same
    batch statistics on each replica (4 images) as on one device (8), so any difference comes
    from how losses and gradients are scaled and reduced."""
    config = trainer.SearchConfig(epochs=1, steps_per_epoch=10, warmup_epochs=1, batch_size=8,
                                  learning_rate=0.5, seed=5)
    half = tf.random.stateless_uniform([4, 32, 32, 3], seed=[3, 4])
    x = tf.concat([half, half], axis=0)
    y = tf.constant(np.arange(8) % 4, tf.int32)
    path = tf.constant([0, 3, 6, 2, 5, 1], tf.int32)
    results = []
    for strategy in (tf.distribute.get_strategy(), _mirrored()):
        state = trainer.SearchState(TINY, config, strategy)
        before = [v.numpy() for v in state.supernet.trainable_variables]
        out = trainer.StepFunctions(state).warmup(x, y, path)
        results.append((float(out["loss"].numpy()), before,
                        [v.numpy() - b for v, b in zip(state.supernet.trainable_variables,
                                                        before)]))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_array_equal(a, b)  # the same start
    # The same update up to float32 rounding of the gradient sums; a loss or gradient scaled
    # twice (or not at all) would change every update by a factor of 2.
    # (tolerance relative to the largest update: some variables' updates are rounding noise)
    scale = max(np.abs(d).max() for d in results[0][2])
    moved = 0
    for one, two in zip(results[0][2], results[1][2]):
        np.testing.assert_allclose(two, one, rtol=1e-3, atol=1e-3 * scale)
        moved += bool(np.abs(one).max() > 1e-3 * scale)
    assert moved > 10


@pytest.mark.slow  # tracing the meta step takes a minute or two on 2 cores
def test_traced_meta_update_equals_eager():
    """SearchConfig.trace_meta: the traced meta update moves M as the eager one does.

    Conditioning matters here as much as correctness. The meta-objective differentiates a
    held-out loss after a simulated SGD step through training-mode BatchNorm over a few images,
    and graph-mode kernel fusion changes the forward by ~1e-4. Measured on this TINY space
    (meta slice 4): a 1e-6 relative change of the input moves the eager meta-gradient by 5e-3
    at a student learning rate of 0.1 and by 3e-4 at 0.01; traced and eager differ by 2e-4 and
    2e-5. (A slice of 2 at learning rate 1.0 made them differ by a factor.) So this compares
    them at 0.01, where float32 rounding cannot reach the tolerance.
    """
    x = tf.random.stateless_uniform([8, 32, 32, 3], seed=[7, 8])
    y = tf.constant(np.arange(8) % 10, tf.int32)
    rng = np.random.default_rng(0)
    board_images = rng.normal(size=(3, 2, 32, 32, 3)).astype(np.float32)
    board_probs = rng.dirichlet(np.ones(10), size=(3, 2)).astype(np.float32)
    results = []
    for traced in (False, True):
        tf.keras.utils.set_random_seed(3)
        config = trainer.SearchConfig(epochs=1, steps_per_epoch=10, warmup_epochs=0, batch_size=8,
                                      learning_rate=0.01, board_size=3, board_images=2,
                                      meta_slice=4, meta_lr=1.0, seed=3, trace_meta=traced)
        assert config.meta_traced is traced
        state = trainer.SearchState(TINY, config, tf.distribute.get_strategy())
        sampler = trainer.Sampler(TINY, config.prior, None, None, 3)
        for j in range(3):
            path = sampler.sample(100 + j)
            state.board.update(path, 90.0 - j, sampler.path_macs(path), board_images[j],
                               board_probs[j])
        steps = trainer.StepFunctions(state)
        before = [v.numpy().copy() for v in state.matching.trainable_variables]
        for _ in range(2):  # the second call must reuse the trace
            assert steps.meta(x, y, x[4:], y[4:], tf.constant(sampler.sample(0), tf.int32))
        if traced:
            assert steps.meta_step.experimental_get_tracing_count() == 1
        after = [v.numpy() for v in state.matching.trainable_variables]
        results.append((before, [a - b for a, b in zip(after, before)]))
    (start_e, eager), (start_t, traced) = results
    for a, b in zip(start_e, start_t):
        np.testing.assert_array_equal(a, b)
    scale = max(np.abs(d).max() for d in eager)
    assert scale > 1e-4  # the test has something to compare
    for e, t in zip(eager, traced):  # the same update, up to float32 rounding
        np.testing.assert_allclose(t, e, rtol=1e-3, atol=1e-3 * scale)


class _Stop(Exception):
    pass


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path):
    # exact equality needs TF op determinism, which conftest turns on for every test
    train, held_out = digits()
    config = trainer.SearchConfig(epochs=3, steps_per_epoch=4, warmup_epochs=1, batch_size=8,
                                  learning_rate=0.2, board_size=3, board_images=2,
                                  meta_interval=3, meta_slice=2, checkpoint_interval=5,
                                  seed=11, verbose=0)
    full = trainer.search(TINY, *_datasets(train, held_out), str(tmp_path / "full"), config)

    def interrupt(step, logs):
        if step == 6:  # after the checkpoint at 5: steps 6 and 7 are redone after resume
            raise _Stop

    with pytest.raises(_Stop):
        trainer.search(TINY, *_datasets(train, held_out), str(tmp_path / "cut"), config,
                       callback=interrupt)
    resumed = trainer.search(TINY, *_datasets(train, held_out), str(tmp_path / "cut"), config)
    assert full.board.entries() == resumed.board.entries()
    for name in ("images", "probs", "paths", "scores", "macs", "size"):
        np.testing.assert_array_equal(getattr(full.board, name).numpy(),
                                      getattr(resumed.board, name).numpy())
    for a, b in zip(full.supernet.weights, resumed.supernet.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    for a, b in zip(full.matching.weights, resumed.matching.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert full.last_logs["loss"] == resumed.last_logs["loss"]
    with open(tmp_path / "cut" / "board.json") as f:
        assert len(json.load(f)) == int(resumed.board.size.numpy())
    # a different search in the same workdir is refused, naming what differs
    with pytest.raises(ValueError, match=r"holds a search with other settings: seed \(\d+ there, "
                                         r"12 now\)"):
        trainer.search(TINY, *_datasets(train, held_out), str(tmp_path / "cut"),
                       trainer.SearchConfig(**{**config.to_dict(), "seed": 12}))


@pytest.mark.slow
def test_search_on_digits_finds_paths_better_than_random(tmp_path, record_property):
    space = Space("mbconv", depth=2, resolution=32, width=0.25, num_classes=10)
    train, held_out = digits()
    # A supernet on random paths stays near chance for a few hundred steps before it learns
    # (300 steps at batch 16 left the best board path at 11.6%), so this runs 1,000 at batch 32.
    config = trainer.SearchConfig(epochs=10, steps_per_epoch=100, warmup_epochs=4, batch_size=32,
                                  learning_rate=0.1, board_size=5, board_images=2,
                                  meta_interval=100, meta_slice=2, checkpoint_interval=500,
                                  log_interval=50, seed=0, verbose=0)
    train_ds, val_ds = _datasets(train, held_out)
    result = trainer.search(space, train_ds, val_ds, str(tmp_path), config, strategy=_mirrored())
    # one trace per step function, over hundreds of different paths
    assert result.traces == {"step": 1}
    assert int(result.board.size.numpy()) == config.board_size
    for name in ("board.json", "search.json"):
        assert os.path.exists(tmp_path / name)
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("-1000")
    tags = set()
    for name in os.listdir(tmp_path / "logs"):
        for event in tf.compat.v1.train.summary_iterator(str(tmp_path / "logs" / name)):
            tags.update(v.tag for v in event.summary.value
                        if v.metadata.plugin_data.plugin_name == "scalars")
    assert {"search/loss", "search/accuracy", "search/rho", "search/board_size"} <= tags

    plain_train = tf.data.Dataset.from_tensor_slices(train)
    selection = select_lib.select(space, result.supernet, result.board, plain_train, val_ds,
                                  bn_batches=5, batch_size=64)
    rng = np.random.default_rng(123)
    random_acc = []
    for _ in range(5):
        flat = [int(rng.choice(layer.choices)) for layer in space.layers]
        random_acc.append(select_lib.evaluate_path(space, result.supernet, flat, plain_train,
                                                   val_ds, 5, 64))
    record_property("pick_accuracy", selection.best["accuracy"])
    record_property("random_path_accuracies", [round(a, 4) for a in random_acc])
    # op determinism (conftest): the same search, pick and random paths on every run
    assert selection.best["accuracy"] > np.mean(random_acc), (selection.to_text(), random_acc)
    # well above chance (10 %) on held-out digits. Deterministic for a given step, but any
    # change of the step's arithmetic moves it: 29.97% before the shared traced forward, 24.94%
    # after it (at 300 steps of batch 16 the pick was at 11.6%, near chance)
    assert selection.best["accuracy"] > 20


def test_search_rejects_bad_input_early(tmp_path):
    good = tf.data.Dataset.from_tensor_slices(
        (np.zeros((4, 32, 32, 3), np.float32), np.zeros(4, np.int32)))
    config = trainer.SearchConfig(epochs=1, steps_per_epoch=1, warmup_epochs=0, batch_size=9)
    with pytest.raises(ValueError, match="unbatched float32"):
        trainer.search(TINY, good.batch(2), good, str(tmp_path), config)
    with pytest.raises(ValueError, match="divide evenly over 2 replicas"):
        trainer.search(TINY, good, good, str(tmp_path), config, strategy=_mirrored())
    small = trainer.SearchConfig(epochs=1, steps_per_epoch=1, warmup_epochs=0, batch_size=4,
                                 board_images=4)
    with pytest.raises(ValueError, match="board_images"):
        trainer.search(TINY, good, good, str(tmp_path), small, strategy=_mirrored())


def test_write_atomic_replaces_whole_files(tmp_path):
    target = tmp_path / "sub" / "board.json"
    trainer.write_atomic(str(target), "one")
    trainer.write_atomic(str(target), "two")
    assert target.read_text() == "two"
    assert os.listdir(tmp_path / "sub") == ["board.json"]  # no temp files left behind


# -- what the search shows ---------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def bar_frames(text):
    """{step: {metric: value}} of every frame a Keras progress bar printed (the last one per
    step); frames are separated by \\r (dynamic display) or newlines, erased with \\b."""
    frames = {}
    for frame in re.split(r"[\r\n]", ANSI.sub("", text).replace("\b", "")):
        head = re.match(r"\s*(\d+)/\d+ ", frame)
        if head:
            frames[int(head.group(1))] = {
                k: float(v) for k, v in re.findall(r" - (\w+): ([-+.\de]+)", frame)}
    return frames


@pytest.fixture(scope="module")
def shown(tmp_path_factory):
    """A 6-step search (3 warm-up) with its progress bar on, every step drawn; returns the bar's
    frames, the callback's logs and the TensorBoard scalars by tag."""
    keras.utils.set_random_seed(0)
    workdir = tmp_path_factory.mktemp("shown")
    space = Space("mbconv", depth=1, resolution=32, width=0.25, num_classes=2)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (32, 32, 32, 3)).astype(np.float32)
    y = (np.arange(32) % 2).astype(np.int32)
    train = tf.data.Dataset.from_tensor_slices((x, y)).repeat()
    config = trainer.SearchConfig(epochs=2, steps_per_epoch=3, warmup_epochs=1, batch_size=4,
                                  learning_rate=0.1, board_size=2, board_images=2, meta_slice=2,
                                  log_interval=1, seed=0, verbose=1)
    logs = {}
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        patch.setattr(keras.utils, "Progbar", functools.partial(keras.utils.Progbar, interval=0))
        trainer.search(space, train, train.take(8), str(workdir), config,
                       callback=lambda step, l: logs.setdefault(step + 1, l))
    scalars = {}
    for name in os.listdir(workdir / "logs"):
        for event in tf.compat.v1.train.summary_iterator(str(workdir / "logs" / name)):
            for v in event.summary.value:
                value = float(tf.make_ndarray(v.tensor))
                scalars.setdefault(v.tag, {})[event.step] = value
    return types.SimpleNamespace(frames=bar_frames(out.getvalue()), logs=logs, scalars=scalars,
                                 warmup=config.warmup_steps, total=config.total_steps,
                                 rerun=lambda: trainer.search(space, train, train.take(8),
                                                              str(workdir), config),
                                 workdir=workdir)


def test_search_bar_shows_accuracy_as_a_fraction_like_keras(shown):
    assert sorted(shown.frames) == list(range(1, shown.total + 1))
    accuracies = [shown.frames[s]["accuracy"] for s in sorted(shown.frames)]
    assert all(0.0 <= a <= 1.0 for a in accuracies), accuracies
    assert max(accuracies) > 0  # 2 classes: some step is right on some image, so percent shows
    for step, frame in shown.frames.items():
        assert frame["accuracy"] == pytest.approx(shown.logs[step]["accuracy"], abs=1e-4)
    assert shown.scalars["search/accuracy"] == pytest.approx(
        {s: l["accuracy"] for s, l in shown.logs.items()})


DISTILLATION = ("rho", "board_size", "board_best")


def test_search_shows_rho_and_board_only_once_distillation_starts(shown):
    warmup, total = shown.warmup, shown.total
    for step, frame in shown.frames.items():
        # the board's first entry is the first step after the warm-up; distillation follows
        distilling = step > warmup + 1
        assert shown.logs[step]["distill"] is distilling
        assert shown.logs[step]["board_size"] == (0 if step <= warmup else
                                                  min(step - warmup, 2))
        assert [name in frame for name in DISTILLATION] == [distilling] * 3, (step, frame)
        assert [name in shown.logs[step] for name in ("rho", "teacher")] == [distilling] * 2
        assert {"loss", "accuracy"} <= set(frame)
    for name in DISTILLATION:  # TensorBoard as the bar
        assert sorted(shown.scalars[f"search/{name}"]) == list(range(warmup + 2, total + 1))
    for tag in ("search/loss", "search/accuracy", "search/macs", "search/lr"):
        assert sorted(shown.scalars[tag]) == list(range(1, total + 1))
    best = [shown.frames[s]["board_best"] for s in range(warmup + 2, total + 1)]
    assert all(0.0 <= b <= 1.0 for b in best) and max(best) > 0, best
    assert shown.scalars["search/board_best"] == pytest.approx(
        {s: shown.logs[s]["board_best"] for s in range(warmup + 2, total + 1)})


def test_search_on_a_finished_workdir_returns_it_and_writes_nothing(shown):
    """A rerun of a finished search (issue 16): no step traced, no search.json, board.json or
    TensorBoard events file written again."""
    def files():
        return {p: (p.stat().st_mtime_ns, p.read_bytes())
                for p in shown.workdir.rglob("*") if p.is_file()}

    before = files()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = shown.rerun()
    assert files() == before
    assert "holds a finished search (6 steps); returning it" in out.getvalue()
    assert (result.steps, result.traces) == (shown.total, {"step": 0})
    with open(shown.workdir / "board.json") as f:
        assert [e["path"] for e in json.load(f)] == [e["path"] for e in result.entries]
