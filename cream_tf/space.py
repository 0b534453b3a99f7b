"""Search spaces of Cream (the paper's appendix Tables 1-3) as data.

A space is a frozen description: fixed stem and DS block, five searchable stages, fixed 1x1 conv and
head. Everything else (child networks, supernets, FLOPs tables, samplers, keras-tuner spaces) is
decoded from it, so a setting lives in exactly one place.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from cream_tf.errors import is_count, require

__all__ = [
    "Op", "SKIP", "MBCONV_OPS", "RES_OP", "CONV_OPS", "SPACES", "LAYOUTS", "Layer", "Space",
    "make_divisible",
]


def make_divisible(value: float, divisor: int = 8) -> int:
    """Rounds like the release: to a multiple of `divisor`, never more than 10% below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclasses.dataclass(frozen=True)
class Op:
    """One choice of a searchable layer. `kind` is 'ir' (MBConv), 'res', 'conv' or 'skip'."""

    kind: str
    kernel: int = 0
    expansion: int = 0

    @property
    def name(self) -> str:
        if self.kind == "ir":
            return f"ir_k{self.kernel}_e{self.expansion}"
        if self.kind == "skip":
            return "skip"
        return f"{self.kind}_k{self.kernel}"

    @property
    def paper(self) -> str:
        """The paper's figure notation: 'MB6 5x5', 'Res 3x3', 'Conv 1x1', 'Skip'."""
        k = f"{self.kernel}x{self.kernel}"
        return {"ir": f"MB{self.expansion} {k}", "res": f"Res {k}", "conv": f"Conv {k}",
                "skip": "Skip"}[self.kind]

    def __str__(self) -> str:
        return self.name


# Op order is part of the public format: MBConv ops are numbered as in the release
# (k3e4=0, k3e6=1, k5e4=2, k5e6=3, k7e4=4, k7e6=5) so its paths read the same here.
MBCONV_OPS = tuple(Op("ir", k, e) for k in (3, 5, 7) for e in (4, 6))
RES_OP = Op("res", 3)
CONV_OPS = tuple(Op("conv", k) for k in (1, 3, 5))
SKIP = Op("skip")

# Per space, the ops in index order; SkipConnect is always the last index.
SPACES = {
    "mbconv": MBCONV_OPS + (SKIP,),                        # Table 1
    "mbconv_res": MBCONV_OPS + (RES_OP, SKIP),             # Table 2
    "mbconv_res_conv": MBCONV_OPS + (RES_OP,) + CONV_OPS + (SKIP,),  # Table 3
}

# layout -> (DS stride, stage strides). 'released' is what the release builds and every published
# FLOPs figure uses; 'paper' is what the appendix prints. Both end at 1/32 of the input.
LAYOUTS = {
    "released": (1, (2, 2, 2, 1, 2)),
    "paper": (2, (2, 2, 1, 2, 1)),
}

STEM_CHANNELS = 16
DS_CHANNELS = 16
STAGE_CHANNELS = (24, 40, 80, 96, 192)
FINAL_CHANNELS = 320
HEAD_CHANNELS = 1280
MAX_DEPTH = 6
MIN_RESOLUTION = 32


def _out_size(size: int, stride: int) -> int:
    # Symmetric PyTorch padding ((s-1)+(k-1))//2 gives ceil(size / stride) for every odd kernel.
    return -(-size // stride)


@dataclasses.dataclass(frozen=True)
class Layer:
    """One searchable position: its place, shapes and the op indices it may take."""

    stage: int          # 0-based stage
    index: int          # 0-based position inside the stage
    in_channels: int
    out_channels: int
    stride: int
    in_size: int        # input height == width
    choices: tuple      # allowed op indices (SkipConnect only where shapes are kept)

    @property
    def skippable(self) -> bool:
        return self.index > 0


@dataclasses.dataclass(frozen=True)
class Space:
    """A Cream search space.

    Args:
      name: 'mbconv' (Table 1), 'mbconv_res' (Table 2) or 'mbconv_res_conv' (Table 3).
      layout: 'released' (default, the strides behind every published number) or 'paper'.
      depth: largest number of blocks per stage, one int or five; the paper uses 4 to 6.
      resolution: input height and width.
      width: channel multiplier of the stem, DS, stages and 1x1 conv (the 1280 head is kept).
      num_classes: classifier width.
    """

    name: str = "mbconv"
    layout: str = "released"
    depth: Sequence[int] | int = 4
    resolution: int = 224
    width: float = 1.0
    num_classes: int = 1000

    def __post_init__(self):
        def need(field, ok, requirement):
            require("Space", field, getattr(self, field), ok, requirement)

        need("name", self.name in SPACES, f"one of {', '.join(SPACES)}")
        need("layout", self.layout in LAYOUTS, f"one of {', '.join(LAYOUTS)}")
        depth = self.depth
        if isinstance(depth, int) and not isinstance(depth, bool):
            depth = (depth,) * len(STAGE_CHANNELS)
        try:
            depth = tuple(int(d) for d in depth)
        except (TypeError, ValueError):
            depth = ()
        need("depth", len(depth) == len(STAGE_CHANNELS) and all(
            1 <= d <= MAX_DEPTH for d in depth), f"one int or {len(STAGE_CHANNELS)} ints, each "
             f"from 1 to {MAX_DEPTH} (the paper uses 4 to 6)")
        object.__setattr__(self, "depth", depth)
        need("resolution", is_count(self.resolution) and self.resolution >= MIN_RESOLUTION,
             f"an int >= {MIN_RESOLUTION} (the network downsamples by 32)")
        need("width", isinstance(self.width, (int, float)) and not isinstance(self.width, bool)
             and 0 < self.width <= 4, "a number in (0, 4]")
        need("num_classes", is_count(self.num_classes) and self.num_classes >= 2, "an int >= 2")

    # -- ops ---------------------------------------------------------------------------------
    @property
    def ops(self) -> tuple:
        return SPACES[self.name]

    @property
    def skip_index(self) -> int:
        return len(self.ops) - 1

    def op_index(self, op: Op) -> int:
        try:
            return self.ops.index(op)
        except ValueError:
            raise ValueError(f"op {op.paper!r} is not in space {self.name!r}; its ops are "
                             f"{', '.join(o.paper for o in self.ops)}") from None

    # -- shapes ------------------------------------------------------------------------------
    def channels(self, base: int) -> int:
        return base if self.width == 1.0 else make_divisible(base * self.width)

    @property
    def stem_channels(self) -> int:
        return self.channels(STEM_CHANNELS)

    @property
    def ds_channels(self) -> int:
        return self.channels(DS_CHANNELS)

    @property
    def stage_channels(self) -> tuple:
        return tuple(self.channels(c) for c in STAGE_CHANNELS)

    @property
    def final_channels(self) -> int:
        return self.channels(FINAL_CHANNELS)

    @property
    def head_channels(self) -> int:
        return HEAD_CHANNELS

    @property
    def ds_stride(self) -> int:
        return LAYOUTS[self.layout][0]

    @property
    def stage_strides(self) -> tuple:
        return LAYOUTS[self.layout][1]

    @property
    def num_stages(self) -> int:
        return len(STAGE_CHANNELS)

    @property
    def stem_out_size(self) -> int:
        return _out_size(self.resolution, 2)

    @property
    def ds_out_size(self) -> int:
        return _out_size(self.stem_out_size, self.ds_stride)

    @property
    def layers(self) -> tuple:
        """Every searchable position in network order."""
        result, size, channels = [], self.ds_out_size, self.ds_channels
        non_skip = tuple(range(len(self.ops) - 1))
        for s, (out_c, stride, depth) in enumerate(
                zip(self.stage_channels, self.stage_strides, self.depth)):
            for i in range(depth):
                st = stride if i == 0 else 1
                choices = non_skip if i == 0 else non_skip + (self.skip_index,)
                result.append(Layer(s, i, channels, out_c, st, size, choices))
                size, channels = _out_size(size, st), out_c
        return tuple(result)

    @property
    def num_layers(self) -> int:
        return sum(self.depth)

    @property
    def final_size(self) -> int:
        size = self.ds_out_size
        for st in self.stage_strides:
            size = _out_size(size, st)
        return size

    def replace(self, **changes) -> "Space":
        return dataclasses.replace(self, **changes)

    # -- presentation ------------------------------------------------------------------------
    def table(self) -> str:
        """The space as the appendix prints it: input shape, operators, channels, repeat, stride."""
        names = ["MBConv k{3,5,7} e{4,6}"]
        if RES_OP in self.ops:
            names.append("ResBlock")
        if CONV_OPS[0] in self.ops:
            names.append("Conv k{1,3,5}")
        ops = " / ".join(names + ["SkipConnect"])
        r = self.resolution
        rows = [("Input shape", "Operators", "Channels", "Repeat", "Stride"),
                (f"{r}^2 x 3", "3x3 Conv", self.stem_channels, 1, 2),
                (f"{self.stem_out_size}^2 x {self.stem_channels}", "3x3 Depthwise Separable Conv",
                 self.ds_channels, 1, self.ds_stride)]
        size, channels = self.ds_out_size, self.ds_channels
        for out_c, stride, depth in zip(self.stage_channels, self.stage_strides, self.depth):
            rows.append((f"{size}^2 x {channels}", ops, out_c, depth, stride))
            size, channels = _out_size(size, stride), out_c
        rows += [(f"{size}^2 x {channels}", "1x1 Conv", self.final_channels, 1, 1),
                 (f"{size}^2 x {self.final_channels}", "Global Avg Pooling", self.final_channels, 1, "-"),
                 (f"1 x {self.final_channels}", "1x1 Conv", self.head_channels, 1, 1),
                 (f"1 x {self.head_channels}", "Fully Connect", self.num_classes, 1, "-")]
        widths = [max(len(str(row[c])) for row in rows) for c in range(5)]
        lines = [" | ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "-+-".join("-" * w for w in widths))
        return "\n".join(lines)

    def __str__(self) -> str:
        return (f"Space({self.name}, layout={self.layout}, depth={list(self.depth)}, "
                f"resolution={self.resolution}, width={self.width}, classes={self.num_classes})")
