"""The released networks: one parameterized test over the registry, golden counts by the rules."""
import numpy as np
import pytest

import cream_tf
from cream_tf import flops, zoo

# MACs and parameters at each network's own resolution and 1000 classes, counted by the rules of
# docs/method.md, "MACs and parameters" (published: 14M, 43M, 114M, 287M, 481M, 604M).
GOLDEN = {
    "cream_14": (64, 13_848_832, 2_673_096),
    "cream_43": (96, 42_414_080, 4_398_600),
    "cream_114": (160, 114_488_320, 4_410_120),
    "cream_287": (224, 287_195_240, 6_044_368),
    "cream_481": (224, 481_598_712, 7_713_360),
    "cream_604": (224, 604_339_504, 9_695_624),
}


def test_names():
    assert zoo.names() == list(GOLDEN)


@pytest.mark.parametrize("name", list(GOLDEN))
def test_zoo_model(name):
    resolution, macs, params = GOLDEN[name]
    model = cream_tf.zoo.build(name)
    assert model.input_shape == (None, resolution, resolution, 3)
    assert model.output_shape == (None, 1000)
    result = flops.profile(model)
    assert (result.macs, result.params) == (macs, params)
    published = int(name.split("_")[1])
    assert abs(result.macs / 1e6 - published) / published < 0.02
    entry = zoo.get(name)
    assert 0 < entry.top5 - entry.top1 < 30


@pytest.mark.parametrize("name", ["cream_14", "cream_481"])
def test_any_resolution_and_classes(name):
    model = zoo.build(name, num_classes=10, input_shape=(96, 96, 3), dropout=0.2,
                      classifier_activation="softmax")
    out = model(np.zeros((2, 96, 96, 3), "float32"), training=False).numpy()
    assert out.shape == (2, 10)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    assert any(layer.name == "head_dropout" for layer in model.layers)


def test_bad_names_and_shapes():
    with pytest.raises(ValueError, match="valid names: cream_14, cream_43"):
        zoo.build("cream_15")
    with pytest.raises(ValueError, match=r"input_shape must be \(size, size, 3\)"):
        zoo.build("cream_14", input_shape=(64, 32, 3))
