"""SuperNet: one traced graph for every path, and children that inherit a path's weights exactly."""
import numpy as np
import pytest
import tensorflow as tf

from cream_tf import arch, child, flops
from cream_tf.space import Space
from cream_tf.supernet import SuperNet, inherit_weights, nested_path

SPACES = {name: Space(name, depth=(1, 2, 1, 2, 1) if name == "mbconv" else 1, resolution=32,
                      width=0.25, num_classes=10)
          for name in ("mbconv", "mbconv_res", "mbconv_res_conv")}


@pytest.fixture(scope="module", params=sorted(SPACES))
def net(request):
    tf.keras.utils.set_random_seed(1)
    return SuperNet(SPACES[request.param])


def _random_paths(space, rng, count):
    return [[int(rng.choice(layer.choices)) for layer in space.layers] for _ in range(count)]


def _randomise_batch_norm(net, rng):
    """Non-trivial BN statistics, so the copy of moving mean/variance is tested too."""
    for v in net.non_trainable_variables:
        if "moving_mean" in v.path:
            v.assign(rng.normal(0, 0.1, v.shape).astype(np.float32))
        elif "moving_variance" in v.path:
            v.assign(rng.uniform(0.5, 1.5, v.shape).astype(np.float32))


def test_child_with_inherited_weights_equals_supernet_path(net):
    space = net.space
    rng = np.random.default_rng(0)
    _randomise_batch_norm(net, rng)
    x = tf.constant(rng.normal(size=(2, 32, 32, 3)).astype(np.float32))
    paths = _random_paths(space, rng, 3)
    # include the deepest and a skip-heavy path where the space has skips
    paths.append([max(l.choices) for l in space.layers])
    for flat in paths:
        model = child.build(nested_path(flat, space), space)
        inherit_weights(model, net, flat)
        expected = net(x, path=net.path_tensor(flat), training=False).numpy()
        got = model(x, training=False).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=str(flat))
        # the child's weights are the supernet's: same count as the path's layers
        path_params = flops.cost_table(space).path_params(nested_path(flat, space))
        assert model.count_params() - sum(int(np.prod(w.shape)) for w in
                                          model.non_trainable_weights) == path_params


def test_one_trace_serves_every_path(net):
    space = net.space
    forward = tf.function(lambda x, p: net(x, path=p, training=False))
    rng = np.random.default_rng(1)
    # not zeros: at initial BN statistics and zero biases, a zero image gives zero logits on
    # every path (the test then passed only after another test had randomised the statistics)
    x = tf.constant(rng.normal(size=(1, 32, 32, 3)).astype(np.float32))
    outs = set()
    for flat in _random_paths(space, rng, 20):
        outs.add(float(tf.reduce_sum(forward(x, net.path_tensor(flat)))))
    assert forward.experimental_get_tracing_count() == 1
    assert len(outs) > 1  # different paths really compute different things


def test_traced_choice_stays_one_case_op_and_matches_eager(net):
    """supernet.switch: traced, each choice (and its gradient) is one Case op that is not lowered
    to Switch/Merge, so untaken branches cost nothing per step; values and gradients equal eager
    execution (which runs the taken branch directly)."""
    space = net.space
    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(size=(4, 32, 32, 3)).astype(np.float32))
    variables = net.trainable_variables

    def loss_and_grads(p):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(net(x, path=p, training=True)))
        return loss, tape.gradient(loss, variables)

    traced = tf.function(loss_and_grads)
    flat = _random_paths(space, rng, 1)[0]
    graph = traced.get_concrete_function(tf.TensorSpec([space.num_layers], tf.int32)).graph
    cases = [op for op in graph.get_operations() if op.type in ("Case", "StatelessCase")]
    assert len(cases) == 2 * space.num_layers  # forward and gradient, per choice
    assert all(op.get_attr("_lower_using_switch_merge") is False for op in cases)
    stats = [v.numpy() for v in net.non_trainable_variables]
    want_loss, want = loss_and_grads(net.path_tensor(flat))
    for v, s in zip(net.non_trainable_variables, stats):  # the same BN statistics for both
        v.assign(s)
    got_loss, got = traced(net.path_tensor(flat))
    np.testing.assert_allclose(got_loss.numpy(), want_loss.numpy(), rtol=1e-5)
    # tolerance relative to the largest gradient: some (BN shifts before another BN) are only
    # float32 rounding noise in either mode
    scale = max(np.abs(w.numpy()).max() for w in want if w is not None)
    used = 0
    for v, w, g in zip(variables, want, got):
        if w is None:  # eager: an untaken branch has no gradient; traced: zeros
            assert not np.any(g.numpy()), v.path
            continue
        used += 1
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-3, atol=1e-4 * scale,
                                   err_msg=v.path)
    assert used > 10


def test_path_forward_is_the_stateful_call_without_state(net):
    """PathForward: logits, gradients and BatchNorm updates equal an eager training-mode call;
    the variables stay untouched, statistics of ops off the path come back bit-identical, and
    one trace serves every path and batch size."""
    space = net.space
    rng = np.random.default_rng(3)
    _randomise_batch_norm(net, rng)
    forward = net.path_forward(training=True)
    assert net.path_forward(training=True) is forward  # one per mode, shared
    _check_path_forward(net, forward, _random_paths(space, rng, 1)[0], rng)
    weights, state = forward.values()
    for flat, batch in zip(_random_paths(space, rng, 3), (1, 7, 16)):
        out, _ = forward(weights, state, tf.zeros([batch, 32, 32, 3]), net.path_tensor(flat))
        assert out.shape == (batch, space.num_classes)
    assert forward.tracing_count == 1


def test_layers_of_one_structure_share_one_traced_switch():
    """Stage 2 at depth 4: its layers 2-4 have the same shapes and ops, so one traced switch
    (and one gradient) serves all three; each still computes with its own weights and
    statistics (PathForward equals the eager call, with equal and with different ops there)."""
    space = Space("mbconv", depth=(1, 4, 1, 1, 1), resolution=32, width=0.25, num_classes=10)
    tf.keras.utils.set_random_seed(2)
    net = SuperNet(space)
    rng = np.random.default_rng(4)
    _randomise_batch_norm(net, rng)
    forward = net.path_forward(training=True)
    forward.concrete  # traces
    structures = {(l.in_size, l.in_channels, l.out_channels, l.stride) for l in space.layers}
    shared = net.choices[0].shared_switches.functions  # this net traced its training forward only
    assert len(shared) == len(structures) == space.num_layers - 2
    stage2 = [i for i, l in enumerate(space.layers) if l.stage == 1][1:]
    assert len(stage2) == 3
    for ops in ((1, 1, 1), (0, 3, 5)):
        flat = _random_paths(space, rng, 1)[0]
        for i, o in zip(stage2, ops):
            flat[i] = o
        _check_path_forward(net, forward, flat, rng)
    assert forward.tracing_count == 1


def _check_path_forward(net, forward, flat, rng):
    path = net.path_tensor(flat)
    x = tf.constant(rng.normal(size=(4, 32, 32, 3)).astype(np.float32))
    weights, state = forward.values()
    with tf.GradientTape() as tape:
        tape.watch(weights)
        logits, new_state = forward(weights, state, x, path)
        loss = tf.reduce_sum(tf.square(logits))
    got = tape.gradient(loss, weights)
    for v, s in zip(net.non_trainable_variables, state):  # nothing was written
        np.testing.assert_array_equal(v.numpy(), s.numpy())
    with tf.GradientTape() as tape:
        want_logits = net(x, path=path, training=True)  # eager: updates the statistics
        want_loss = tf.reduce_sum(tf.square(want_logits))
    want = tape.gradient(want_loss, net.trainable_variables)
    np.testing.assert_allclose(logits.numpy(), want_logits.numpy(), rtol=1e-4, atol=1e-5)
    scale = max(np.abs(w.numpy()).max() for w in want if w is not None)
    for v, w, g in zip(net.trainable_variables, want, got):
        if w is None:
            assert not np.any(g.numpy()), v.path
        else:
            np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-3, atol=1e-4 * scale,
                                       err_msg=v.path)
    on_path = {id(v) for layer in net.path_layers(flat) for v in layer.non_trainable_variables}
    moved = 0
    for v, before, after in zip(net.non_trainable_variables, state, new_state):
        if id(v) in on_path:
            np.testing.assert_allclose(after.numpy(), v.numpy(), rtol=1e-5, atol=1e-6,
                                       err_msg=v.path)
            moved += not np.array_equal(after.numpy(), before.numpy())
        else:
            np.testing.assert_array_equal(after.numpy(), before.numpy(), err_msg=v.path)
    assert moved > 4


@pytest.mark.parametrize("jit_compile", [False, True])
def test_switch_value_and_gradient_in_every_mode(jit_compile):
    """supernet.switch: eager, traced and under XLA, the chosen branch's value and gradient; an
    untaken branch's variable gets a zero gradient when traced (None eagerly)."""
    from cream_tf.supernet import switch

    w = tf.Variable([1.0, 2.0])
    u = tf.Variable([3.0, 4.0])

    def run(index):
        with tf.GradientTape() as tape:
            y = switch(index, [lambda: w * w, lambda: u * 3.0])
            total = tf.reduce_sum(y)
        return y, tape.gradient(total, [w, u])

    traced = tf.function(run, jit_compile=jit_compile)
    for index, want_y, want_w, want_u in ((0, [1.0, 4.0], [2.0, 4.0], [0.0, 0.0]),
                                          (1, [9.0, 12.0], [0.0, 0.0], [3.0, 3.0])):
        for fn in (run, traced):
            y, (gw, gu) = fn(tf.constant(index))
            np.testing.assert_allclose(y.numpy(), want_y)
            for g, want in ((gw, want_w), (gu, want_u)):
                np.testing.assert_allclose(np.zeros(2) if g is None else g.numpy(), want)
    assert traced.experimental_get_tracing_count() == 1


def test_variable_owners_cover_every_variable(net):
    space = net.space
    owners = net.variable_owners(net.weights)
    fixed = [v for v, o in zip(net.weights, owners) if o.layer < 0]
    assert all(v.path.split("/")[0].startswith(("stem", "ds", "final", "head", "classifier"))
               for v in fixed)
    for v, o in zip(net.weights, owners):
        if o.layer >= 0:
            layer = space.layers[o.layer]
            assert o.op in layer.choices and o.op != space.skip_index
            assert f"stage{layer.stage + 1}_layer{layer.index + 1}_o{o.op}_" in v.path


def test_path_layers_and_bad_paths(net):
    space = net.space
    flat = [min(l.choices) for l in space.layers]
    assert len(net.path_layers(flat)) == 2 + space.num_layers
    with pytest.raises(arch.ArchError, match="op index"):
        net.path_tensor([space.skip_index] * space.num_layers)  # skip at a stage's first layer
    with pytest.raises(arch.ArchError, match="flat path"):
        net.path_tensor([0])


def test_inherit_rejects_a_child_of_another_path(net):
    space = net.space
    a = [0] * space.num_layers
    b = [1] * space.num_layers
    model = child.build(nested_path(b, space), space)
    with pytest.raises(ValueError, match="does not match|shapes"):
        inherit_weights(model, net, a)


def test_checkpoint_holds_every_variable(net, tmp_path):
    """tf.train.Checkpoint(supernet=...) alone saves and restores every weight, BN statistics of
    every branch included (Keras 3 does not make the layers of a list attribute checkpoint
    dependencies; a resumed search lost the branches' moving statistics that way)."""
    rng = np.random.default_rng(1)
    _randomise_batch_norm(net, rng)
    saved = [v.numpy().copy() for v in net.weights]
    prefix = tf.train.Checkpoint(supernet=net).save(str(tmp_path / "ckpt"))
    for v in net.weights:
        v.assign(v.numpy() + 1.0)
    tf.train.Checkpoint(supernet=net).restore(prefix).assert_consumed()
    for v, value in zip(net.weights, saved):
        np.testing.assert_array_equal(v.numpy(), value, err_msg=v.path)
    # one checkpoint entry per variable: nothing saved twice, nothing left out
    keys = [k for k, _ in tf.train.list_variables(prefix) if k.startswith("supernet/")]
    assert len(keys) == len(net.weights)
