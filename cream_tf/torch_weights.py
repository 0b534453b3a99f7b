"""Loading the authors' PyTorch checkpoints into cream_tf networks.

Which networks and files: docs/method.md, "The released architectures".

The release publishes timm `CheckpointSaver` dictionaries (`state_dict`, `state_dict_ema`,
`optimizer`, `epoch`, `args`), in the legacy (torch 1.2) or the zip format. `args` is a pickled
yacs config object. A pickle can run arbitrary code when it is loaded, so this module never
unpickles with the standard rules: its unpickler resolves only an allow-list of globals (torch's
tensor-rebuilding functions and storage types, `collections.OrderedDict`), and every other global
the file names (yacs' CfgNode, argparse.Namespace, or anything a crafted file puts there, such as
`os.system`) becomes an inert placeholder that stores its arguments and calls nothing. Tensors are
then read from the state dict; everything else in the file is ignored.

torch is imported only when a checkpoint is read (`pip install "cream_tf[torch]"`).
"""
from __future__ import annotations

import collections
import os
import re
import types

import numpy as np

from cream_tf import internals

__all__ = ["CheckpointMismatchError", "read_state_dict", "torch_name", "expected_state_dict",
           "load_torch_checkpoint", "SkippedObject"]

# Globals the unpickler may resolve, besides torch's tensor-rebuilding functions
# (`internals.torch_tensor_rebuilders`). Storage types ('FloatStorage', ...) are resolved by
# torch's own wrapper before ours is asked, as is the remapping of old torch module paths.
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the model; the message lists every mismatch."""


class SkippedObject(dict):
    """Stands in for a pickled object of a class that is not allowed. Holds data, runs nothing.

    A dict so that dict subclasses (yacs' CfgNode) can be filled item by item while unpickling.
    """

    pickled_class = "?"

    def __new__(cls, *args, **kwargs):
        return dict.__new__(cls)

    def __init__(self, *args, **kwargs):  # called as the "function" of a REDUCE; stores only
        dict.__init__(self)
        object.__setattr__(self, "pickled_args", args)

    def __setstate__(self, state):
        object.__setattr__(self, "pickled_state", state)

    def __repr__(self):
        return f"<skipped pickled {self.pickled_class}>"


_placeholders: dict = {}


def _placeholder(module: str, name: str) -> type:
    full = f"{module}.{name}"
    if full not in _placeholders:
        _placeholders[full] = type(f"Skipped[{full}]", (SkippedObject,), {"pickled_class": full})
    return _placeholders[full]


def _restricted_pickle_module():
    """A module object with `Unpickler` and `load`, for `torch.load(pickle_module=...)`."""
    import pickle

    import torch

    allowed = dict(_ALLOWED_GLOBALS)
    allowed.update(internals.torch_tensor_rebuilders(torch))

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module, name):
            try:
                return allowed[(module, name)]
            except KeyError:
                return _placeholder(module, name)

    def load(file, **kwargs):
        return RestrictedUnpickler(file, **kwargs).load()

    mod = types.ModuleType("cream_tf_restricted_pickle")
    mod.Unpickler = RestrictedUnpickler
    mod.load = load
    return mod


def _torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError("reading PyTorch checkpoints needs torch: pip install \"cream_tf[torch]\" "
                          "(torch==2.13.0; the CPU build is enough)") from e
    return torch


def read_state_dict(path, use_ema: bool = False) -> dict:
    """Reads the tensors of a checkpoint as float32/int numpy arrays, without running its pickles.

    Accepts a timm CheckpointSaver dict (the state dict is under 'state_dict', the EMA copy under
    'state_dict_ema'), a dict with the weights under 'model', or a bare state dict; zip or legacy
    format. A leading 'module.' (from DataParallel) is stripped.
    """
    torch = _torch()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path!r}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False,
                         pickle_module=_restricted_pickle_module())
    except Exception as e:  # a damaged or non-torch file
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {type(e).__name__}: {e}") \
            from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict or checkpoint dict")
    if use_ema:
        if "state_dict_ema" not in obj:
            raise ValueError(f"use_ema=True but {path} has no 'state_dict_ema' (its entries: "
                             f"{', '.join(map(str, obj))})")
        state = obj["state_dict_ema"]
    elif "state_dict" in obj:
        state = obj["state_dict"]
    elif "model" in obj and isinstance(obj["model"], dict):
        state = obj["model"]
    else:
        state = obj
    arrays, bad = {}, []
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            arrays[str(key)] = (value.float() if value.is_floating_point() else value).numpy()
        else:
            bad.append(f"{key} ({type(value).__name__})")
    if bad or not arrays:
        raise ValueError(f"{path}: the state dict must map names to tensors; "
                         f"{'not tensors: ' + ', '.join(bad) if bad else 'it is empty'}")
    if all(k.startswith("module.") for k in arrays):
        arrays = {k[len("module."):]: v for k, v in arrays.items()}
    return arrays


# --------------------------------------------------------------------------------------------
# Names

_BLOCK_PARTS = {  # our suffix -> release module, per block kind
    "ir": {"expand_conv": "conv_pw", "expand_bn": "bn1", "dwconv": "conv_dw", "dw_bn": "bn2",
           "se_reduce": "se.conv_reduce", "se_expand": "se.conv_expand",
           "project_conv": "conv_pwl", "project_bn": "bn3"},
    "res": {"reduce_conv": "conv1", "reduce_bn": "bn1", "middle_conv": "conv2", "middle_bn": "bn2",
            "expand_conv": "conv3", "expand_bn": "bn3", "shortcut_conv": "downsample.0",
            "shortcut_bn": "downsample.1"},
    "conv": {"conv": "conv", "bn": "bn1"},
}
_FIXED = {
    "stem_conv": "conv_stem", "stem_bn": "bn1",
    "ds_dwconv": "blocks.0.0.conv_dw", "ds_dw_bn": "blocks.0.0.bn1",
    "ds_se_reduce": "blocks.0.0.se.conv_reduce", "ds_se_expand": "blocks.0.0.se.conv_expand",
    "ds_project_conv": "blocks.0.0.conv_pw", "ds_project_bn": "blocks.0.0.bn2",
    "final_conv": "blocks.6.0.conv", "final_bn": "blocks.6.0.bn1",
    "head_conv": "conv_head", "classifier": "classifier",
}
_BLOCK = re.compile(r"stage(\d+)_block(\d+)_(.+)")


def _block_kind(layer_names: set, prefix: str) -> str:
    if f"{prefix}_dwconv" in layer_names:
        return "ir"
    if f"{prefix}_middle_conv" in layer_names:
        return "res"
    return "conv"


def torch_name(layer_name: str, kind: str = "ir") -> str | None:
    """The release's module name of one of our layers ('stage2_block1_dwconv' -> 'blocks.2.0.conv_dw')."""
    if layer_name in _FIXED:
        return _FIXED[layer_name]
    m = _BLOCK.fullmatch(layer_name)
    if not m:
        return None
    stage, block, part = int(m.group(1)), int(m.group(2)), m.group(3)
    module = _BLOCK_PARTS[kind].get(part)
    return None if module is None else f"blocks.{stage}.{block - 1}.{module}"


def _weight_layers(model):
    """Leaf layers that own weights, nested models flattened."""
    import keras
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out += _weight_layers(layer)
        elif layer.weights:
            out.append(layer)
    return out


def _layer_map(model) -> list:
    """[(layer, torch module name, [(keras variable, torch key, converter)])] for every layer."""
    import keras
    layers = _weight_layers(model)
    names = {layer.name for layer in layers}
    entries, unknown = [], []
    for layer in layers:
        m = _BLOCK.fullmatch(layer.name)
        kind = _block_kind(names, f"stage{m.group(1)}_block{m.group(2)}") if m else "ir"
        module = torch_name(layer.name, kind)
        if module is None:
            unknown.append(f"{layer.name} ({type(layer).__name__})")
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            pairs = [(layer.gamma, "weight"), (layer.beta, "bias"),
                     (layer.moving_mean, "running_mean"), (layer.moving_variance, "running_var")]
            pairs = [(v, k, _same) for v, k in pairs if v is not None]
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            pairs = [(layer.kernel, "weight", _depthwise)]
            if layer.use_bias:
                pairs.append((layer.bias, "bias", _same))
        elif isinstance(layer, keras.layers.Conv2D):
            pairs = [(layer.kernel, "weight", _conv)]
            if layer.use_bias:
                pairs.append((layer.bias, "bias", _same))
        elif isinstance(layer, keras.layers.Dense):
            pairs = [(layer.kernel, "weight", _dense)]
            if layer.use_bias:
                pairs.append((layer.bias, "bias", _same))
        else:
            unknown.append(f"{layer.name} ({type(layer).__name__})")
            continue
        entries.append((layer, module, [(v, f"{module}.{k}", f) for v, k, f in pairs]))
    if unknown:
        raise CheckpointMismatchError("no PyTorch name is known for these layers of the model: "
                                      + ", ".join(unknown))
    return entries


def _same(a):
    return a


def _conv(a):  # (O, I, kh, kw) -> (kh, kw, I, O)
    return a.transpose(2, 3, 1, 0) if a.ndim == 4 else a


def _depthwise(a):  # (C, 1, kh, kw) -> (kh, kw, C, 1)
    return a.transpose(2, 3, 0, 1) if a.ndim == 4 else a


def _dense(a):  # (out, in) -> (in, out)
    return a.T if a.ndim == 2 else a


def _torch_shape(variable, converter) -> tuple:
    """The shape the release stores for one of our variables."""
    shape = tuple(variable.shape)
    if converter is _conv:
        return (shape[3], shape[2], shape[0], shape[1])
    if converter is _depthwise:
        return (shape[2], shape[3], shape[0], shape[1])
    if converter is _dense:
        return (shape[1], shape[0])
    return shape


def expected_state_dict(model) -> dict:
    """{torch key: shape} the model needs from a release checkpoint (no num_batches_tracked)."""
    return {key: _torch_shape(v, f) for _, _, pairs in _layer_map(model) for v, key, f in pairs}


def load_torch_checkpoint(model, path, use_ema: bool = False):
    """Fills `model` (a zoo network or any child built by cream_tf) from a release checkpoint.

    Copies conv/dense weights (transposed to Keras layouts), biases and BatchNorm weights and
    running statistics; `use_ema=True` takes the EMA weights ('state_dict_ema'). The model is
    changed only when every tensor fits: otherwise a `CheckpointMismatchError` lists every
    missing key, unexpected key and wrong shape. Returns the model.
    """
    state = read_state_dict(path, use_ema=use_ema)
    entries = _layer_map(model)
    missing, wrong = [], []
    assignments = []
    used = set()
    for _, _, pairs in entries:
        for variable, key, converter in pairs:
            if key not in state:
                missing.append(f"{key} {_torch_shape(variable, converter)}")
                continue
            used.add(key)
            value = converter(state[key])
            if tuple(value.shape) != tuple(variable.shape):
                wrong.append(f"{key}: checkpoint {tuple(state[key].shape)}, model needs "
                             f"{_torch_shape(variable, converter)} (Keras {variable.path} "
                             f"{tuple(variable.shape)})")
                continue
            assignments.append((variable, value))
    unexpected = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
    if missing or unexpected or wrong:
        lines = [f"{os.fspath(path)} does not fit model {model.name!r}:"]
        for title, items in (("missing", missing), ("unexpected", unexpected),
                             ("wrong shape", wrong)):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines += [f"    {item}" for item in items]
        raise CheckpointMismatchError("\n".join(lines))
    for variable, value in assignments:
        variable.assign(np.asarray(value, dtype=variable.dtype))
    return model
