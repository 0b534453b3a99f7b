"""The six networks of the authors' release, by name.

Their blocks, MACs and reported accuracies: docs/method.md, "The released architectures".
"""
from __future__ import annotations

import dataclasses

import keras

from cream_tf import arch as arch_lib
from cream_tf import child
from cream_tf.space import Space


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    name: str
    resolution: int
    top1: float       # ImageNet top-1 reported by the authors
    top5: float
    architecture: str  # paper notation

    @property
    def depth(self) -> int:
        return max(len(stage.split(",")) for stage in self.architecture.split("|")[1:])

    def space(self, num_classes: int = 1000, resolution: int | None = None) -> Space:
        """The smallest Table 1 space (released layout) that holds this network."""
        return Space("mbconv", "released", depth=max(4, self.depth),
                     resolution=resolution or self.resolution, num_classes=num_classes)

    def arch(self) -> arch_lib.Arch:
        return arch_lib.parse_paper(self.architecture, self.space())


def _stages(*stages: str) -> str:
    """'k3e4', 'k5e6 x3' tokens per stage -> paper notation."""
    out = ["DS"]
    for stage in stages:
        blocks = []
        for token in stage.split(","):
            token = token.strip()
            kernel_exp, _, times = token.partition(" x")
            k, e = kernel_exp[1], kernel_exp[3]
            blocks += [f"MB{e} {k}x{k}"] * int(times or 1)
        out.append(", ".join(blocks))
    return " | ".join(out)


_ENTRIES = (
    ZooEntry("cream_14", 64, 53.8, 77.2,
             _stages("k3e4", "k5e6, k5e6", "k5e6, k5e6", "k3e6", "k5e6")),
    ZooEntry("cream_43", 96, 66.3, 86.7,
             _stages("k3e4", "k5e6, k3e6", "k5e6, k3e6", "k5e6 x3", "k5e6, k5e6")),
    ZooEntry("cream_114", 160, 72.8, 90.8,
             _stages("k3e4", "k5e6, k5e6", "k5e6, k5e6", "k5e6 x3", "k5e6, k5e6")),
    ZooEntry("cream_287", 224, 77.6, 93.3,
             _stages("k3e4", "k5e6, k5e6", "k5e6, k3e6, k5e6", "k5e6 x4", "k5e6 x3")),
    ZooEntry("cream_481", 224, 79.2, 94.2,
             _stages("k5e6, k7e4, k5e6, k3e6", "k5e6, k5e4, k5e6, k3e4",
                     "k5e6, k5e6, k5e6, k3e6, k3e6", "k5e6 x4", "k5e6 x4")),
    ZooEntry("cream_604", 224, 80.0, 94.7,
             _stages("k5e6, k5e6, k5e4, k5e6, k5e6", "k5e6, k5e4, k5e6, k5e4, k5e6",
                     "k5e6, k5e4, k5e6, k5e4, k5e6", "k5e6, k5e6, k5e4, k5e4, k5e6, k5e6",
                     "k5e6, k5e6, k5e4, k5e6, k5e6, k5e6")),
)
ZOO = {e.name: e for e in _ENTRIES}


def names() -> list:
    """Names of the released networks, smallest first."""
    return list(ZOO)


def get(name: str) -> ZooEntry:
    if name not in ZOO:
        raise ValueError(f"unknown zoo model {name!r}; valid names: {', '.join(ZOO)}")
    return ZOO[name]


def build(name: str, num_classes: int = 1000, input_shape=None, dropout: float = 0.0,
          classifier_activation=None) -> keras.Model:
    """Builds a released network; `input_shape` defaults to its own resolution, RGB."""
    entry = get(name)
    resolution = None
    if input_shape is not None:
        if len(input_shape) != 3 or input_shape[0] != input_shape[1]:
            raise ValueError(f"input_shape must be (size, size, 3), got {input_shape!r}")
        resolution = input_shape[0]
    space = entry.space(num_classes=num_classes, resolution=resolution)
    return child.build(entry.arch(), space, input_shape=input_shape, dropout=dropout,
                       classifier_activation=classifier_activation, name=name)


def load_torch_checkpoint(model: keras.Model, path, use_ema: bool = False) -> keras.Model:
    """Fills a zoo network (or any cream_tf child) from the authors' PyTorch checkpoint.

    Reads timm CheckpointSaver files (zip or legacy format) or bare state dicts without running
    their pickled objects; see `cream_tf.torch_weights`. Needs torch (imported only here).
    """
    from cream_tf import torch_weights
    return torch_weights.load_torch_checkpoint(model, path, use_ema=use_ema)
