"""Performance guards that do not time anything: one trace serves every path.

A retrace per path would cost a full trace of every branch (tens of seconds) at each new path, so
the full Cream step (board scoring, teacher choice, teacher forward, Cream loss, path-only update)
and its mixed-precision variants must trace once over 20 distinct paths.
"""
import numpy as np
import pytest
import tensorflow as tf

from cream_tf import trainer
from cream_tf.sampler import Sampler
from cream_tf.space import Space

TINY = Space("mbconv", depth=1, resolution=32, width=0.25, num_classes=10)
BATCH, K, N = 8, 3, 2


def _steps(mixed_precision):
    config = trainer.SearchConfig(epochs=1, steps_per_epoch=100, warmup_epochs=0,
                                  batch_size=BATCH, board_size=K, board_images=N, meta_slice=2,
                                  learning_rate=0.05, mixed_precision=mixed_precision, verbose=0)
    state = trainer._SearchState(TINY, config, tf.distribute.get_strategy())
    return state, trainer._StepFunctions(state)


# About 3 minutes each on the shared 2-core machine (load ~6), almost all of it the one trace of
# the distillation step, hence slow.
@pytest.mark.slow
@pytest.mark.parametrize("mixed_precision", [None, "mixed_bfloat16", "mixed_float16"])
def test_cream_step_traces_once_over_20_paths(mixed_precision):
    state, steps = _steps(mixed_precision)
    sampler = Sampler(TINY, "release", seed=0)
    rng = np.random.default_rng(0)
    for j in range(K):  # a full board of distinct paths
        path = sampler.sample(1000 + j)
        state.board.update(path, 90.0 - j, sampler.path_macs(path),
                           rng.normal(size=(N, 32, 32, 3)).astype(np.float32),
                           rng.dirichlet(np.ones(10), size=N).astype(np.float32))
    images = tf.constant(rng.normal(size=(BATCH, 32, 32, 3)).astype(np.float32))
    labels = tf.constant(rng.integers(0, 10, size=BATCH).astype(np.int32))
    paths = {tuple(sampler.sample(s)) for s in range(200)}
    paths = [np.array(p, np.int32) for p in sorted(paths)[:20]]
    assert len(paths) == 20
    before = [v.numpy().copy() for v in state.supernet.trainable_variables[:4]]
    for path in paths:
        out = steps.distill(images, labels, tf.constant(path, tf.int32))
        assert np.isfinite(out["loss"].numpy())
        assert out["probs"].dtype == tf.float32
        state.board.update(path, 50.0, sampler.path_macs(path), out["images"].numpy(),
                           out["probs"].numpy())
    assert steps.distill.experimental_get_tracing_count() == 1
    # the supernet computes in the policy's dtype, keeps float32 variables, and trained
    compute = {None: "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}
    assert state.supernet.stem_ds.layers[1].compute_dtype == compute[mixed_precision]
    assert all(v.dtype == "float32" for v in state.supernet.trainable_variables)
    assert any(not np.array_equal(b, v.numpy())
               for b, v in zip(before, state.supernet.trainable_variables[:4]))
    if mixed_precision == "mixed_float16":
        assert float(state.optimizer.dynamic_scale.numpy()) > 0


def test_mixed_precision_is_validated():
    with pytest.raises(ValueError, match="mixed_precision"):
        trainer.SearchConfig(mixed_precision="float16")
