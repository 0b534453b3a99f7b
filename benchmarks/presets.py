"""Benchmark settings shared by the TensorFlow and PyTorch step benchmarks (no TF import here).

'release': the release's ImageNet search: the Table 1 space at 224 px with 1000 classes, a fixed
depth of 4 per stage without SkipConnect, the release's op prior, a board of 10 x 4 and 32
images per step (per device).
"""

PRESETS = {
    "release": dict(space="mbconv", layout="released", depth=4, resolution=224, width=1.0,
                    num_classes=1000, batch_size=32, board_size=10, board_images=4,
                    prior="release", skip_prob=0.0),
}


def apply(flag_values, preset):
    """The benchmark's settings: its flags, overridden by `preset` (None: the flags as given)."""
    names = PRESETS["release"].keys()
    values = {name: flag_values[name].value for name in names if name in flag_values}
    if preset:
        values.update(PRESETS[preset])
    return values
