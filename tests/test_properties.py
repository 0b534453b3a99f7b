"""Property tests (hypothesis): parsers and path validation never crash with anything but a clear
ArchError/ValueError, and every valid path survives all three text forms."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cream_tf import arch as arch_lib
from cream_tf.space import SPACES, Space

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
SPACES_UNDER_TEST = [Space(name, depth=d) for name in SPACES for d in (2, 5)]


@st.composite
def space_and_path(draw):
    space = draw(st.sampled_from(SPACES_UNDER_TEST))
    path = tuple(tuple(draw(st.sampled_from(layer.choices)) for layer in space.layers
                       if layer.stage == s) for s in range(space.num_stages))
    return space, path


@SETTINGS
@given(space_and_path(), st.sampled_from(arch_lib.FORMS))
def test_valid_paths_round_trip(space_path, form):
    space, path = space_path
    arch = arch_lib.path_to_arch(path, space)
    assert arch_lib.parse(arch.to_string(form, space), space) == arch


TOKENS = st.sampled_from(["DS", "|", ",", "MB6 5x5", "MB4 3x3", "Res 3x3", "Conv 1x1", "Skip",
                          "[", "]", "0", "6", "11", "-1", "ir_r1_k3_s2_e4_c24_se0.25",
                          "ir_r2_k5_s1_e6_c40_se0.25", "cn_r1_k3_s1_c40", "res_r1_k3_s2_c80",
                          "se0.5", "_", " ", "x", "MB", "ds_r1_k3_s1_c16_se0.25", "\n", "é"])


@SETTINGS
@given(st.one_of(st.text(max_size=80), st.lists(TOKENS, max_size=40).map("".join)),
       st.sampled_from(SPACES_UNDER_TEST))
def test_any_string_parses_or_fails_clearly(text, space):
    try:
        arch = arch_lib.parse(text, space)
    except arch_lib.ArchError as e:
        assert str(e) and len(str(e)) < 2000
    else:
        arch_lib.arch_to_path(arch, space)  # whatever parses is a valid architecture of the space


@SETTINGS
@given(st.lists(st.lists(st.integers(-3, 14), max_size=7), max_size=7),
       st.sampled_from(SPACES_UNDER_TEST))
def test_any_path_validates_or_fails_clearly(path, space):
    try:
        valid = arch_lib.validate_path(path, space)
    except arch_lib.ArchError as e:
        assert "stage" in str(e) or "path" in str(e)
    else:
        assert all(i in l.choices for i, l in zip(arch_lib.flat_path(valid), space.layers))


@SETTINGS
@given(name=st.text(max_size=12), layout=st.text(max_size=10),
       depth=st.one_of(st.integers(-2, 9), st.lists(st.integers(-1, 8), max_size=6)),
       resolution=st.integers(-10, 300), width=st.one_of(st.floats(-1, 5), st.just(float("nan"))),
       num_classes=st.integers(-1, 2000))
def test_space_settings_are_valid_or_refused_clearly(name, layout, depth, resolution, width,
                                                      num_classes):
    try:
        space = Space(name, layout, depth, resolution, width, num_classes)
    except ValueError as e:
        assert "valid" in str(e) or "must" in str(e)
    else:
        assert space.final_size >= 1 and len(space.layers) == space.num_layers


def test_settings_are_bounded():
    assert SETTINGS.max_examples <= 200
    with pytest.raises(ValueError):
        Space(depth=0)
