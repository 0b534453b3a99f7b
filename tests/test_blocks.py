"""Blocks: output shapes, golden parameter counts, PyTorch-style padding, names, initialisers."""
import keras
import numpy as np
import pytest

from cream_tf import blocks, flops
from cream_tf.space import SPACES, Op, make_divisible


def _se_params(mid):
    r = make_divisible(mid / 4)
    return mid * r + r + r * mid + mid


def expected_params(op, cin, cout):
    """Parameter count of a block derived by hand from docs/method.md, "Blocks"."""
    if op.kind == "ir":
        mid = cin * op.expansion
        return (cin * mid + 2 * mid + op.kernel ** 2 * mid + 2 * mid + _se_params(mid)
                + mid * cout + 2 * cout)
    if op.kind == "res":
        mid = cout // 4
        p = (cin * mid + mid + 2 * mid) + (9 * mid * mid + mid + 2 * mid) + (mid * cout + cout + 2 * cout)
        return p + (cin * cout + cout + 2 * cout if cin != cout else 0)
    if op.kind == "conv":
        return op.kernel ** 2 * cin * cout + 2 * cout
    return 0


OPS = sorted(set(SPACES["mbconv_res_conv"]), key=lambda o: o.name)


@pytest.mark.parametrize("op", OPS, ids=str)
@pytest.mark.parametrize("cin,cout,stride,size", [(24, 40, 2, 9), (40, 40, 1, 8)])
def test_op_shapes_and_params(op, cin, cout, stride, size):
    if op.kind == "skip" and stride != 1:
        with pytest.raises(ValueError, match="SkipConnect needs stride 1"):
            blocks.op_block(keras.Input((size, size, cin)), op, cout, stride, "b")
        return
    inputs = keras.Input((size, size, cin))
    out = blocks.op_block(inputs, op, cout, stride, "stage2_block1")
    model = keras.Model(inputs, out)
    expected_size = -(-size // stride)
    assert tuple(out.shape) == (None, expected_size, expected_size, cout)
    assert flops.profile(model).params == expected_params(op, cin, cout)
    for layer in model.layers[1:]:
        assert layer.name.startswith("stage2_block1_")
    x = np.random.default_rng(0).normal(size=(2, size, size, cin)).astype("float32")
    assert np.all(np.isfinite(model(x, training=False)))


@pytest.mark.parametrize("cin,cout,kernel,expansion,params", [
    (16, 24, 3, 4, 5_568), (24, 40, 5, 6, 25_176), (40, 40, 5, 6, 57_264),
    (40, 80, 5, 6, 66_944), (80, 80, 5, 6, 206_680), (80, 96, 3, 6, 206_712), (96, 192, 5, 6, 349_584),
])
def test_golden_mbconv_params_from_the_worked_example(cin, cout, kernel, expansion, params):
    inputs = keras.Input((8, 8, cin))
    model = keras.Model(inputs, blocks.mbconv(inputs, cout, kernel, expansion, 1, "b"))
    assert flops.profile(model).params == params


@pytest.mark.parametrize("kernel", [3, 5, 7])
@pytest.mark.parametrize("size", [7, 8])
def test_stride2_padding_is_symmetric_like_pytorch(kernel, size):
    """A centred impulse must land on the same output pixel as PyTorch's symmetric padding."""
    inputs = keras.Input((size, size, 1))
    out = blocks.conv(inputs, 1, kernel, 2, "c")
    model = keras.Model(inputs, out)
    w = np.zeros((kernel, kernel, 1, 1), "float32")
    w[0, 0, 0, 0] = 1.0  # picks the top-left tap of each window
    model.get_layer("c").set_weights([w])
    x = np.arange(size * size, dtype="float32").reshape(1, size, size, 1)
    y = model(x).numpy()[0, :, :, 0]
    pad = blocks.pad_amount(kernel, 2)
    padded = np.pad(x[0, :, :, 0], pad)
    n = (size + 2 * pad - kernel) // 2 + 1
    np.testing.assert_array_equal(y, padded[0:2 * n:2, 0:2 * n:2][:n, :n])


def test_se_gate_is_hard_sigmoid_relu6():
    x = np.array([-4.0, -3.0, -1.5, 0.0, 1.5, 3.0, 4.0], "float32")
    gate = keras.layers.Activation("hard_sigmoid")(x).numpy()
    np.testing.assert_allclose(gate, np.clip(x + 3, 0, 6) / 6, atol=1e-7)


def test_bn_settings_and_initialisers():
    inputs = keras.Input((16, 16, 16))
    model = keras.Model(inputs, blocks.mbconv(inputs, 24, 3, 6, 2, "b"))
    bn = model.get_layer("b_expand_bn")
    assert bn.epsilon == 1e-5 and bn.momentum == 0.9
    kernel = model.get_layer("b_expand_conv").kernel.numpy()  # 1x1, 16 -> 96, fan_out 96
    assert abs(kernel.std() - np.sqrt(2 / 96)) < 0.1 * np.sqrt(2 / 96)
    dw = model.get_layer("b_dwconv").kernel.numpy()  # fan_out = k*k = 9
    assert abs(dw.std() - np.sqrt(2 / 9)) < 0.15 * np.sqrt(2 / 9)
    head_in = keras.Input((2, 2, 320))
    head = keras.Model(head_in, blocks.head(head_in, 1280, 1000))
    dense = head.get_layer("classifier").kernel.numpy()
    assert np.abs(dense).max() <= 1 / np.sqrt(1000) and np.abs(dense).max() > 0.9 / np.sqrt(1000)
    assert not np.any(head.get_layer("classifier").bias.numpy())


def test_residual_only_when_shapes_kept():
    inputs = keras.Input((8, 8, 40))
    keep = keras.Model(inputs, blocks.mbconv(inputs, 40, 3, 4, 1, "a"))
    change = keras.Model(inputs, blocks.mbconv(inputs, 80, 3, 4, 1, "b"))
    assert any(l.name == "a_add" for l in keep.layers)
    assert not any(l.name.endswith("_add") for l in change.layers)


def test_unknown_op_kind():
    with pytest.raises(ValueError, match="unknown op kind"):
        blocks.op_block(keras.Input((8, 8, 8)), Op("lstm", 3), 8, 1, "x")
