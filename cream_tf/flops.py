"""MACs and parameters by the rules behind Cream's published numbers.

Rules and a worked example: docs/method.md, "MACs and parameters".

Published "FLOPs" are multiply-accumulates counted at batch 1 as thop 0.0.31 did:

* conv: H_out * W_out * C_out * (k * k * C_in / groups + 1 if it has a bias)
* BN: 2 x the number of elements of its input
* global average pool: (H * W + 1) * C
* dense: in_features * out_features (bias not counted)
* activations, SE multiply, residual adds, padding: 0
* parameters: every trainable weight

`profile` walks the layers of a built model. `cost_table` profiles every op of every layer of a
space once, with the same walker, so the FLOPs of a path are a cheap sum that equals profiling the
child built from it.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import re

import keras
import numpy as np

from cream_tf import arch as arch_lib
from cream_tf import blocks
from cream_tf.errors import InputError
from cream_tf.space import Space

__all__ = ["LayerCost", "Profile", "profile", "layer_macs", "CostTable", "cost_table",
           "MacsRangeError", "macs_range"]

_ZERO_COST = (keras.layers.Activation, keras.layers.Add, keras.layers.Multiply,
              keras.layers.ZeroPadding2D, keras.layers.Flatten, keras.layers.Dropout,
              keras.layers.InputLayer, keras.layers.ReLU, keras.layers.Identity,
              keras.layers.Rescaling, keras.layers.Softmax)


@dataclasses.dataclass(frozen=True)
class LayerCost:
    name: str
    type: str
    output_shape: tuple
    macs: int
    params: int


def _shape(tensor) -> tuple:
    shape = tuple(tensor.shape[1:])
    if any(d is None for d in shape):
        raise ValueError(f"cannot count MACs with unknown dimensions {tuple(tensor.shape)}: build "
                         f"the model with a fixed input shape, e.g. input_shape=(224, 224, 3)")
    return shape


def layer_macs(layer, in_shape: tuple, out_shape: tuple) -> int:
    """MACs of one built-in layer at batch 1, by the thop rules above."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        k = math.prod(layer.kernel_size)
        return math.prod(out_shape) * (k + int(layer.use_bias))
    if isinstance(layer, keras.layers.Conv2D):
        k = math.prod(layer.kernel_size)
        return math.prod(out_shape) * (k * in_shape[-1] // layer.groups + int(layer.use_bias))
    if isinstance(layer, keras.layers.BatchNormalization):
        return 2 * math.prod(in_shape)
    if isinstance(layer, keras.layers.GlobalAveragePooling2D):
        return (in_shape[0] * in_shape[1] + 1) * in_shape[-1]
    if isinstance(layer, keras.layers.Dense):
        return in_shape[-1] * out_shape[-1]
    if isinstance(layer, _ZERO_COST):
        return 0
    if layer.weights:
        raise ValueError(f"no MAC rule for layer {layer.name!r} of type {type(layer).__name__}")
    return 0


def leaf_layers(model):
    """The built-in layers of a model, nested functional models flattened."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from leaf_layers(layer)
        else:
            yield layer


def _group(name: str) -> str:
    m = re.match(r"(stage\d+_block\d+)_", name)
    if m:
        return m.group(1)
    return name if name == "classifier" else name.split("_")[0]


@dataclasses.dataclass(frozen=True)
class Profile:
    """Totals and a per-layer breakdown; `blocks()` sums the layers of each named block."""

    macs: int
    params: int
    layers: tuple

    def blocks(self) -> dict:
        result = {}
        for lc in self.layers:
            macs, params = result.get(_group(lc.name), (0, 0))
            result[_group(lc.name)] = (macs + lc.macs, params + lc.params)
        return result

    def table(self, per_layer: bool = False) -> str:
        rows = ([(lc.name, lc.type, lc.macs, lc.params) for lc in self.layers] if per_layer else
                [(name, "", m, p) for name, (m, p) in self.blocks().items()])
        rows.append(("total", "", self.macs, self.params))
        width = max(len(r[0]) for r in rows)
        lines = [f"{'layer' if per_layer else 'block':<{width}}  {'type':<22} {'MACs':>14} "
                 f"{'params':>12}"]
        lines += [f"{n:<{width}}  {t:<22} {m:>14,} {p:>12,}" for n, t, m, p in rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        return f"{self.macs / 1e6:.2f}M MACs, {self.params / 1e6:.3f}M params"


def profile(model) -> Profile:
    """MACs and trainable parameters of a built functional model, at batch 1, its own input size."""
    costs = []
    for layer in leaf_layers(model):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            inputs, output = layer.input, layer.output
        except (AttributeError, ValueError) as e:
            raise ValueError(f"layer {layer.name!r} is not part of a built functional model "
                             f"({e}); profile needs a model our builders made") from None
        in_shape = _shape(inputs[0] if isinstance(inputs, (list, tuple)) else inputs)
        out_shape = _shape(output)
        params = sum(math.prod(w.shape) for w in layer.trainable_weights)
        costs.append(LayerCost(layer.name, type(layer).__name__, out_shape,
                               layer_macs(layer, in_shape, out_shape), params))
    return Profile(sum(c.macs for c in costs), sum(c.params for c in costs), tuple(costs))


def _profile_fn(fn, shape) -> Profile:
    inputs = keras.Input(shape)
    return profile(keras.Model(inputs, fn(inputs)))


@dataclasses.dataclass(frozen=True)
class CostTable:
    """Per-layer op costs of a space. `macs[l, o]` is op o at searchable layer l (0 where the op is
    not allowed, and 0 for SkipConnect); `fixed_*` is the stem, DS, 1x1 conv and head."""

    space: Space
    fixed_macs: int
    fixed_params: int
    macs: np.ndarray
    params: np.ndarray
    allowed: np.ndarray

    def path_macs(self, path) -> int:
        """MACs of a path (per-stage or flat), checked against the space."""
        return int(self.paths_macs(self._checked_flat(path)))

    def path_params(self, path) -> int:
        """Parameters of a path (per-stage or flat), checked against the space."""
        flat = self._checked_flat(path)
        return self.fixed_params + int(self.params[np.arange(len(flat)), flat].sum())

    def paths_macs(self, flat_paths) -> np.ndarray:
        """MACs of flat paths, op indices [..., layers] -> int64 [...]. Unchecked, for samplers
        that price thousands of drawn paths at once; `path_macs` checks one."""
        flat_paths = np.asarray(flat_paths)
        return self.fixed_macs + self.macs[np.arange(self.macs.shape[0]), flat_paths].sum(axis=-1)

    def _checked_flat(self, path) -> list:
        return arch_lib.flat_path(arch_lib.validate_path(arch_lib.nested_path(path, self.space),
                                                         self.space))

    def arch_macs(self, arch) -> int:
        return self.path_macs(arch_lib.arch_to_path(arch, self.space))

    @property
    def layer_min_macs(self) -> np.ndarray:
        """Per searchable layer, the MACs of its cheapest allowed op: int64 [layers]."""
        return np.where(self.allowed, self.macs, np.iinfo(np.int64).max).min(axis=1)

    @property
    def layer_max_macs(self) -> np.ndarray:
        """Per searchable layer, the MACs of its dearest allowed op: int64 [layers]."""
        return np.where(self.allowed, self.macs, -1).max(axis=1)

    @property
    def min_macs(self) -> int:
        """The exact smallest MACs any path of the space reaches."""
        return self.fixed_macs + int(self.layer_min_macs.sum())

    @property
    def max_macs(self) -> int:
        """The exact largest MACs any path of the space reaches."""
        return self.fixed_macs + int(self.layer_max_macs.sum())

    def resolve_range(self, value) -> tuple:
        """A MACs budget (see `macs_range`) as two ints, open ends closed at what the space
        reaches. Raises `MacsRangeError` when the budget and the space's reach do not meet."""
        low, high = macs_range(value)
        asked = f"[{low or 0:,}, " + (f"{high:,}]" if high is not None else "no limit]")
        reach = (self.min_macs, self.max_macs)
        low = reach[0] if low is None else low
        high = reach[1] if high is None else high
        if high < reach[0] or low > reach[1]:
            raise MacsRangeError(
                f"no path of {self.space} has MACs in {asked}: its paths reach "
                f"[{reach[0]:,}, {reach[1]:,}] MACs ({reach[0] / 1e6:.2f}M to "
                f"{reach[1] / 1e6:.2f}M; min_macs={reach[0]}, max_macs={reach[1]})")
        return low, high


class MacsRangeError(InputError):
    """A MACs budget that no path of the space can meet."""


def macs_range(value) -> tuple:
    """A MACs budget as (low, high), inclusive, with None for an open end.

    `value` is None (no budget) or a pair whose ends are non-negative numbers or None;
    fractional ends round inward. The one reading of a budget that the sampler, the board's
    selection, the tuner and run.py's --flops_min/--flops_max share. Raises `InputError`.
    """
    if value is None:
        return None, None
    try:
        low, high = value
    except (TypeError, ValueError):
        raise InputError(f"macs_range must be (min, max), got {value!r}") from None
    for name, end in (("min", low), ("max", high)):
        if end is not None and (isinstance(end, bool) or not isinstance(end, numbers.Real)
                                or not math.isfinite(end) or end < 0):
            raise InputError(f"macs_range {name} must be a non-negative number or None, got "
                             f"{end!r}")
    low = None if low is None else int(math.ceil(low))
    high = None if high is None else int(math.floor(high))
    if low is not None and high is not None and low > high:
        raise InputError(f"macs_range must be (min, max) with min <= max, got min {low:,} "
                         f"above max {high:,}")
    return low, high


@functools.lru_cache(maxsize=None)
def _op_cost(op, in_size, in_channels, out_channels, stride) -> tuple:
    """(MACs, params) of one op at one input shape; shared by every space with that shape."""
    result = _profile_fn(lambda x: blocks.op_block(x, op, out_channels, stride, "op"),
                         (in_size, in_size, in_channels))
    return result.macs, result.params


@functools.lru_cache(maxsize=32)
def cost_table(space: Space) -> CostTable:
    """Profiles every op at every searchable layer of `space` (each distinct shape once)."""
    r = space.resolution
    fixed = _profile_fn(lambda x: blocks.ds_block(blocks.stem(x, space.stem_channels),
                                                  space.ds_channels, space.ds_stride), (r, r, 3))
    f = space.final_size
    tail = _profile_fn(
        lambda x: blocks.head(blocks.final_conv(x, space.final_channels), space.head_channels,
                              space.num_classes),
        (f, f, space.stage_channels[-1]))
    n_ops = len(space.ops)
    macs = np.zeros((space.num_layers, n_ops), np.int64)
    params = np.zeros((space.num_layers, n_ops), np.int64)
    allowed = np.zeros((space.num_layers, n_ops), bool)
    for l, layer in enumerate(space.layers):
        for o in layer.choices:
            allowed[l, o] = True
            op = space.ops[o]
            if op.kind != "skip":
                macs[l, o], params[l, o] = _op_cost(op, layer.in_size, layer.in_channels,
                                                    layer.out_channels, layer.stride)
    return CostTable(space, fixed.macs + tail.macs, fixed.params + tail.params, macs, params,
                     allowed)
