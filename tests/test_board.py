"""The prioritized board: its entry rules (docs/method.md) on hand-built cases, and its state."""
import json

import numpy as np
import pytest
import tensorflow as tf

from cream_tf import arch as arch_lib
from cream_tf.board import Board
from cream_tf.space import Space
from conftest import mirrored

L, N, SHAPE, C = 5, 2, (4, 4, 3), 10


def make(capacity=3, gap=5.0):
    return Board(capacity, L, N, SHAPE, C, gap=gap)


def images(v):
    return np.full([N, *SHAPE], v, np.float32)


def probs(v):
    return np.full([N, C], v, np.float32)


def offer(board, tag, score, macs):
    """Offers path [tag]*L with images and probs filled with `tag`, so moves are traceable."""
    return board.update([tag] * L, score, macs, images(tag), probs(tag / 100))


def state(board):
    return [(e["path"][0], e["score"], e["macs"]) for e in board.entries()]


def assert_consistent(board):
    """Images and probs moved with their entries; empty slots are zero."""
    size = int(board.size.numpy())
    tags = board.paths.numpy()[:, 0]
    imgs, prbs = board.images.numpy(), board.probs.numpy()
    for slot in range(board.capacity):
        want = tags[slot] if slot < size else 0
        np.testing.assert_array_equal(imgs[slot], images(want))
        np.testing.assert_array_equal(prbs[slot], probs(want / 100))
        if slot >= size:
            assert board.paths.numpy()[slot].tolist() == [0] * L
            assert board.scores.numpy()[slot] == 0 and board.macs.numpy()[slot] == 0


def test_enters_while_not_full_and_sorts():
    b = make(capacity=3)
    assert offer(b, 1, 10.0, 100)
    assert offer(b, 2, 30.0, 100)
    assert offer(b, 3, 20.0, 100)
    assert state(b) == [(2, 30.0, 100), (3, 20.0, 100), (1, 10.0, 100)]
    assert int(b.size.numpy()) == 3
    assert_consistent(b)


def test_low_scores_enter_while_not_full():
    b = make(capacity=3)
    assert offer(b, 1, 50.0, 100)
    assert offer(b, 2, 0.0, 10**9)  # far worse, still enters: the board is not full
    assert state(b) == [(1, 50.0, 100), (2, 0.0, 10**9)]
    assert_consistent(b)


@pytest.mark.parametrize("score, macs, enters", [
    (15.0, 100, False),    # beats the worst (10) by exactly the gap: not more than the gap
    (15.01, 100, True),    # by more than the gap
    (15.01, 500, True),    # the gap rule does not care about MACs
    (12.0, 99, True),      # beats the worst with fewer MACs
    (12.0, 100, False),    # beats it with equal MACs, inside the gap
    (12.0, 101, False),    # beats it with more MACs, inside the gap
    (10.0, 1, False),      # ties the worst: fewer MACs is not enough without beating it
    (9.0, 1, False),       # worse
])
def test_full_board_entry_rule(score, macs, enters):
    b = make(capacity=3)
    offer(b, 1, 30.0, 100)
    offer(b, 2, 20.0, 100)
    offer(b, 3, 10.0, 100)
    before = state(b)
    assert offer(b, 4, score, macs) is enters
    if enters:
        assert state(b)[:2] == before[:2]
        assert (4, pytest.approx(score), macs) in state(b)
        assert 3 not in [t for t, _, _ in state(b)]  # the worst dropped out
        assert len(state(b)) == 3
    else:
        assert state(b) == before
    assert_consistent(b)


def test_gap_parameter():
    b = make(capacity=1, gap=0.0)
    offer(b, 1, 10.0, 100)
    assert offer(b, 2, 10.5, 200)  # gap 0: any strict improvement replaces
    assert state(b) == [(2, 10.5, 200)]


def test_ties_rank_fewer_macs_first_then_incumbent():
    b = make(capacity=4)
    offer(b, 1, 20.0, 300)
    offer(b, 2, 20.0, 100)
    offer(b, 3, 20.0, 200)
    offer(b, 4, 20.0, 100)  # same score and MACs as 2: the incumbent stays ahead
    assert state(b) == [(2, 20.0, 100), (4, 20.0, 100), (3, 20.0, 200), (1, 20.0, 300)]
    assert_consistent(b)


def test_worst_among_ties_is_the_one_with_most_macs():
    b = make(capacity=2)
    offer(b, 1, 20.0, 100)
    offer(b, 2, 20.0, 300)
    # beats the worst (20 @ 300) with fewer MACs -> 2 drops, not 1
    assert offer(b, 3, 21.0, 200)
    assert state(b) == [(3, 21.0, 200), (1, 20.0, 100)]
    assert_consistent(b)


def test_duplicate_updates_in_place_and_resorts():
    b = make(capacity=3)
    offer(b, 1, 30.0, 100)
    offer(b, 2, 20.0, 100)
    offer(b, 3, 10.0, 100)
    # path 3 measured again, better: its entry moves up, nothing enters twice
    assert b.update([3] * L, 40.0, 100, images(33), probs(0.33))
    assert state(b) == [(3, 40.0, 100), (1, 30.0, 100), (2, 20.0, 100)]
    np.testing.assert_array_equal(b.images.numpy()[0], images(33))
    np.testing.assert_array_equal(b.probs.numpy()[0], probs(0.33))
    # path 1 measured again, worse than every entry: it updates (and sinks), it does not vanish
    assert b.update([1] * L, 5.0, 100, images(11), probs(0.11))
    assert state(b) == [(3, 40.0, 100), (2, 20.0, 100), (1, 5.0, 100)]
    np.testing.assert_array_equal(b.images.numpy()[2], images(11))
    np.testing.assert_array_equal(b.images.numpy()[1], images(2))
    paths = [tuple(p) for p in b.paths.numpy()[:3]]
    assert len(set(paths)) == 3


def test_duplicate_update_when_not_full_does_not_grow():
    b = make(capacity=3)
    offer(b, 1, 30.0, 100)
    assert b.update([1] * L, 31.0, 100, images(5), probs(0.05))
    assert state(b) == [(1, 31.0, 100)]
    assert int(b.size.numpy()) == 1


def test_capacity_holds_over_many_updates():
    rng = np.random.default_rng(0)
    b = make(capacity=4, gap=2.0)
    reference = []  # plain-python model of the rules
    for step in range(60):
        tag = int(rng.integers(1, 12))
        score = float(np.float32(rng.integers(0, 40)))
        macs = int(rng.integers(1, 5)) * 100
        same = [r for r in reference if r[0] == tag]
        if same:
            reference = [r if r[0] != tag else (tag, score, macs) for r in reference]
            want = True
        elif len(reference) < 4:
            reference.append((tag, score, macs))
            want = True
        else:
            worst = reference[-1]
            want = score > worst[1] + 2.0 or (score > worst[1] and macs < worst[2])
            if want:
                reference.append((tag, score, macs))
        reference.sort(key=lambda r: (-r[1], r[2]))
        reference = reference[:4]
        assert offer(b, tag, score, macs) is want, step
        assert state(b) == reference, step
        assert len(b.entries()) <= 4
    assert_consistent(b)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_score_rejected(bad):
    b = make(capacity=3)
    assert not offer(b, 1, bad, 100)
    assert b.entries() == []
    offer(b, 2, 10.0, 100)
    assert not offer(b, 2, bad, 100)  # not even as an update of an existing entry
    assert state(b) == [(2, 10.0, 100)]


def test_non_finite_probs_or_images_rejected():
    b = make(capacity=3)
    bad = probs(0.1)
    bad[0, 3] = np.nan
    assert not b.update([1] * L, 10.0, 100, images(1), bad)
    bad_images = images(1)
    bad_images[1, 0, 0, 0] = np.inf
    assert not b.update([1] * L, 10.0, 100, bad_images, probs(0.1))
    assert b.entries() == []


def test_accepts_tensors():
    b = make()
    assert b.update(tf.constant([1] * L), tf.constant(12.5), tf.constant(100, tf.int64),
                    tf.constant(images(1)), tf.constant(probs(0.01)))
    assert state(b) == [(1, 12.5, 100)]
    assert_consistent(b)


def test_scores_read_back_as_given():
    b = make()
    offer(b, 1, 71.3, 100)
    assert b.entries()[0]["score"] == 71.3
    assert np.float32(b.entries()[0]["score"]) == b.scores.numpy()[0]


def test_stores_the_first_n_images_of_a_batch():
    b = make(capacity=2)
    batch = np.arange(5, dtype=np.float32)[:, None, None, None] * np.ones([5, *SHAPE], np.float32)
    p = np.tile(np.arange(5, dtype=np.float32)[:, None], [1, C])
    assert b.update([[1, 2], [3], [4, 5]], 10.0, 7, batch, p)  # a per-stage path is flattened
    np.testing.assert_array_equal(b.images.numpy()[0], batch[:N])
    np.testing.assert_array_equal(b.probs.numpy()[0], p[:N])
    assert b.entries() == [{"path": [1, 2, 3, 4, 5], "score": 10.0, "macs": 7}]


@pytest.mark.parametrize("kwargs, match", [
    (dict(path=[1, 2]), "path must be 5 op indices"),
    (dict(path=[0.5] * L), "path must be 5 op indices"),
    (dict(path=[-1] * L), ">= 0"),
    (dict(macs=-3), "macs must be an int"),
    (dict(macs=1.5), "macs must be an int"),
    (dict(images=np.zeros([1, *SHAPE])), "m >= num_images"),
    (dict(images=np.zeros([N, 4, 4, 1])), "images must have shape"),
    (dict(probs=np.zeros([N, C + 1])), "probs must have shape"),
])
def test_bad_input_is_named(kwargs, match):
    args = dict(path=[1] * L, score=10.0, macs=100, images=images(1), probs=probs(0.1))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        make().update(**args)


@pytest.mark.parametrize("kwargs, match", [
    (dict(capacity=0), "capacity"), (dict(num_images=2.0), "num_images"),
    (dict(image_shape=(4, 4)), "image_shape"), (dict(gap=-1.0), "gap"),
    (dict(gap=float("nan")), "gap"),
])
def test_bad_constructor_args(kwargs, match):
    args = dict(capacity=3, num_layers=L, num_images=N, image_shape=SHAPE, num_classes=C)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        Board(**args)


def test_to_json_has_paper_notation():
    space = Space(depth=[1, 2, 1, 1, 1], resolution=32, num_classes=C)
    b = Board(3, space.num_layers, N, SHAPE, C)
    skip = space.skip_index
    b.update([0, 3, skip, 5, 1, 2], 70.0, 1234, images(1), probs(0.1))
    b.update([1, 1, 1, 1, 1, 1], 80.0, 999, images(2), probs(0.2))
    data = json.loads(b.to_json(space))
    assert data == [
        {"path": [1, 1, 1, 1, 1, 1], "paper": "DS | MB6 3x3 | MB6 3x3, MB6 3x3 | MB6 3x3 | MB6 3x3"
                                                " | MB6 3x3", "macs": 999, "score": 80.0},
        {"path": [0, 3, skip, 5, 1, 2], "paper": "DS | MB4 3x3 | MB6 5x5 | MB6 7x7 | MB6 3x3 | "
                                                 "MB4 5x5", "macs": 1234, "score": 70.0}]
    # the paper notation parses back to the same path
    assert arch_lib.arch_to_path(arch_lib.parse(data[1]["paper"], space), space) == \
        ((0,), (3, skip), (5,), (1,), (2,))
    with pytest.raises(ValueError, match="layers"):
        b.to_json(Space(depth=1, resolution=32))


def test_readable_inside_tf_function_without_retrace():
    b = make(capacity=3)
    traces = []

    @tf.function
    def best_image_sum():
        traces.append(1)
        return tf.reduce_sum(b.images[0]), b.size

    offer(b, 1, 10.0, 100)
    assert best_image_sum()[0].numpy() == images(1).sum()
    offer(b, 2, 20.0, 100)
    total, size = best_image_sum()
    assert total.numpy() == images(2).sum() and size.numpy() == 2
    assert len(traces) == 1


def _filled(board):
    offer(board, 1, 30.0, 100)
    offer(board, 2, 20.0, 50)
    offer(board, 3, 20.0, 70)


def _assert_same(a, b):
    assert a.entries() == b.entries()
    for name in ("paths", "scores", "macs", "images", "probs", "size"):
        np.testing.assert_array_equal(getattr(a, name).numpy(), getattr(b, name).numpy())


@pytest.mark.parametrize("distributed", [False, True])
def test_checkpoint_round_trip(tmp_path, distributed):
    strategy = (mirrored() if distributed
                else tf.distribute.get_strategy())
    with strategy.scope():
        board = make(capacity=4)
        restored = make(capacity=4)
    assert strategy.num_replicas_in_sync == (2 if distributed else 1)
    _filled(board)
    path = tf.train.Checkpoint(board=board).save(str(tmp_path / "ckpt"))
    offer(board, 9, 99.0, 1)  # changes after the save are not in the checkpoint
    tf.train.Checkpoint(board=restored).restore(path).assert_consumed()
    assert state(restored) == [(1, 30.0, 100), (2, 20.0, 50), (3, 20.0, 70)]
    assert_consistent(restored)
    # restoring rolls an updated board back too, and the restored board keeps working
    tf.train.Checkpoint(board=board).restore(path).assert_consumed()
    _assert_same(board, restored)
    assert offer(restored, 4, 40.0, 100)
    assert state(restored)[0] == (4, 40.0, 100)
    if distributed:
        # every replica sees the host's update
        @tf.function
        def per_replica():
            return strategy.run(lambda: (restored.size + 0, tf.reduce_sum(restored.images[0])))
        sizes, sums = per_replica()
        assert [int(s) for s in strategy.experimental_local_results(sizes)] == [4, 4]
        assert [float(s) for s in strategy.experimental_local_results(sums)] == \
            [images(4).sum()] * 2


def test_checkpoint_across_strategies(tmp_path):
    board = make(capacity=4)
    _filled(board)
    path = tf.train.Checkpoint(board=board).save(str(tmp_path / "ckpt"))
    with mirrored().scope():
        replicated = make(capacity=4)
    tf.train.Checkpoint(board=replicated).restore(path).assert_consumed()
    _assert_same(board, replicated)


def test_update_refuses_to_run_in_a_graph():
    b = make()

    @tf.function
    def inside():
        b.update([1] * L, 10.0, 100, images(1), probs(0.1))
        return 0

    with pytest.raises(RuntimeError, match="on the host"):
        inside()
