"""Matching network, teacher selection, the Cream loss and the meta-gradient (docs/method.md)."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from cream_tf import matching as M
from conftest import mirrored

N, C = 2, 3


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


# -- the matching network ------------------------------------------------------------------------

def test_matching_network_is_one_dense_on_the_flattened_difference():
    m = M.MatchingNetwork(N, C, seed=3)
    assert len(m.trainable_variables) == 2  # built on construction
    kernel, bias = (v.numpy() for v in m.dense.weights)
    assert kernel.shape == (N * C, 1) and bias.shape == (1,)
    assert np.abs(kernel).max() <= 1.0 and np.all(bias == 0)  # the release's re-initialisation
    diff = np.random.default_rng(0).normal(size=(4, N, C)).astype(np.float32)
    want = diff.reshape(4, -1) @ kernel[:, 0] + bias[0]
    np.testing.assert_allclose(m(diff).numpy(), want, rtol=1e-5)
    clone = M.MatchingNetwork.from_config(m.get_config())
    assert (clone.num_images, clone.num_classes) == (N, C)
    with pytest.raises(ValueError, match=r"takes \[K, 2, 3\]"):
        m(np.zeros([4, N * C], np.float32))
    with pytest.raises(ValueError, match="num_classes"):
        M.MatchingNetwork(N, 0)


@pytest.mark.parametrize("images, classes", [(4, 10), (4, 1000)])
def test_matching_network_starts_as_the_release_kernel_uniform_in_unit_interval(images, classes):
    """The release re-initialises its Linear with fan_out 1: kernel U(-1, 1), bias 0, whatever
    the size (torch's default would be +-1/sqrt(n * classes): 63x smaller at ImageNet size)."""
    kernel, bias = (v.numpy() for v in M.MatchingNetwork(images, classes, seed=0).dense.weights)
    assert np.all(bias == 0)
    assert np.abs(kernel).max() <= 1.0
    assert abs(kernel.std() - 1 / math.sqrt(3)) < 4 / math.sqrt(kernel.size)  # U(-1, 1): 0.577
    assert np.abs(kernel).max() > 0.9
    again = M.MatchingNetwork(images, classes, seed=0).dense.kernel.numpy()
    np.testing.assert_array_equal(kernel, again)  # seeded


def test_matching_network_variables_are_mirrored_when_made_in_scope():
    with mirrored().scope():
        m = M.MatchingNetwork(N, C)
    assert "Mirrored" in type(m.dense.kernel.value).__name__


# -- teacher selection ---------------------------------------------------------------------------

def set_matching(m, kernel, bias=0.0):
    m.dense.kernel.assign(np.asarray(kernel, np.float32).reshape(N * C, 1))
    m.dense.bias.assign([bias])


def hand_built(k=4):
    """Student probs equal the board probs except a per-entry offset in element [0, 0]; M reads
    only that element, so entry i scores offsets[i]."""
    board = np.full([k, N, C], 1.0 / C, np.float32)
    offsets = np.array([0.5, 2.0, -1.0, 3.0], np.float32)[:k]
    student = board.copy()
    student[:, 0, 0] += offsets
    m = M.MatchingNetwork(N, C)
    set_matching(m, [1, 0, 0, 0, 0, 0])
    return student, board, offsets, m


def test_top1():
    student, board, _, m = hand_built()
    index, rho, scores = M.select_teacher("top1", student, board, 3, m)
    assert int(index) == 0 and float(rho) == 0.5
    np.testing.assert_array_equal(scores.numpy(), np.zeros(4))


@pytest.mark.parametrize("size, want", [(4, 3), (3, 1), (2, 1), (1, 0)])
def test_meta_picks_the_best_valid_entry_and_its_rho(size, want):
    student, board, offsets, m = hand_built()
    index, rho, scores = M.select_teacher("meta", student, board, size, m)
    np.testing.assert_allclose(scores.numpy(), offsets, rtol=1e-6)
    assert int(index) == want  # entry 3 scores best but is empty unless size == 4
    # rho is the sigmoid of the CHOSEN entry's score (not of the last entry scored, as the release)
    np.testing.assert_allclose(float(rho), sigmoid(offsets[want]), rtol=1e-6)
    assert index.dtype == tf.int32 and rho.dtype == tf.float32 and rho.shape == ()


def test_meta_works_in_tf_function_and_per_replica():
    student, board, offsets, m = hand_built()
    strategy = mirrored()

    @tf.function
    def run(size):
        return strategy.run(lambda: M.select_teacher("meta", student, board, size, m)[:2])

    for size, want in ((4, 3), (2, 1)):
        index, rho = run(tf.constant(size))
        assert [int(i) for i in strategy.experimental_local_results(index)] == [want, want]
        np.testing.assert_allclose(
            [float(r) for r in strategy.experimental_local_results(rho)],
            [sigmoid(offsets[want])] * 2, rtol=1e-6)


def test_non_finite_entry_is_skipped():
    student, board, offsets, m = hand_built()
    student[3, 1, 2] = np.nan  # the entry that would win
    index, rho, _ = M.select_teacher("meta", student, board, 4, m)
    assert int(index) == 1
    np.testing.assert_allclose(float(rho), sigmoid(offsets[1]), rtol=1e-6)


@pytest.mark.parametrize("case", ["all_nan_probs", "nan_matching", "inf_score", "empty_board"])
def test_non_finite_scores_fall_back_to_the_best_entry(case):
    student, board, _, m = hand_built()
    size = 3
    if case == "all_nan_probs":
        student[:] = np.nan
    elif case == "nan_matching":
        set_matching(m, [np.nan] * 6)
    elif case == "inf_score":
        set_matching(m, [1, 0, 0, 0, 0, 0], bias=np.inf)
    else:
        size = 0
    with tf.GradientTape() as tape:
        index, rho, _ = M.select_teacher("meta", student, board, size, m)
    assert int(index) == 0 and float(rho) == 0.5
    grads = tape.gradient(rho, m.trainable_variables)
    if case != "nan_matching":  # with NaN weights nothing about M is finite any more
        assert all(g is None or np.isfinite(g.numpy()).all() for g in grads)


def test_gradient_of_rho_reaches_the_matching_network_only_through_the_chosen_entry():
    student, board, offsets, m = hand_built()
    student[0, 1, 1] = np.nan  # a NaN elsewhere must not poison M's gradient
    with tf.GradientTape() as tape:
        index, rho, _ = M.select_teacher("meta", student, board, 4, m)
    kernel_grad, bias_grad = tape.gradient(rho, [m.dense.kernel, m.dense.bias])
    s = sigmoid(offsets[3])
    want = s * (1 - s) * (student[3] - board[3]).reshape(-1)
    np.testing.assert_allclose(kernel_grad.numpy()[:, 0], want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(bias_grad.numpy(), [s * (1 - s)], rtol=1e-5)


def test_bad_modes():
    student, board, _, m = hand_built()
    with pytest.raises(ValueError, match="valid modes: top1, meta"):
        M.select_teacher("best", student, board, 3, m)
    with pytest.raises(ValueError, match="needs the matching network"):
        M.select_teacher("meta", student, board, 3)


def test_student_board_probs_is_one_batched_forward_without_padding_zeros():
    rng = np.random.default_rng(0)
    k, shape = 4, (2, 2, 1)
    images = rng.normal(size=(k, N, *shape)).astype(np.float32)
    images[2:] = 0  # empty slots
    weights = rng.normal(size=(4, C)).astype(np.float32)
    calls = []

    def forward(x):
        calls.append(tuple(x.shape))
        return tf.reshape(x, [x.shape[0], -1]) @ weights

    probs = M.student_board_probs(forward, images, 2).numpy()
    assert calls == [(k * N, *shape)]
    for slot, entry in enumerate([0, 1, 0, 1]):  # empty slots hold copies of valid entries
        logits = images[entry].reshape(N, -1) @ weights
        want = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        np.testing.assert_allclose(probs[slot], want, rtol=1e-5)


# -- the Cream loss ------------------------------------------------------------------------------

def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_cream_loss(labels, student, teacher, rho, smoothing, global_batch):
    logp = np_log_softmax(student.astype(np.float64))
    c = student.shape[-1]
    target = (np.eye(c)[labels] if labels.ndim == 1 else labels) * (1 - smoothing) + smoothing / c
    ce = -(target * logp).sum(-1)
    if teacher is None:
        return ce.sum() / global_batch
    t = np.exp(np_log_softmax(teacher.astype(np.float64)))
    kd = -(t * logp).sum(-1)
    return ((rho * kd + (2 - rho) * ce) / 2).sum() / global_batch


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.5, 0.97])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("one_hot", [False, True])
def test_cream_loss_matches_numpy(rho, smoothing, one_hot):
    rng = np.random.default_rng(1)
    student = rng.normal(size=(6, 5)).astype(np.float32) * 3
    teacher = rng.normal(size=(6, 5)).astype(np.float32) * 3
    labels = rng.integers(0, 5, 6)
    given = np.eye(5, dtype=np.float32)[labels] if one_hot else labels.astype(np.int32)
    got = M.cream_loss(given, student, teacher, tf.constant(rho), smoothing, 8)
    np.testing.assert_allclose(float(got), np_cream_loss(labels, student, teacher, rho,
                                                         smoothing, 8), rtol=1e-5)
    got = M.cream_loss(given, student, None, tf.constant(rho), smoothing, 6)
    np.testing.assert_allclose(float(got), np_cream_loss(labels, student, None, rho,
                                                         smoothing, 6), rtol=1e-5)


def test_cream_loss_gradient_stops_at_teacher_but_reaches_rho():
    rng = np.random.default_rng(2)
    student = tf.constant(rng.normal(size=(4, 5)), tf.float32)
    teacher = tf.constant(rng.normal(size=(4, 5)), tf.float32)
    rho = tf.constant(0.7)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([student, teacher, rho])
        loss = M.cream_loss([0, 1, 2, 3], student, teacher, rho, 0.1, 4)
    assert tape.gradient(loss, teacher) is None
    # the release does not detach rho: dL/drho = mean over the batch of (KD - CE) / 2
    logp = np_log_softmax(student.numpy())
    kd = -(tf.nn.softmax(teacher).numpy() * logp).sum(-1)
    ce = -((np.eye(5)[[0, 1, 2, 3]] * 0.9 + 0.02) * logp).sum(-1)
    np.testing.assert_allclose(float(tape.gradient(loss, rho)), ((kd - ce) / 2).mean(), rtol=1e-5)
    # d/dlogits of the per-example loss: (rho (p - t) + (2 - rho)(p - y_smooth)) / 2 / B
    p = tf.nn.softmax(student).numpy()
    t = tf.nn.softmax(teacher).numpy()
    y = np.eye(5)[[0, 1, 2, 3]] * 0.9 + 0.02
    want = (0.7 * (p - t) + 1.3 * (p - y)) / 2 / 4
    np.testing.assert_allclose(tape.gradient(loss, student).numpy(), want, rtol=1e-4, atol=1e-7)


def test_cream_loss_under_mirrored_gives_single_device_gradients():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 6)).astype(np.float32)
    teacher = rng.normal(size=(8, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 8).astype(np.int32)
    init = [rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)]

    def make():
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
        model.set_weights(init)
        return model

    single = make()
    with tf.GradientTape() as tape:
        loss = M.cream_loss(labels, single(x), teacher, 0.6, 0.1, 8)
    want = [g.numpy() for g in tape.gradient(loss, single.trainable_variables)]

    strategy = mirrored()
    with strategy.scope():
        model = make()
    data = strategy.experimental_distribute_values_from_function(
        lambda ctx: tuple(a[ctx.replica_id_in_sync_group * 4:][:4] for a in (x, teacher, labels)))

    @tf.function
    def step(data):
        def replica(xs, ts, ys):
            with tf.GradientTape() as tape:
                loss = M.cream_loss(ys, model(xs), ts, tf.constant(0.6), 0.1, 8)
            return loss, tape.gradient(loss, model.trainable_variables)
        loss, grads = strategy.run(replica, args=data)
        return (strategy.reduce("SUM", loss, axis=None),
                [strategy.reduce("SUM", g, axis=None) for g in grads])

    total, grads = step(data)
    np.testing.assert_allclose(float(total), float(loss), rtol=1e-6)
    for g, w in zip(grads, want):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-5, atol=1e-7)


# -- the meta-gradient ---------------------------------------------------------------------------

class TinyPathNet(keras.Model):
    """Dense -> tanh -> (BatchNorm) -> one of two heads chosen by path[0] in a tf.switch_case,
    logits scaled by 1 + path[1] / 2.

    The path must matter: with one network for teacher and student, the KD gradient with the
    student's own (stopped) softmax as target is exactly zero, and so would be the meta-gradient.
    """

    def __init__(self, classes=C, hidden=5, batch_norm=True, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(hidden, activation="tanh", dtype=self.dtype_policy)
        self.norm = keras.layers.BatchNormalization(dtype=self.dtype_policy) if batch_norm else None
        self.heads = [keras.layers.Dense(classes, dtype=self.dtype_policy, name=f"head{i}")
                      for i in range(2)]
        self.hidden_units = hidden

    def build(self, input_shape):
        self.hidden.build((None, int(np.prod(input_shape[1:]))))
        if self.norm is not None:
            self.norm.build((None, self.hidden_units))
        for head in self.heads:
            head.build((None, self.hidden_units))
        self.built = True

    def call(self, x, path=None, training=False):
        h = self.hidden(keras.ops.reshape(x, (keras.ops.shape(x)[0], -1)))
        if self.norm is not None:
            h = self.norm(h, training=training)
        logits = tf.switch_case(tf.cast(path[0], tf.int32),
                                [lambda: self.heads[0](h), lambda: self.heads[1](h)])
        return logits * (1 + 0.5 * tf.cast(path[1], logits.dtype))  # path[1]: a temperature


def meta_problem(seed=0, batch_norm=True, dtype="float64", k=3, size=2, batch=4):
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    model = TinyPathNet(batch_norm=batch_norm, dtype=dtype)
    model.build((None, 2, 2, 1))
    matching = M.MatchingNetwork(N, C, seed=seed, dtype=dtype)
    # scores of order 1: entries clearly apart, rho away from 0.5 but not saturated
    matching.dense.kernel.assign(rng.normal(size=(N * C, 1)) * 2)
    board = dict(
        board_images=rng.normal(size=(k, N, 2, 2, 1)).astype(dtype),
        board_probs=rng.dirichlet(np.ones(C), size=(k, N)).astype(dtype),
        board_size=size,
        # every valid teacher differs from the student path (0, 0), and from each other
        board_paths=np.array([[1, 0], [1, 1], [0, 1]][:k], np.int32))
    data = dict(x_kd=rng.normal(size=(batch, 2, 2, 1)).astype(dtype),
                y_kd=rng.integers(0, C, batch).astype(np.int32),
                x_val=rng.normal(size=(batch, 2, 2, 1)).astype(dtype),
                y_val=rng.integers(0, C, batch).astype(np.int32))
    return model, matching, board, data


def reference_objective(model, matching, board, data, lr, smoothing, inner_loss, path=(0, 0)):
    """The meta-objective written independently: plain model calls, real weight assignment.

    As in the release, the student scores the board with gradient, so rho depends on the
    student's weights and the inner gradient carries that dependence."""
    k, size = board["board_images"].shape[0], board["board_size"]
    images = board["board_images"][[j % size for j in range(k)]]
    batch = data["x_kd"].shape[0]
    y_kd = np.eye(C)[data["y_kd"]] * (1 - smoothing) + smoothing / C
    with tf.GradientTape() as tape:
        logits = model(images.reshape(k * N, 2, 2, 1), path=np.array(path), training=True)
        student = tf.reshape(tf.nn.softmax(logits), [k, N, C])
        scores = matching(student - board["board_probs"])
        index = int(np.argmax(scores.numpy()[:size]))
        rho = tf.sigmoid(scores[index])
        teacher = model(data["x_kd"], path=board["board_paths"][index], training=True).numpy()
        t = np.exp(np_log_softmax(teacher))
        logp = tf.nn.log_softmax(model(data["x_kd"], path=np.array(path), training=True))
        kd = -tf.reduce_sum(t * logp, -1)
        if inner_loss == "kd":
            loss = tf.reduce_sum(rho * kd) / batch
        else:
            ce = -tf.reduce_sum(y_kd * logp, -1)
            loss = tf.reduce_sum((rho * kd + (2 - rho) * ce) / 2) / batch
    grads = tape.gradient(loss, model.trainable_variables)
    saved = [v.numpy() for v in model.trainable_variables]
    for v, g in zip(model.trainable_variables, grads):
        if g is not None:  # eager switch_case: the untaken head has no gradient
            v.assign(v - lr * g)
    logp = np_log_softmax(model(data["x_val"], path=np.array(path), training=True).numpy())
    y_val = np.eye(C)[data["y_val"]] * (1 - smoothing) + smoothing / C
    value = -(y_val * logp).sum() / batch
    for v, w in zip(model.trainable_variables, saved):
        v.assign(w)
    return value, index


@pytest.mark.parametrize("inner_loss", ["kd", "cream"])
def test_meta_gradients_match_central_finite_differences(inner_loss):
    """Tolerance: float64, eps = 1e-6. The central difference's truncation error is
    O(eps^2 * J''') ~ 1e-12 and its rounding error ~ 1e-16 * |J| / eps ~ 1e-10 against gradients
    of order 1e-3..1e-1, so rtol 1e-5 (atol 1e-9) has wide margin yet catches any missing term,
    e.g. differentiating through the head only (tested below to differ by far more)."""
    model, matching, board, data = meta_problem()
    lr, smoothing = 0.7, 0.1
    before = [v.numpy().copy() for v in model.variables]
    grads = M.meta_gradients(model, tf.constant([0, 0]), matching, board["board_images"],
                             board["board_probs"], board["board_size"], data["x_kd"],
                             data["y_kd"], data["x_val"], data["y_val"], lr, smoothing, 4,
                             board_paths=board["board_paths"], inner_loss=inner_loss)
    for v, w in zip(model.variables, before):  # stateless: BN statistics and weights untouched
        np.testing.assert_array_equal(v.numpy(), w)
    eps = 1e-6
    chosen = None
    for var, grad in zip(matching.trainable_variables, grads):
        base = var.numpy().copy()
        estimate = np.zeros_like(base)
        for i in np.ndindex(base.shape):
            values = []
            for sign in (1, -1):
                shifted = base.copy()
                shifted[i] += sign * eps
                var.assign(shifted)
                value, index = reference_objective(model, matching, board, data, lr, smoothing,
                                                   inner_loss)
                assert chosen in (None, index)  # the teacher choice is stable under eps
                chosen = index
                values.append(value)
            estimate[i] = (values[0] - values[1]) / (2 * eps)
        var.assign(base)
        assert np.abs(estimate).max() > 1e-4  # the test has something to check
        np.testing.assert_allclose(grad.numpy(), estimate, rtol=1e-5, atol=1e-9)


def test_meta_gradients_flow_through_every_weight_not_only_the_head():
    """The release differentiated through the stem only; dropping the hidden layer's part of the
    simulated step must change the result, so the FD test above would catch it."""
    model, matching, board, data = meta_problem()
    args = (model, tf.constant([0, 0]), matching, board["board_images"], board["board_probs"],
            board["board_size"], data["x_kd"], data["y_kd"], data["x_val"], data["y_val"], 0.7,
            0.1, 4)
    full = M.meta_gradients(*args, board_paths=board["board_paths"])
    by_hand = _meta_with_frozen(model, matching, board, data, frozen=[])
    head_only = _meta_with_frozen(model, matching, board, data, frozen=model.hidden.weights)
    for f, h in zip(full, by_hand):
        # float64; the central difference of the scoring's directional derivative (a relative
        # step of 6e-6) is what keeps this above op-order rounding
        np.testing.assert_allclose(f.numpy(), h.numpy(), rtol=1e-7, atol=1e-9)
    assert np.abs(full[0].numpy() - head_only[0].numpy()).max() > \
        1e-2 * np.abs(full[0].numpy()).max()


def _meta_with_frozen(model, matching, board, data, frozen):
    """Meta-gradient by hand with some weights left out of the simulated step."""
    frozen_ids = {id(v) for v in frozen}
    weights = [tf.identity(v.value) for v in model.trainable_variables]
    state = [tf.identity(v.value) for v in model.non_trainable_variables]

    def forward(w, x, p):
        return model.stateless_call(w, state, x, path=p, training=True)[0]

    path = tf.constant([0, 0])
    with tf.GradientTape() as outer:  # second order, exact: a backward through a backward
        with tf.GradientTape() as inner:
            inner.watch(weights)
            student = M.student_board_probs(lambda x: forward(weights, x, path),
                                            board["board_images"], board["board_size"])
            index, rho, _ = M.select_teacher("meta", student, board["board_probs"],
                                             board["board_size"], matching)
            teacher = tf.stop_gradient(
                forward(weights, data["x_kd"], tf.gather(board["board_paths"], index)))
            logp = tf.nn.log_softmax(forward(weights, data["x_kd"], path))
            loss = tf.reduce_sum(rho * -tf.reduce_sum(tf.nn.softmax(teacher) * logp, -1)) / 4
        grads = inner.gradient(loss, weights)
        stepped = [w if id(v) in frozen_ids or g is None else w - 0.7 * g
                   for v, w, g in zip(model.trainable_variables, weights, grads)]
        val = M.cream_loss(data["y_val"], forward(stepped, data["x_val"], path), None, 0.0, 0.1, 4)
    return outer.gradient(val, matching.trainable_variables)


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-8), ("float32", 2e-3)])
def test_directional_derivative_of_the_board_scoring_matches_forward_mode(dtype, rtol):
    """The meta-gradient's second-order term reads J v of the board scoring by a central
    difference; forward-mode autodiff gives it exactly."""
    model, _, board, _ = meta_problem(dtype=dtype)
    weights = [tf.identity(v.value) for v in model.trainable_variables]
    state = [tf.identity(v.value) for v in model.non_trainable_variables]
    rng = np.random.default_rng(1)
    direction = [tf.constant(rng.normal(size=w.shape), w.dtype) for w in weights]

    def scoring(w):
        return M.student_board_probs(
            lambda x: model.stateless_call(w, state, x, path=tf.constant([0, 0]),
                                           training=True)[0], board["board_images"], 2)

    got = M._directional_derivative(scoring, weights, direction, dtype)
    with tf.autodiff.ForwardAccumulator(weights, direction) as acc:
        out = scoring(weights)
    want = acc.jvp(out).numpy()
    assert np.abs(want).max() > 1e-2
    np.testing.assert_allclose(got.numpy(), want, rtol=rtol, atol=rtol * np.abs(want).max())
    zero = M._directional_derivative(scoring, weights, [None] * len(weights), dtype)
    np.testing.assert_array_equal(zero.numpy(), 0)


def test_meta_gradients_traced_once_and_per_replica_sum_equals_single_device():
    model, matching, board, data = meta_problem(batch_norm=False, dtype="float32", batch=8)
    lr, smoothing = 0.7, 0.1

    def call(model, matching, data):
        return M.meta_gradients(model, tf.constant([0, 0]), matching, board["board_images"],
                                board["board_probs"], tf.constant(board["board_size"]),
                                data["x_kd"], data["y_kd"], data["x_val"], data["y_val"],
                                tf.constant(lr), smoothing, 8, board_paths=board["board_paths"])

    want = [g.numpy() for g in call(model, matching, data)]
    strategy = mirrored()
    with strategy.scope():
        dist_model = TinyPathNet(batch_norm=False)
        dist_model.build((None, 2, 2, 1))
        dist_matching = M.MatchingNetwork(N, C)
    dist_model.set_weights(model.get_weights())
    dist_matching.set_weights(matching.get_weights())
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda ctx: {key: value[ctx.replica_id_in_sync_group * 4:][:4]
                     for key, value in data.items()})
    traces = []

    @tf.function
    def step(per_replica):
        traces.append(1)
        grads = strategy.run(lambda d: call(dist_model, dist_matching, d), args=(per_replica,))
        return [strategy.reduce("SUM", g, axis=None) for g in grads]

    for _ in range(2):
        got = step(per_replica)
    assert len(traces) == 1
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w, rtol=2e-4, atol=1e-7)
    assert np.abs(want[0]).max() > 1e-4


def test_meta_gradients_bad_arguments():
    model, matching, board, data = meta_problem()
    args = (model, tf.constant([0, 0]), matching, board["board_images"], board["board_probs"],
            2, data["x_kd"], data["y_kd"], data["x_val"], data["y_val"], 0.7, 0.1, 4)
    with pytest.raises(ValueError, match="board_paths"):
        M.meta_gradients(*args)
    with pytest.raises(ValueError, match="valid: kd, cream"):
        M.meta_gradients(*args, board_paths=board["board_paths"], inner_loss="ce")


@pytest.mark.parametrize("batch_norm, dtype, batch", [(True, "float64", 4), (False, "float32", 8)])
def test_meta_problems_are_not_degenerate(batch_norm, dtype, batch):
    model, matching, board, data = meta_problem(batch_norm=batch_norm, dtype=dtype, batch=batch)
    student = M.student_board_probs(
        lambda x: model(x, path=tf.constant([0, 0]), training=True), board["board_images"], 2)
    _, rho, scores = M.select_teacher("meta", student, board["board_probs"], 2, matching)
    assert 0.1 < float(rho) < 0.9, float(rho)
    assert abs(float(scores[0] - scores[1])) > 0.01, scores.numpy()  # >> eps of the FD test


def test_top1_needs_no_student_probs():
    _, board, _, _ = hand_built()
    index, rho, _ = M.select_teacher("top1", None, board, 2)
    assert int(index) == 0 and float(rho) == 0.5


def test_with_a_mirrored_board_per_replica():
    """The trainer's pattern: board and M in strategy.scope(), host updates, selection per
    replica reading the board's variables, the teacher path gathered from board.paths."""
    from cream_tf.board import Board
    strategy = mirrored()
    student, probs, offsets, _ = hand_built()
    with strategy.scope():
        board = Board(4, 2, N, (2, 2, 1), C)
        m = M.MatchingNetwork(N, C)
    set_matching(m, [1, 0, 0, 0, 0, 0])
    for i, score in enumerate([40.0, 30.0, 20.0]):  # entry i gets probs[i]: sorted as given
        board.update([i, i + 1], score, 100, np.zeros([N, 2, 2, 1]), probs[i])

    @tf.function
    def select(student):
        def replica():
            index, rho, _ = M.select_teacher("meta", student, board.probs, board.size, m)
            return tf.gather(board.paths, index), rho
        return strategy.run(replica)

    teacher, rho = select(tf.constant(student))
    for t, r in zip(strategy.experimental_local_results(teacher),
                    strategy.experimental_local_results(rho)):
        assert t.numpy().tolist() == [1, 2]  # entry 3 (offset 3.0) is empty: entry 1 wins
        np.testing.assert_allclose(float(r), sigmoid(offsets[1]), rtol=1e-6)
    board.update([9, 9], 50.0, 100, np.zeros([N, 2, 2, 1]), probs[3])  # fills slot 0 now
    teacher, _ = select(tf.constant(student[[3, 0, 1, 2]]))
    assert strategy.experimental_local_results(teacher)[0].numpy().tolist() == [9, 9]
