"""Child networks: an architecture of a space as a functional Keras model of built-in layers."""
from __future__ import annotations

import keras

from cream_tf import arch as arch_lib
from cream_tf import blocks
from cream_tf.space import Space


def block_prefix(stage: int, block: int) -> str:
    """Name prefix of block `block` (0-based) of stage `stage` (0-based): 'stage1_block1'."""
    return f"stage{stage + 1}_block{block + 1}"


def features(x, arch: arch_lib.Arch, space: Space):
    """Stem, DS, the architecture's stages and the 1x1 conv: the network up to its head."""
    x = blocks.stem(x, space.stem_channels)
    x = blocks.ds_block(x, space.ds_channels, space.ds_stride)
    for s, (ops, channels, stride) in enumerate(
            zip(arch.stages, space.stage_channels, space.stage_strides)):
        for b, op in enumerate(ops):
            x = blocks.op_block(x, op, channels, stride if b == 0 else 1, block_prefix(s, b))
    return blocks.final_conv(x, space.final_channels)


def build(architecture, space: Space, input_shape=None, dropout: float = 0.0,
          classifier_activation=None, name: str = "cream_child") -> keras.Model:
    """Builds the child network of `architecture` (an `Arch`, a path or any text form).

    Args:
      architecture: `Arch`, a path (per-stage op indices of `space`) or an architecture string.
      space: the space that gives channels, strides, resolution and classes.
      input_shape: (H, W, 3); defaults to the space's resolution. Any H, W >= 32 works.
      dropout: rate of the dropout before the classifier.
      classifier_activation: None for logits (training), 'softmax' for probabilities.
    """
    if isinstance(architecture, arch_lib.Arch) or isinstance(architecture, str):
        arch = arch_lib.parse(architecture, space)
    else:
        arch = arch_lib.path_to_arch(architecture, space)
    if input_shape is None:
        input_shape = (space.resolution, space.resolution, 3)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or any(
            d is not None and (not isinstance(d, int) or d < 1) for d in input_shape):
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape!r}")
    inputs = keras.Input(input_shape, name="image")
    x = features(inputs, arch, space)
    outputs = blocks.head(x, space.head_channels, space.num_classes, dropout=dropout,
                          classifier_activation=classifier_activation)
    return keras.Model(inputs, outputs, name=name)
