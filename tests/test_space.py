"""Spaces as data: shapes, choices, layouts, validation and the appendix table."""
import pytest

from cream_tf import space as space_lib
from cream_tf.space import CONV_OPS, MBCONV_OPS, RES_OP, SKIP, Space


@pytest.mark.parametrize("name,num_ops", [("mbconv", 7), ("mbconv_res", 8), ("mbconv_res_conv", 11)])
def test_op_numbering(name, num_ops):
    space = Space(name)
    assert len(space.ops) == num_ops
    assert space.ops[:6] == MBCONV_OPS
    assert [(o.kernel, o.expansion) for o in space.ops[:6]] == [
        (3, 4), (3, 6), (5, 4), (5, 6), (7, 4), (7, 6)]
    assert space.ops[space.skip_index] == SKIP
    assert (RES_OP in space.ops) == (name != "mbconv")
    assert all((c in space.ops) == (name == "mbconv_res_conv") for c in CONV_OPS)


@pytest.mark.parametrize("layout,sizes", [
    ("released", [112, 112, 56, 28, 14, 14, 7]),
    ("paper", [112, 56, 28, 14, 14, 7, 7]),
])
def test_layout_sizes(layout, sizes):
    space = Space(layout=layout, depth=1)
    stage_in = [layer.in_size for layer in space.layers]
    assert [space.stem_out_size, space.ds_out_size] + stage_in[1:] + [space.final_size] == sizes
    assert space.final_size == 7


def test_layers_and_skip_choices():
    space = Space("mbconv_res", depth=(4, 5, 6, 4, 4), resolution=64)
    layers = space.layers
    assert len(layers) == space.num_layers == 23
    for layer in layers:
        assert (space.skip_index in layer.choices) == (layer.index > 0)
        if layer.index == 0:
            assert layer.stride == space.stage_strides[layer.stage]
        else:
            assert layer.stride == 1 and layer.in_channels == layer.out_channels
    assert [l.in_channels for l in layers if l.index == 0] == [16, 24, 40, 80, 96]


def test_width_multiplier():
    space = Space(width=0.5)
    assert space.stage_channels == (16, 24, 40, 48, 96)
    assert space.stem_channels == 8 and space.final_channels == 160 and space.head_channels == 1280


@pytest.mark.parametrize("value,expected", [(4, 8), (16, 16), (60, 64), (10, 16), (36, 40), (240, 240)])
def test_make_divisible(value, expected):
    assert space_lib.make_divisible(value) == expected


@pytest.mark.parametrize("kwargs,message", [
    ({"name": "resnet"}, "name must be one of mbconv, mbconv_res, mbconv_res_conv"),
    ({"layout": "tf"}, "layout must be one of released, paper"),
    ({"depth": 7}, "from 1 to 6"),
    ({"depth": (4, 4)}, "one int or 5 ints"),
    ({"depth": "deep"}, "depth must"),
    ({"resolution": 16}, "resolution must be an int >= 32"),
    ({"width": -1.0}, "width must be"),
    ({"num_classes": 1}, "num_classes must be"),
])
def test_bad_space_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Space(**kwargs)


def test_table_matches_appendix_layout():
    table = Space("mbconv_res_conv", layout="paper").table().splitlines()
    assert table[0].split("|")[0].strip() == "Input shape"
    assert table[2].startswith("224^2 x 3") and "3x3 Conv" in table[2]
    assert "ResBlock" in table[4] and "Conv k{1,3,5}" in table[4] and "SkipConnect" in table[4]
    # the appendix's printed input shapes follow the paper strides: 112 -> 56 at the DS block
    assert table[4].startswith("56^2 x 16")
    assert table[-1].split("|")[1].strip() == "Fully Connect"
    assert table[-1].split("|")[2].strip() == "1000"
