"""The search trains the matching network and fills the board as the release does.

Each test checks one behaviour of `search.StepFunctions` against an independent eager reference
(plain supernet calls and hand-written SGD), on a tiny space.
"""
import numpy as np
import pytest
import tensorflow as tf

from cream_tf import matching as matching_lib
from cream_tf import search
from cream_tf.sampler import Sampler
from cream_tf.space import Space
from conftest import mirrored

TINY = Space("mbconv", depth=(1, 2, 1, 1, 1), resolution=32, width=0.25, num_classes=10)
K, N_IMAGES, BATCH = 3, 2, 8


def _config(**overrides):
    values = dict(epochs=1, steps_per_epoch=10, warmup_epochs=0, batch_size=BATCH,
                  learning_rate=0.1, board_size=K, board_images=N_IMAGES, meta_slice=4,
                  meta_lr=0.05, seed=3)
    values.update(overrides)
    return search.SearchConfig(**values)


def _state(config, strategy=None, step=3):
    """A search state with a full board of K paths other than the student's, at `step`."""
    tf.keras.utils.set_random_seed(3)
    state = search.SearchState(TINY, config, strategy or tf.distribute.get_strategy())
    rng = np.random.default_rng(0)
    sampler = Sampler(TINY, config.prior, None, None, 3)
    for j in range(K):
        path = sampler.sample(100 + j)
        state.board.update(path, 90.0 - j, sampler.path_macs(path),
                           rng.uniform(size=(N_IMAGES, 32, 32, 3)).astype(np.float32),
                           rng.dirichlet(np.ones(10), size=N_IMAGES).astype(np.float32))
    state.step.assign(step)
    return state, tf.constant(sampler.sample(0), tf.int32)


def _batch():
    x = tf.random.stateless_uniform([BATCH, 32, 32, 3], seed=[7, 8])
    return x, tf.constant(np.arange(BATCH) % 10, tf.int32)


def _values(variables):
    return [v.numpy().copy() for v in variables]


def _nesterov_first_step(weight, grad, lr, momentum=0.9):
    """Nesterov SGD from zero momentum: m = -lr g; w + momentum * m - lr g."""
    return weight - lr * (1 + momentum) * grad


@pytest.mark.parametrize("scoring_gradient", [
    True, pytest.param(False, marks=pytest.mark.slow)])  # False: a trace of its own
def test_distillation_step_trains_the_matching_network_through_rho(scoring_gradient):
    """The release does not detach rho: every distillation step moves M by its own optimizer
    (Nesterov 0.9, meta_lr with the linear decay) on dL/dM, and the student by the whole
    gradient, its board scoring's part included unless `scoring_gradient=False`. A warm-up step
    leaves M alone."""
    config = _config(scoring_gradient=scoring_gradient)
    state, path = _state(config)
    x, y = _batch()
    net, board, matching = state.supernet, state.board, state.matching
    steps = search.StepFunctions(state)
    before = _values(matching.trainable_variables)
    steps.warmup(x, y, path)
    for w, v in zip(before, matching.trainable_variables):
        np.testing.assert_array_equal(v.numpy(), w)
    # the reference: the step's forwards as plain training-mode calls, the gradient to M
    with tf.GradientTape(persistent=True) as tape:
        images = tf.reshape(board.images, [K * N_IMAGES, 32, 32, 3])
        probs = tf.reshape(tf.nn.softmax(net(images, path=path, training=True)),
                           [K, N_IMAGES, 10])
        if not scoring_gradient:
            probs = tf.stop_gradient(probs)
        index, rho, _ = matching_lib.select_teacher("meta", probs, board.probs, board.size,
                                                    matching)
        teacher = net(x, path=tf.gather(board.paths, index), training=True)
        loss = matching_lib.cream_loss(y, net(x, path=path, training=True), teacher, rho,
                                       config.label_smoothing, BATCH)
    want_grads = tape.gradient(loss, matching.trainable_variables)
    # the student's update: Nesterov from the warm-up step's momentum, at the decayed rate
    opt = state.path_optimizer
    student_lr = config.learning_rate * (1 - 3 / config.total_steps)
    student = tape.gradient(loss, net.trainable_variables)
    owners = [net.variable_owner(v) for v in net.trainable_variables]
    want_net = []
    for v, g, o, i in zip(net.trainable_variables, student, owners, range(len(owners))):
        w = v.numpy()
        if g is None or not (o.layer < 0 or int(path[o.layer]) == o.op):
            want_net.append(w)
            continue
        g = g.numpy() + (config.weight_decay * w if len(v.shape) > 1 else 0.0)
        m = opt.momentums[i].numpy() * 0.9 - student_lr * g
        want_net.append(w + m * 0.9 - student_lr * g)
    before_net = _values(net.trainable_variables)
    out = steps.distill(x, y, path)
    scale = max(np.abs(w - b).max() for w, b in zip(want_net, before_net))
    for v, w in zip(net.trainable_variables, want_net):
        np.testing.assert_allclose(v.numpy(), w, rtol=1e-3, atol=1e-3 * scale)
    assert int(out["teacher"]) == int(index)
    np.testing.assert_allclose(float(out["rho"]), float(rho), rtol=1e-4)
    lr = config.meta_lr * (1 - 3 / config.total_steps)  # the linear decay at step 3
    for w, g, v in zip(before, want_grads, matching.trainable_variables):
        want = _nesterov_first_step(w, g.numpy(), lr)
        assert np.abs(want - w).max() > 1e-6  # M moves
        np.testing.assert_allclose(v.numpy(), want, rtol=1e-3, atol=1e-3 * np.abs(want - w).max())


@pytest.mark.slow  # a trace of its own
def test_matching_network_is_untouched_by_a_top1_search():
    """No rho to learn from (rho = 0.5), and no board scoring either, as in the release."""
    state, path = _state(_config(teacher="top1"))
    before = _values(state.matching.trainable_variables)
    search.StepFunctions(state).distill(*_batch(), path)
    for w, v in zip(before, state.matching.trainable_variables):
        np.testing.assert_array_equal(v.numpy(), w)


def _reference_meta(state, path, x, y, config):
    """The release's meta update written out: the real student step is hand-written Nesterov SGD
    on the path's variables (clipped inner gradient plus L2 on kernels), the meta-gradient comes
    from `meta_update` with that step (its mathematics is checked against finite differences in
    test_matching), and M's step is hand-written too."""
    net, board, matching = state.supernet, state.board, state.matching
    t = int(state.step.numpy())
    decay = 1 - t / config.total_steps
    student_lr, meta_lr = config.learning_rate * decay, config.meta_lr * decay
    owners = [net.variable_owner(v) for v in net.trainable_variables]
    on_path = [o.layer < 0 or int(path[o.layer]) == o.op for o in owners]
    seen = {}

    def student_step(g):
        clipped, norm = tf.clip_by_global_norm(g, 1.0)
        seen["norm"] = float(norm)
        new = []
        for w, c, active, v in zip(net.trainable_variables, clipped, on_path,
                                   net.trainable_variables):
            w = tf.convert_to_tensor(w)
            if not active:
                new.append(w)
                continue
            grad = c + (config.weight_decay * w if len(v.shape) > 1 else 0.0)
            new.append(_nesterov_first_step(w, grad, student_lr))
        seen["weights"] = [n.numpy() for n in new]
        return new

    m = config.meta_slice
    update = matching_lib.meta_update(
        net, path, matching, board.images, board.probs, board.size, x[:m], y[:m],
        x[m:2 * m], y[m:2 * m], meta_lr, config.label_smoothing, m, board_paths=board.paths,
        student_step=student_step)
    clipped, m_norm = tf.clip_by_global_norm(update.grads, 1.0)
    m_new = [_nesterov_first_step(v.numpy(), g.numpy(), meta_lr)
             for v, g in zip(matching.trainable_variables, clipped)]
    return seen["weights"], m_new, seen["norm"], float(m_norm)


@pytest.mark.parametrize("meta_lr", [0.05, 50.0])
def test_meta_update_is_the_releases(meta_lr):
    """Simulated step at M's rate, a real clipped student step with the student's optimizer, the
    outer loss on the batch's next slice, M's gradient clipped at 1 and applied with Nesterov.
    A large meta rate makes the inner gradient's step count: the result must still match."""
    config = _config(meta_lr=meta_lr)
    state, path = _state(config)
    x, y = _batch()
    net, matching = state.supernet, state.matching
    before_net, before_m = _values(net.trainable_variables), _values(matching.trainable_variables)
    want_net, want_m, norm, m_norm = _reference_meta(state, path, x, y, config)
    for v, w in zip(net.trainable_variables, before_net):  # the reference wrote nothing
        np.testing.assert_array_equal(v.numpy(), w)
    assert norm > 0 and m_norm > 0
    steps = search.StepFunctions(state)
    # the held-out arguments are not read with meta_outer='batch': pass something else
    assert steps.meta(x, y, tf.zeros_like(x), tf.zeros_like(y), path)
    # tolerance relative to the largest change: some variables' changes are rounding noise
    scale = max(np.abs(w - b).max() for w, b in zip(want_net, before_net))
    moved = 0
    for v, w, b in zip(net.trainable_variables, want_net, before_net):
        np.testing.assert_allclose(v.numpy(), w, rtol=1e-4, atol=1e-4 * scale)
        moved += bool(np.abs(w - b).max() > 1e-3 * scale)
    assert moved > 10  # the real student step moved the path
    for v, w, b in zip(matching.trainable_variables, want_m, before_m):
        assert np.abs(w - b).max() > 0
        np.testing.assert_allclose(v.numpy(), w, rtol=1e-3, atol=1e-3 * np.abs(w - b).max())


def test_clip_bounds_the_matching_networks_step():
    """Whatever the gradient, one meta step moves M by at most (1 + momentum) * lr * 1.0."""
    config = _config(meta_lr=1.0)
    state, path = _state(config)
    matching = state.matching
    matching.dense.kernel.assign(matching.dense.kernel * 30.0)  # large scores, large gradients
    before = _values(matching.trainable_variables)
    assert search.StepFunctions(state).meta(*_batch(), *_batch(), path)
    delta = np.sqrt(sum(((v.numpy() - b) ** 2).sum()
                        for v, b in zip(matching.trainable_variables, before)))
    lr = config.meta_lr * (1 - 3 / config.total_steps)
    assert 0 < delta <= 1.9 * lr * (1 + 1e-5)


@pytest.mark.parametrize("steps_per_epoch, interval, warmup, want", [
    (100, 50, 5, [550, 650, 750, 850, 950, 1050, 1150, 1250, 1350, 1450]),
    (10, 5, 0, [5, 15]),
    (1251, 200, 0, [200, 400, 600, 800, 1000, 1200, 1451, 1651]),
])
def test_meta_updates_at_the_releases_batches(steps_per_epoch, interval, warmup, want):
    """After the warm-up, at batches interval, 2 * interval, ... of each epoch, never at an
    epoch's first batch (the release's rule)."""
    epochs = 15 if steps_per_epoch == 100 else 2
    config = _config(epochs=epochs, steps_per_epoch=steps_per_epoch, warmup_epochs=warmup,
                     meta_interval=interval)
    due = [s for s in range(config.total_steps) if config.meta_due(s)]
    assert due[:len(want)] == want
    assert len(due) == config.meta_updates
    assert not _config(teacher="top1").meta_due(5) and _config(teacher="top1").meta_updates == 0


@pytest.mark.slow  # two traces of the step and the meta update
def test_two_replicas_distill_and_meta_like_one_device():
    """Distillation (M trained through rho, the scoring's gradient averaged over replicas) and
    the meta update (the teacher chosen identically, the inner and M's gradients summed and
    clipped as one device would) give one device's weights on 2 replicas. The two halves of the
    batch are the same images, so BatchNorm sees the same statistics either way."""
    half = tf.random.stateless_uniform([4, 32, 32, 3], seed=[3, 4])
    x = tf.concat([half, half], axis=0)
    y = tf.constant(np.arange(8) % 4, tf.int32)
    results = []
    for strategy in (tf.distribute.get_strategy(), mirrored()):
        # meta_slice 2: the slices are images 0-1 and 2-3 of `half`, on one device and on each
        # of the two replicas
        state, path = _state(_config(meta_slice=2), strategy)
        steps = search.StepFunctions(state)
        before = _values(state.supernet.trainable_variables + state.matching.trainable_variables)
        assert steps.meta(x, y, x, y, path)
        out = steps.distill(x, y, path)
        after = _values(state.supernet.trainable_variables + state.matching.trainable_variables)
        results.append((int(out["teacher"]), float(out["rho"]), before,
                        [a - b for a, b in zip(after, before)]))
    (t1, r1, b1, d1), (t2, r2, b2, d2) = results
    assert t1 == t2 and r1 == pytest.approx(r2, rel=1e-5)
    for a, b in zip(b1, b2):
        np.testing.assert_array_equal(a, b)
    scale = max(np.abs(d).max() for d in d1)
    for one, two in zip(d1, d2):
        np.testing.assert_allclose(two, one, rtol=1e-3, atol=1e-3 * scale)
    assert np.abs(d1[-2]).max() > 0  # M moved
