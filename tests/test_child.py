"""Child networks: shapes over every op of every space, any resolution, and .keras round-trips
in a process where cream_tf cannot be imported."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cream_tf import arch as arch_lib
from cream_tf import child, flops
from cream_tf.space import SPACES, Space


def _single_op_path(space, op_index):
    """Every layer takes `op_index` where allowed, else op 0 (first blocks cannot skip)."""
    return tuple(tuple(op_index if op_index in l.choices else 0 for l in space.layers if l.stage == s)
                 for s in range(space.num_stages))


CASES = [(name, i) for name, ops in SPACES.items() for i in range(len(ops))]


@pytest.mark.parametrize("name,op_index", CASES)
def test_every_op_of_every_space(name, op_index):
    space = Space(name, depth=2, resolution=32, width=0.25, num_classes=7)
    path = _single_op_path(space, op_index)
    model = child.build(path, space)
    assert model.output_shape == (None, 7)
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32")
    assert np.all(np.isfinite(model(x, training=False).numpy()))
    expected_blocks = sum(1 for i in arch_lib.flat_path(path) if i != space.skip_index)
    names = {l.name.split("_")[0] + "_" + l.name.split("_")[1] for l in model.layers
             if l.name.startswith("stage")}
    assert len(names) == expected_blocks


@pytest.mark.parametrize("layout", ["released", "paper"])
@pytest.mark.parametrize("size", [32, 57, 100])
def test_any_input_resolution(layout, size):
    space = Space(layout=layout, depth=1, width=0.25, num_classes=3)
    model = child.build([[0]] * 5, space, input_shape=(size, size, 3))
    assert model.output_shape == (None, 3)
    assert model.get_layer("final_conv").output.shape[1] == -(-size // 32)


def test_bad_input_shape():
    with pytest.raises(ValueError, match=r"input_shape must be \(height, width, channels\)"):
        child.build([[0]] * 5, Space(depth=1), input_shape=(32, 32))


def test_keras_file_round_trip_without_cream_tf(tmp_path):
    space = Space("mbconv_res_conv", depth=2, resolution=32, width=0.25, num_classes=5)
    path = ((7, 10), (6, 3), (9, 1), (5, 8), (2, 10))
    model = child.build(path, space, dropout=0.2, classifier_activation="softmax")
    x = np.random.default_rng(3).uniform(size=(3, 32, 32, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", model(x, training=False).numpy())
    model.save(tmp_path / "child.keras")
    script = textwrap.dedent("""
        import sys

        class BlockCream:  # cream_tf may be installed (even editable): refuse it outright
            def find_spec(self, name, path=None, target=None):
                if name == "cream_tf" or name.startswith("cream_tf."):
                    raise ImportError("cream_tf is blocked in this process")

        sys.meta_path.insert(0, BlockCream())
        try:
            import cream_tf
            raise SystemExit("cream_tf importable")
        except ImportError:
            pass
        import numpy as np, keras
        m = keras.models.load_model("child.keras", safe_mode=True)
        np.testing.assert_allclose(m(np.load("x.npy"), training=False).numpy(), np.load("y.npy"),
                                   rtol=1e-5, atol=1e-6)
        print("ok", m.count_params())
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == str(model.count_params())
    reloaded_profile = flops.profile(model)
    assert reloaded_profile.params == model.count_params() - sum(
        int(np.prod(w.shape)) for w in model.non_trainable_weights)
