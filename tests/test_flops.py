"""MACs and parameters: docs/method.md's worked example, and path sums equal to profiling the
child."""
import itertools

import numpy as np
import pytest

from cream_tf import arch as arch_lib
from cream_tf import child, flops, zoo
from cream_tf.space import SPACES, Space

CREAM_14_BLOCKS = {
    "stem": (475_136, 464), "ds": (491_816, 744),
    "stage1_block1": (1_783_952, 5_568), "stage2_block1": (1_602_120, 25_176),
    "stage2_block2": (1_725_984, 57_264), "stage3_block1": (1_093_664, 66_944),
    "stage3_block2": (1_578_040, 206_680), "stage4_block1": (1_578_552, 206_712),
    "stage5_block1": (1_578_768, 349_584), "final": (248_320, 62_080),
    "head": (412_480, 410_880), "classifier": (1_280_000, 1_281_000),
}


def test_cream_14_worked_example():
    result = flops.profile(zoo.build("cream_14"))
    assert result.macs == 13_848_832
    assert result.params == 2_673_096
    assert result.blocks() == CREAM_14_BLOCKS
    assert "total" in result.table() and "13,848,832" in result.table()


def test_rules_per_layer_type():
    result = flops.profile(zoo.build("cream_14"))
    by_name = {lc.name: lc for lc in result.layers}
    assert by_name["stem_conv"].macs == 32 * 32 * 16 * 27           # conv, no bias
    assert by_name["stem_bn"].macs == 2 * 32 * 32 * 16               # BN: 2 x input elements
    assert by_name["ds_se_squeeze"].macs == (32 * 32 + 1) * 16       # pool: (HW + 1) C
    assert by_name["ds_se_reduce"].macs == 8 * (16 + 1)              # conv with bias
    assert by_name["ds_dwconv"].macs == 32 * 32 * 16 * 9             # depthwise: groups = C
    assert by_name["classifier"].macs == 1280 * 1000                 # dense, bias not counted
    assert by_name["stem_act"].macs == 0 and by_name["ds_se_excite"].macs == 0


def test_unknown_dimensions_are_refused():
    model = child.build(zoo.get("cream_14").arch(), zoo.get("cream_14").space(),
                        input_shape=(None, None, 3))
    with pytest.raises(ValueError, match="fixed input shape"):
        flops.profile(model)


def _random_path(space, rng):
    return tuple(tuple(int(rng.choice(l.choices)) for l in space.layers if l.stage == s)
                 for s in range(space.num_stages))


@pytest.mark.parametrize("name,layout", [(name, "released") for name in SPACES] +
                         [("mbconv_res_conv", "paper")])
def test_path_macs_equal_profile_of_child(name, layout):
    space = Space(name, layout=layout, depth=2, resolution=64, width=0.25, num_classes=10)
    table = flops.cost_table(space)
    rng = np.random.default_rng(1)
    for _ in range(3):
        path = _random_path(space, rng)
        result = flops.profile(child.build(path, space))
        assert table.path_macs(path) == result.macs
        assert table.path_params(path) == result.params


def test_min_max_are_exact_by_brute_force():
    space = Space("mbconv_res", depth=(1, 1, 1, 1, 2), resolution=32, width=0.25, num_classes=10)
    table = flops.cost_table(space)
    choices = [layer.choices for layer in space.layers]
    flat_index = np.arange(space.num_layers)
    all_macs = [table.fixed_macs + int(table.macs[flat_index, list(combo)].sum())
                for combo in itertools.product(*choices)]
    assert table.min_macs == min(all_macs)
    assert table.max_macs == max(all_macs)


def test_zoo_macs_via_table_equal_profile():
    entry = zoo.get("cream_43")
    table = flops.cost_table(entry.space())
    assert table.arch_macs(entry.arch()) == flops.profile(zoo.build("cream_43")).macs


def test_table_rejects_bad_path():
    table = flops.cost_table(Space("mbconv_res", depth=(1, 1, 1, 1, 2), resolution=32, width=0.25,
                                   num_classes=10))
    with pytest.raises(arch_lib.ArchError):
        table.path_macs([[9]] * 5)


def test_paths_macs_prices_many_flat_paths_as_path_macs_prices_one():
    space = Space("mbconv_res_conv", depth=2, resolution=32, width=0.25, num_classes=10)
    table = flops.cost_table(space)
    rng = np.random.default_rng(0)
    flats = np.array([[rng.choice(layer.choices) for layer in space.layers] for _ in range(20)])
    batch = table.paths_macs(flats)
    assert batch.shape == (20,) and batch.dtype == np.int64
    for flat, macs in zip(flats, batch):
        nested = arch_lib.nested_path(flat, space)
        assert table.path_macs(nested) == table.path_macs(flat) == int(macs)
        assert table.path_params(flat) == table.path_params(nested)
    with pytest.raises(arch_lib.ArchError):
        table.path_macs(flats[0][:-1])
