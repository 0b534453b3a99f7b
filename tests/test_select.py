"""select: BN re-estimation, held-out accuracy per board path, best within the MACs range."""
import numpy as np
import pytest
import tensorflow as tf

from cream_tf import child, flops
from cream_tf import select as select_lib
from cream_tf.board import Board
from cream_tf.space import Space
from cream_tf.arch import flat_path
from cream_tf.supernet import SuperNet, inherit_weights, nested_path

SPACE = Space("mbconv", depth=(1, 2, 1, 1, 1), resolution=32, width=0.25, num_classes=10)


@pytest.fixture(scope="module")
def supernet():
    tf.keras.utils.set_random_seed(0)
    return SuperNet(SPACE)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 0.3, (48, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, 48).astype(np.int32)
    return (tf.data.Dataset.from_tensor_slices((x[:32], y[:32])),
            tf.data.Dataset.from_tensor_slices((x[32:], y[32:])))


PATHS = [[0, 0, 6, 0, 0, 0], [5, 5, 5, 5, 5, 5], [3, 1, 6, 2, 4, 0], [1, 2, 3, 4, 5, 0]]


def _board(paths):
    board = Board(len(paths), SPACE.num_layers, 2, (32, 32, 3), 10)
    table = flops.cost_table(SPACE)
    for i, p in enumerate(paths):
        board.update(p, 50.0 - i, table.path_macs(nested_path(p, SPACE)),
                     np.zeros((2, 32, 32, 3), np.float32), np.full((2, 10), 0.1, np.float32))
    return board


def test_recalibration_gives_the_average_batch_moments(supernet, data):
    train, _ = data
    model = child.build(nested_path(PATHS[2], SPACE), SPACE)
    inherit_weights(model, supernet, PATHS[2])
    batches = [x for x, _ in train.batch(8).take(3)]
    assert select_lib.recalibrate_batch_norm(model, batches) == 3
    bn = model.get_layer("stem_bn")
    conv = model.get_layer("stem_conv")
    moments = []
    for x in batches:  # the stem BN sees the stem conv's output (padding is inside the model)
        feats = conv(model.get_layer("stem_conv_pad")(x))
        moments.append((tf.reduce_mean(feats, [0, 1, 2]).numpy(),
                        tf.math.reduce_variance(feats, [0, 1, 2]).numpy()))
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean([m for m, _ in moments], 0),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean([v for _, v in moments], 0),
                               rtol=1e-3, atol=1e-5)
    assert bn.momentum == 0.9  # restored


def test_select_picks_the_best_in_range(supernet, data):
    train, val = data
    board = _board(PATHS)
    full = select_lib.select(SPACE, supernet, board, train, val, bn_batches=2, batch_size=8)
    table = full.table
    assert len(table) == len(PATHS)
    # the choice against accuracies measured here, path by path, outside select
    measured = {tuple(p): select_lib.evaluate_path(SPACE, supernet, p, train, val, 2, 8)
                for p in PATHS}
    for row in table:
        assert row["accuracy"] == pytest.approx(measured[tuple(flat_path(row["path"]))])
    best = max(measured.values())
    assert full.best is table[0] and full.best["accuracy"] == pytest.approx(best)
    cost = flops.cost_table(SPACE)
    for row in table:
        assert row["macs"] == cost.path_macs(row["path"])
        assert row["params"] == cost.path_params(row["path"])
    # a range that excludes the best: the best of the rest, and nothing outside is chosen
    second = table[1]
    assert second["macs"] != full.best["macs"]
    sel = select_lib.select(SPACE, supernet, board, train, val,
                            macs_range=(second["macs"], second["macs"]), bn_batches=2,
                            batch_size=8)
    assert sel.best["path"] == second["path"]
    assert sel.best["accuracy"] == pytest.approx(second["accuracy"])
    assert [r["in_range"] for r in sel.table] == [True] + [False] * (len(PATHS) - 1)
    assert all(r["accuracy"] is None for r in sel.table[1:])  # not evaluated
    # a one-sided range
    smallest = min(r["macs"] for r in table)
    sel = select_lib.select(SPACE, supernet, board, train, val, macs_range=(None, smallest),
                            bn_batches=2, batch_size=8)
    assert sel.best["macs"] == smallest
    assert "MACs" in sel.to_text() and sel.best["paper"] in sel.to_text()


def test_select_errors(supernet, data):
    train, val = data
    board = _board(PATHS[:2])
    with pytest.raises(ValueError, match="no board path has MACs"):
        select_lib.select(SPACE, supernet, board, train, val, macs_range=(0, 10), bn_batches=0)
    with pytest.raises(ValueError, match="empty"):
        select_lib.select(SPACE, supernet, Board(2, SPACE.num_layers, 2, (32, 32, 3), 10),
                          train, val)
