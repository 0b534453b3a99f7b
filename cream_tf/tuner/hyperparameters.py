"""A space as keras-tuner `HyperParameters`, and paths to and from their values.

One `Choice` per searchable layer, named ``stage{s}_layer{i}`` (1-based) like the supernet's
layer, whose values are the op names (``ir_k5_e6``, ``res_k3``, ``conv_k1``, ``skip``) allowed
there. Op names rather than indices so that a trial's saved values read as architectures.
"""
from __future__ import annotations

from typing import Mapping

import keras_tuner as kt

from cream_tf import arch as arch_lib
from cream_tf.space import Space
from cream_tf.supernet import choice_prefix

__all__ = ["hp_name", "hyperparameters_from_space", "hyperparameters_from_path",
           "path_from_hyperparameters", "flat_from_values", "values_from_flat"]


def hp_name(layer) -> str:
    """Name of the `Choice` of one searchable layer: 'stage2_layer3' (1-based), the name of the
    supernet's layer for it (`supernet.choice_prefix`)."""
    return choice_prefix(layer.stage, layer.index)


def hyperparameters_from_space(space: Space) -> kt.HyperParameters:
    """One `Choice` per searchable layer, values the op names allowed there (SkipConnect last)."""
    hp = kt.HyperParameters()
    for layer in space.layers:
        hp.Choice(hp_name(layer), [space.ops[o].name for o in layer.choices], ordered=False)
    return hp


def hyperparameters_from_path(path, space: Space) -> kt.HyperParameters:
    """The space's `HyperParameters` with values set to `path` (validated against the space)."""
    flat = arch_lib.flat_path(arch_lib.validate_path(path, space))
    hp = hyperparameters_from_space(space)
    for layer, op_index in zip(space.layers, flat):
        hp.values[hp_name(layer)] = space.ops[op_index].name
    return hp


def flat_from_values(values: Mapping, space: Space) -> list:
    """The flat path that hyperparameter values encode; ValueError names a missing or bad one."""
    flat = []
    for layer in space.layers:
        name = hp_name(layer)
        allowed = {space.ops[o].name: o for o in layer.choices}
        if name not in values:
            raise ValueError(f"hyperparameter {name!r} is missing; a path of space "
                             f"{space.name!r} needs one per searchable layer "
                             f"({hp_name(space.layers[0])} .. {hp_name(space.layers[-1])})")
        value = values[name]
        if value not in allowed:
            raise ValueError(f"hyperparameter {name!r} = {value!r} is not an op allowed at that "
                             f"layer; valid: {', '.join(allowed)}")
        flat.append(allowed[value])
    return flat


def path_from_hyperparameters(hp, space: Space) -> tuple:
    """The path (per-stage tuples of op indices) that `hp` (HyperParameters or a dict) encodes.

    Hyperparameters that are not layer choices (a learning rate, say) are ignored.
    """
    values = hp.values if isinstance(hp, kt.HyperParameters) else hp
    if not isinstance(values, Mapping):
        raise TypeError(f"expected keras_tuner.HyperParameters or a dict of values, got "
                        f"{type(hp).__name__}")
    flat = flat_from_values(values, space)
    return arch_lib.validate_path(arch_lib.nested_path(flat, space), space)


def values_from_flat(flat, space: Space) -> dict:
    """Hyperparameter values (op names by layer) of a flat path: what an oracle proposes."""
    return {hp_name(layer): space.ops[int(o)].name for layer, o in zip(space.layers, flat)}
