"""Cream's building blocks as plain functions of built-in Keras layers.

What each block computes: docs/method.md, "Blocks".

Every layer gets a deterministic name `{prefix}_{part}` (e.g. `stage2_block1_expand_conv`), so a
network built from these functions saves, exports and reloads without cream_tf, and weights move
between a supernet's branches and a child network by name.
"""
from __future__ import annotations

import keras
from keras import layers

from cream_tf.space import Op, make_divisible

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # Keras convention; PyTorch's momentum=0.1.
SE_RATIO = 0.25


def conv_initializer():
    """N(0, sqrt(2 / fan_out)) with fan_out = k*k*out/groups, as the release initialises convs."""
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")


def dense_initializer():
    """U(-1/sqrt(out), 1/sqrt(out)), the release's classifier initialisation."""
    return keras.initializers.VarianceScaling(1.0 / 3.0, mode="fan_out", distribution="uniform")


def pad_amount(kernel: int, stride: int) -> int:
    """PyTorch-style symmetric padding; Keras 'same' pads stride-2 convs asymmetrically."""
    return ((stride - 1) + (kernel - 1)) // 2


def _padded(x, kernel, stride, name):
    if stride == 1:
        return x, "same"  # odd kernels: 'same' is symmetric at stride 1
    pad = pad_amount(kernel, stride)
    if pad:
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    return x, "valid"


def conv(x, filters, kernel, stride, name, use_bias=False):
    x, padding = _padded(x, kernel, stride, name)
    return layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=use_bias,
                         kernel_initializer=conv_initializer(), name=name)(x)


def depthwise_conv(x, kernel, stride, name):
    x, padding = _padded(x, kernel, stride, name)
    return layers.DepthwiseConv2D(kernel, strides=stride, padding=padding, use_bias=False,
                                  depthwise_initializer=conv_initializer(), name=name)(x)


def batch_norm(x, name):
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)


def activation(x, kind, name):
    return layers.Activation(kind, name=name)(x)


def conv_bn(x, filters, kernel, stride, prefix, act="silu", use_bias=False):
    """conv -> BN (-> activation): `{prefix}_conv`, `{prefix}_bn`, `{prefix}_act`."""
    x = conv(x, filters, kernel, stride, f"{prefix}_conv", use_bias=use_bias)
    x = batch_norm(x, f"{prefix}_bn")
    return activation(x, act, f"{prefix}_act") if act else x


def squeeze_excite(x, channels, prefix):
    """SE of the release: pool, 1x1 reduce (bias), ReLU, 1x1 expand (bias), hard-sigmoid gate."""
    reduced = make_divisible(channels * SE_RATIO)
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{prefix}_squeeze")(x)
    s = conv(s, reduced, 1, 1, f"{prefix}_reduce", use_bias=True)
    s = activation(s, "relu", f"{prefix}_relu")
    s = conv(s, channels, 1, 1, f"{prefix}_expand", use_bias=True)
    s = activation(s, "hard_sigmoid", f"{prefix}_gate")  # relu6(x + 3) / 6 in Keras 3
    return layers.Multiply(name=f"{prefix}_excite")([x, s])


def _residual(x, shortcut, prefix):
    return layers.Add(name=f"{prefix}_add")([x, shortcut])


def stem(x, channels, prefix="stem"):
    """3x3 conv stride 2, BN, Swish."""
    return conv_bn(x, channels, 3, 2, prefix)


def ds_block(x, channels, stride, prefix="ds"):
    """Depthwise-separable block: dw 3x3, BN, Swish, SE, 1x1 project, BN; residual at stride 1."""
    in_channels = x.shape[-1]
    shortcut = x
    x = depthwise_conv(x, 3, stride, f"{prefix}_dwconv")
    x = batch_norm(x, f"{prefix}_dw_bn")
    x = activation(x, "silu", f"{prefix}_dw_act")
    x = squeeze_excite(x, in_channels, f"{prefix}_se")
    x = conv_bn(x, channels, 1, 1, f"{prefix}_project", act=None)
    if stride == 1 and in_channels == channels:
        x = _residual(x, shortcut, prefix)
    return x


def mbconv(x, channels, kernel, expansion, stride, prefix):
    """Inverted residual: 1x1 expand, kxk depthwise, SE on the expanded width, 1x1 project."""
    in_channels = x.shape[-1]
    mid = in_channels * expansion
    shortcut = x
    x = conv_bn(x, mid, 1, 1, f"{prefix}_expand")
    x = depthwise_conv(x, kernel, stride, f"{prefix}_dwconv")
    x = batch_norm(x, f"{prefix}_dw_bn")
    x = activation(x, "silu", f"{prefix}_dw_act")
    x = squeeze_excite(x, mid, f"{prefix}_se")
    x = conv_bn(x, channels, 1, 1, f"{prefix}_project", act=None)
    if stride == 1 and in_channels == channels:
        x = _residual(x, shortcut, prefix)
    return x


def res_block(x, channels, stride, prefix, kernel=3):
    """ResNet bottleneck of Table 2: 1x1, kxk (stride), 1x1, all with bias; ReLU after the add."""
    in_channels = x.shape[-1]
    mid = int(channels / 4)
    shortcut = x
    x = conv_bn(x, mid, 1, 1, f"{prefix}_reduce", act="relu", use_bias=True)
    x = conv_bn(x, mid, kernel, stride, f"{prefix}_middle", act="relu", use_bias=True)
    x = conv_bn(x, channels, 1, 1, f"{prefix}_expand", act=None, use_bias=True)
    if in_channels != channels or stride != 1:
        shortcut = conv_bn(shortcut, channels, 1, stride, f"{prefix}_shortcut", act=None,
                           use_bias=True)
    x = _residual(x, shortcut, prefix)
    return activation(x, "relu", f"{prefix}_out_act")


def conv_block(x, channels, kernel, stride, prefix):
    """Plain kxk conv, BN, Swish of Table 3; no residual."""
    return conv_bn(x, channels, kernel, stride, prefix)


def op_block(x, op: Op, channels, stride, prefix):
    """Applies one searchable op; SkipConnect returns its input unchanged."""
    if op.kind == "ir":
        return mbconv(x, channels, op.kernel, op.expansion, stride, prefix)
    if op.kind == "res":
        return res_block(x, channels, stride, prefix, kernel=op.kernel)
    if op.kind == "conv":
        return conv_block(x, channels, op.kernel, stride, prefix)
    if op.kind == "skip":
        if stride != 1 or x.shape[-1] != channels:
            raise ValueError(f"{prefix}: SkipConnect needs stride 1 and equal widths")
        return x
    raise ValueError(f"{prefix}: unknown op kind {op.kind!r}")


def final_conv(x, channels, prefix="final"):
    """The fixed 1x1 conv to 320 channels, BN, Swish."""
    return conv_bn(x, channels, 1, 1, prefix)


def head(x, head_channels, num_classes, dropout=0.0, classifier_activation=None, prefix="head"):
    """Pool first, then 1x1 conv (bias) and Swish, dropout, dense classifier. No BN in the head."""
    x = layers.GlobalAveragePooling2D(keepdims=True, name=f"{prefix}_pool")(x)
    x = conv(x, head_channels, 1, 1, f"{prefix}_conv", use_bias=True)
    x = activation(x, "silu", f"{prefix}_act")
    x = layers.Flatten(name=f"{prefix}_flatten")(x)
    if dropout:
        x = layers.Dropout(dropout, name=f"{prefix}_dropout")(x)
    return layers.Dense(num_classes, activation=classifier_activation,
                        kernel_initializer=dense_initializer(), name="classifier")(x)
