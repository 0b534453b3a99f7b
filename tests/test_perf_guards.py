"""Performance guards that do not time anything: one trace serves every path.

A retrace per path would cost a full trace of every branch (tens of seconds) at each new path, so
the full Cream step (board scoring, teacher choice, teacher forward, Cream loss, path-only update)
and its mixed-precision variants must trace once over 20 distinct paths.
"""
import numpy as np
import pytest
import keras
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
    assert steps.step.experimental_get_tracing_count() == 1
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


class _CondSGD(trainer.PathSGD):
    """The reference: Keras' own SGD update under one tf.cond per variable."""

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        layer, op = self._owners[index]
        if self.l2 and self._decayed[index]:
            gradient = gradient + self.l2 * variable
        active = tf.reduce_all(tf.math.is_finite(gradient))
        if layer >= 0:
            active = tf.logical_and(active, tf.equal(self.path.value[layer], op))

        def update():
            keras.optimizers.SGD.update_step(self, gradient, variable, learning_rate)
            return tf.constant(True)

        tf.cond(active, update, lambda: tf.constant(False))

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # every variable through update_step above, also when traced (PathSGD groups by branch)
        keras.optimizers.SGD._backend_update_step(self, grads, trainable_variables,
                                                  learning_rate)


@pytest.mark.slow  # 5 minutes at load ~10 on 2 cores (the gradient trace of every branch)
@pytest.mark.parametrize("traced", [False, True], ids=["eager", "traced"])
def test_path_update_matches_keras_sgd_under_cond(traced):
    """PathSGD's update is bit-identical to Keras' SGD run under a cond per variable: eagerly
    (one select per variable, as under a distribution strategy) and traced on one device (one
    cond per branch)."""
    from cream_tf.supernet import SuperNet
    tf.keras.utils.set_random_seed(0)
    net = SuperNet(TINY)
    variables = net.trainable_variables
    x = tf.random.stateless_uniform([4, 32, 32, 3], seed=[1, 2])
    y = tf.constant([0, 1, 2, 3])
    path = tf.constant(Sampler(TINY, "release", seed=0).sample(0), tf.int32)

    @tf.function
    def grads_of(p):
        with tf.GradientTape() as tape:
            logits = net(x, path=p, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        return tape.gradient(loss, variables)

    start = [v.numpy().copy() for v in variables]
    results = []
    for cls in (trainer.PathSGD, _CondSGD):
        for v, w in zip(variables, start):
            v.assign(w)
        opt = cls(net.variable_owner, TINY.num_layers, learning_rate=0.1, l2=1e-2)
        opt.build(variables)
        for step in range(2):  # the second step exercises the momentum
            p = path if step == 0 else tf.reverse(path, [0]) * 0  # op 0 everywhere
            opt.set_path(p)
            if traced:  # variables are captured, not arguments (those would become tensors)
                tf.function(lambda g: opt.apply(g, variables))(grads_of(p))
            else:
                opt.apply(grads_of(p), variables)
        results.append(([v.numpy() for v in variables], [m.numpy() for m in opt.momentums]))
    for a, b in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, w) for a, w in zip(results[0][0], start))
