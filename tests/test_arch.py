"""The three architecture text forms round-trip, and bad strings name the bad token."""
import numpy as np
import pytest

from cream_tf import arch as arch_lib
from cream_tf import zoo
from cream_tf.space import SPACES, Space


def random_path(space, rng):
    return tuple(tuple(int(rng.choice(layer.choices)) for layer in space.layers if layer.stage == s)
                 for s in range(space.num_stages))


SPACE_CASES = [Space(name, depth=d, layout=layout)
               for name in SPACES for d, layout in ((4, "released"), (6, "paper"))]


@pytest.mark.parametrize("space", SPACE_CASES, ids=str)
@pytest.mark.parametrize("form", arch_lib.FORMS)
def test_round_trip_random_paths(space, form):
    rng = np.random.default_rng(0)
    for _ in range(25):
        path = random_path(space, rng)
        arch = arch_lib.path_to_arch(path, space)
        text = arch.to_string(form, space)
        assert arch_lib.detect_form(text) == form
        again = arch_lib.parse(text, space)
        assert again == arch
        # a path and its child agree up to where the skips sit: the child's path has them last
        canonical = tuple(tuple(i for i in st if i != space.skip_index) +
                          tuple(i for i in st if i == space.skip_index) for st in path)
        assert arch_lib.arch_to_path(again, space) == canonical


@pytest.mark.parametrize("name", zoo.names())
def test_zoo_strings_round_trip(name):
    entry = zoo.get(name)
    space = entry.space()
    arch = entry.arch()
    assert arch.to_paper() == entry.architecture
    for form in arch_lib.FORMS:
        assert arch_lib.parse(arch.to_string(form, space), space) == arch


def test_cream14_block_strings():
    entry = zoo.get("cream_14")
    assert entry.arch().block_def(entry.space()) == [
        ["ds_r1_k3_s1_c16_se0.25"], ["ir_r1_k3_s2_e4_c24_se0.25"], ["ir_r2_k5_s2_e6_c40_se0.25"],
        ["ir_r2_k5_s2_e6_c80_se0.25"], ["ir_r1_k3_s1_e6_c96_se0.25"], ["ir_r1_k5_s2_e6_c192_se0.25"]]
    space = entry.space()
    timm_list = str(entry.arch().block_def(space))
    assert arch_lib.parse(timm_list, space) == entry.arch()


def test_mixed_stage_block_strings_and_res_conv():
    space = Space("mbconv_res_conv")
    text = ("ir_r1_k3_s2_e4_c24_se0.25, res_r1_k3_s1_c24 | cn_r2_k5_s2_c40 | res_r1_k3_s2_c80 | "
            "cn_r1_k1_s1_c96 | ir_r1_k7_s2_e6_c192_se0.25, ir_r3_k7_s1_e6_c192_se0.25")
    arch = arch_lib.parse(text, space)
    assert arch.depths == (2, 2, 1, 1, 4)
    assert arch.to_paper() == ("DS | MB4 3x3, Res 3x3 | Conv 5x5, Conv 5x5 | Res 3x3 | Conv 1x1 | "
                               "MB6 7x7, MB6 7x7, MB6 7x7, MB6 7x7")
    assert arch.to_blocks(space).split(" | ")[-1] == "ir_r4_k7_s2_e6_c192_se0.25"


def test_path_lists_pad_with_skip():
    space = Space(depth=3)
    arch = arch_lib.parse("[[0], [3, 3], [1, 6, 2], [5], [4]]", space)
    assert arch.depths == (1, 2, 2, 1, 1)
    assert arch.to_path_string(space) == "[[0, 6, 6], [3, 3, 6], [1, 2, 6], [5, 6, 6], [4, 6, 6]]"


SPACE = Space(depth=2)


@pytest.mark.parametrize("text,message", [
    ("[[0], [3], [3], [1], [x]]", "bad token 'x' in stage 5"),
    ("[[0], [3], [3], [1], [9]]", "bad token '9' in stage 5: op indices of space 'mbconv' are 0..6"),
    ("[[6], [3], [3], [1], [1]]", "stage 1 layer 1: op index 6 is not allowed"),
    ("[[0], [3], [3], [1]]", "expected 5 stages, got 4"),
    ("[[0, 1, 2], [3], [3], [1], [1]]", "stage 1 has 3 layers"),
    ("[[0], [3], [3], [1], [1]] junk", "path lists must look like"),
    ("DS | MB4 3x3 | MB6 5x5 | MB6 5x5 | MB6 3x3 | MB9 5x5", "bad token 'MB9 5x5' in stage 5"),
    ("DS | MB4 3x3 | MB6 5x4 | MB6 5x5 | MB6 3x3 | MB6 5x5", "bad token 'MB6 5x4' in stage 2"),
    ("DS | Res 3x3 | MB6 5x5 | MB6 5x5 | MB6 3x3 | MB6 5x5", "not an op of space 'mbconv'"),
    ("DS | MB4 3x3 | MB6 5x5 | MB6 5x5", "expected 5 stages"),
    ("DS | Skip | MB6 5x5 | MB6 5x5 | MB6 3x3 | MB6 5x5", "stage 1 has 0 blocks"),
    ("DS | MB4 3x3, MB4 3x3, MB4 3x3 | MB6 5x5 | MB6 5x5 | MB6 3x3 | MB6 5x5", "stage 1 has 3 blocks"),
    ("ir_r1_k3_s2_e4_c24_se0.25 | ir_r1_k5_s2_e6_c40_se0.25 | ir_r1_k5_s2_e6_c80_se0.25 | "
     "ir_r1_k3_s1_e6_c96_se0.25 | ir_r1_k5_s1_e6_c192_se0.25", "stride s1 given, the space's layout needs s2"),
    ("ir_r1_k3_s2_e4_c24_se0.25 | ir_r1_k5_s2_e6_c48_se0.25 | ir_r1_k5_s2_e6_c80_se0.25 | "
     "ir_r1_k3_s1_e6_c96_se0.25 | ir_r1_k5_s2_e6_c192_se0.25", "channels c48 given"),
    ("ir_r1_k3_s2_e4_c24_se0.25 | ir_r1_k5_s2_e6_c40 | ir_r1_k5_s2_e6_c80_se0.25 | "
     "ir_r1_k3_s1_e6_c96_se0.25 | ir_r1_k5_s2_e6_c192_se0.25", "ds and ir blocks take se0.25"),
    ("ir_r1_k3_s2_e4_c24_se0.25 | ir_r1_k5_s2_x6_c40_se0.25 | ir_r1_k5_s2_e6_c80_se0.25 | "
     "ir_r1_k3_s1_e6_c96_se0.25 | ir_r1_k5_s2_e6_c192_se0.25", "bad option 'x6'"),
    ("zz_r1_k3_s2_e4_c24_se0.25 | ir_r1_k5_s2_e6_c40_se0.25 | ir_r1_k5_s2_e6_c80_se0.25 | "
     "ir_r1_k3_s1_e6_c96_se0.25 | ir_r1_k5_s2_e6_c192_se0.25", "bad block type 'zz'.*valid types: ds, ir, res, cn"),
    ("ir_r1_k3_s2_e5_c24_se0.25 | ir_r1_k5_s2_e6_c40_se0.25 | ir_r1_k5_s2_e6_c80_se0.25 | "
     "ir_r1_k3_s1_e6_c96_se0.25 | ir_r1_k5_s2_e6_c192_se0.25", "MB5 3x3 is not an op"),
    ("ir_r1_k3_s2_e4_c24_se0.25 | ir_r1_k5_e6_c40_se0.25 | ir_r1_k5_s2_e6_c80_se0.25 | "
     "ir_r1_k3_s1_e6_c96_se0.25 | ir_r1_k5_s2_e6_c192_se0.25", "lacks option"),
    ("", "an architecture string is expected"),
])
def test_bad_strings_name_the_problem(text, message):
    with pytest.raises(arch_lib.ArchError, match=message):
        arch_lib.parse(text, SPACE)


def test_bad_paths():
    with pytest.raises(arch_lib.ArchError, match="has 5 stages"):
        arch_lib.validate_path([[0]], SPACE)
    with pytest.raises(arch_lib.ArchError, match="one list of op indices per stage"):
        arch_lib.validate_path(5, SPACE)
    with pytest.raises(arch_lib.ArchError, match=r"valid: 0 \(MB4 3x3\)"):
        arch_lib.validate_path([[6, 0]] + [[0, 0]] * 4, SPACE)


def test_nested_path_inverts_flat_path_from_any_flat_form():
    space = Space("mbconv", depth=(1, 2, 3, 4, 6), resolution=32, width=0.25, num_classes=10)
    rng = np.random.default_rng(0)
    path = tuple(tuple(int(rng.choice(layer.choices)) for layer in space.layers
                       if layer.stage == s) for s in range(space.num_stages))
    flat = arch_lib.flat_path(path)
    for form in (flat, tuple(flat), np.array(flat, np.int32), [np.int64(i) for i in flat]):
        assert arch_lib.nested_path(form, space) == path
    assert arch_lib.nested_path(path, space) == path  # per-stage paths pass through
    assert arch_lib.nested_path([list(s) for s in path], space) == tuple(list(s) for s in path)
    with pytest.raises(arch_lib.ArchError, match=f"has {space.num_layers} op indices, got 3"):
        arch_lib.nested_path([0, 0, 0], space)
