"""Paths and child architectures, and their three text forms.

A *path* picks one op index per searchable layer of a space (one tuple per stage, SkipConnect
included); an *architecture* is the same with SkipConnect dropped. Text forms, all round-trip:

* path lists: ``[[0, 6, 6, 6], [3, 3, 6, 6], ...]``: op indices of the space per stage. Shorter
  stages are padded with SkipConnect, so an architecture's own indices parse too.
* paper notation: ``DS | MB4 3x3 | MB6 5x5, MB6 5x5 | ...``: stages separated by ``|``, blocks by
  ``,``; ops are ``MB{e} {k}x{k}``, ``Res 3x3``, ``Conv {k}x{k}`` and ``Skip``. The leading ``DS``
  stage is optional.
* block strings, timm style: ``ds_r1_k3_s1_c16_se0.25 | ir_r1_k3_s2_e4_c24_se0.25 | ...``: one
  string per run of equal blocks, ``_``-separated options ``r`` (repeat), ``k`` (kernel), ``s``
  (stride of the run's first block), ``e`` (expansion), ``c`` (output channels), ``se`` (SE ratio of
  the expanded width, always 0.25). Types: ``ds`` (the fixed DS block), ``ir`` (MBConv), ``res``
  (ResBlock), ``cn`` (Conv). Strides and channels are checked against the space.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from cream_tf.space import SKIP, Op, Space

__all__ = ["Arch", "ArchError", "parse", "parse_path", "parse_paper", "parse_blocks",
           "path_to_arch", "arch_to_path", "validate_path", "flat_path", "nested_path", "FORMS"]

FORMS = ("path", "paper", "blocks")


class ArchError(ValueError):
    """A malformed or invalid architecture string or path; the message names the bad part."""


@dataclasses.dataclass(frozen=True)
class Arch:
    """A child architecture: per stage, the ops of its blocks (no SkipConnect)."""

    stages: tuple

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(tuple(s) for s in self.stages))

    @property
    def depths(self) -> tuple:
        return tuple(len(s) for s in self.stages)

    def to_paper(self, with_ds: bool = True) -> str:
        parts = (["DS"] if with_ds else []) + [", ".join(op.paper for op in s) for s in self.stages]
        return " | ".join(parts)

    def to_path_string(self, space: Space) -> str:
        return format_path(arch_to_path(self, space))

    def to_blocks(self, space: Space) -> str:
        return " | ".join(", ".join(s) for s in self.block_def(space))

    def block_def(self, space: Space) -> list:
        """timm-style arch definition: a list per stage of block strings, DS stage first."""
        result = [[f"ds_r1_k3_s{space.ds_stride}_c{space.ds_channels}_se0.25"]]
        for ops, channels, stride in zip(self.stages, space.stage_channels, space.stage_strides):
            strings, i = [], 0
            while i < len(ops):
                j = i
                while j < len(ops) and ops[j] == ops[i]:
                    j += 1
                strings.append(_block_string(ops[i], j - i, stride if i == 0 else 1, channels))
                i = j
            result.append(strings)
        return result

    def to_string(self, form: str, space: Space) -> str:
        if form == "paper":
            return self.to_paper()
        if form == "path":
            return self.to_path_string(space)
        if form == "blocks":
            return self.to_blocks(space)
        raise ArchError(f"unknown architecture form {form!r}; valid forms: {', '.join(FORMS)}")

    def __str__(self) -> str:
        return self.to_paper()


def _block_string(op: Op, repeat: int, stride: int, channels: int) -> str:
    if op.kind == "ir":
        return f"ir_r{repeat}_k{op.kernel}_s{stride}_e{op.expansion}_c{channels}_se0.25"
    kind = {"res": "res", "conv": "cn"}[op.kind]
    return f"{kind}_r{repeat}_k{op.kernel}_s{stride}_c{channels}"


# -- paths -------------------------------------------------------------------------------------

def validate_path(path, space: Space) -> tuple:
    """Checks a path against a space; returns it as a tuple of per-stage tuples of ints."""
    try:
        stages = tuple(tuple(int(i) for i in stage) for stage in path)
    except (TypeError, ValueError):
        raise ArchError(f"a path is one list of op indices per stage, got {path!r}") from None
    if len(stages) != space.num_stages:
        raise ArchError(f"a path of space {space.name!r} has {space.num_stages} stages, "
                        f"got {len(stages)}")
    layers = iter(space.layers)
    for s, (stage, depth) in enumerate(zip(stages, space.depth)):
        if len(stage) != depth:
            raise ArchError(f"stage {s + 1} of the path has {len(stage)} layers; the space has "
                            f"{depth}")
        for i, op_index in enumerate(stage):
            layer = next(layers)
            if op_index not in layer.choices:
                raise ArchError(
                    f"stage {s + 1} layer {i + 1}: op index {op_index} is not allowed; valid: "
                    + ", ".join(f"{c} ({space.ops[c].paper})" for c in layer.choices))
    return stages


def flat_path(path) -> list:
    """The path as one flat list of op indices, the form a supernet takes (as an int32 tensor)."""
    return [i for stage in path for i in stage]


def nested_path(path, space: Space) -> tuple:
    """The per-stage form of a path given in either form (not validated: see `validate_path`).

    A flat path (a sequence, array or tensor of one op index per searchable layer, as samplers,
    the board and the supernet hold it) is cut by `space.depth` into tuples of ints; per-stage
    sequences pass through. The one flat -> nested conversion, the inverse of `flat_path`.
    """
    if hasattr(path, "numpy"):  # a tf.Tensor or tf.Variable, without importing TensorFlow
        path = path.numpy()
    if isinstance(path, np.ndarray):
        path = path.tolist()
    path = tuple(path)
    if not (path and all(isinstance(p, (int, np.integer)) for p in path)):
        return path
    if len(path) != space.num_layers:
        raise ArchError(f"a flat path of space {space.name!r} has {space.num_layers} op "
                        f"indices, got {len(path)}")
    nested, start = [], 0
    for depth in space.depth:
        nested.append(tuple(int(i) for i in path[start:start + depth]))
        start += depth
    return tuple(nested)


def path_to_arch(path, space: Space) -> Arch:
    path = validate_path(path, space)
    return Arch(tuple(tuple(space.ops[i] for i in stage if i != space.skip_index)
                      for stage in path))


def arch_to_path(arch: Arch, space: Space) -> tuple:
    if len(arch.stages) != space.num_stages:
        raise ArchError(f"an architecture has {space.num_stages} stages, got {len(arch.stages)}")
    path = []
    for s, (ops, depth) in enumerate(zip(arch.stages, space.depth)):
        if not 1 <= len(ops) <= depth:
            raise ArchError(f"stage {s + 1} has {len(ops)} blocks; space {space.name!r} allows 1 "
                            f"to {depth} (set a larger depth)")
        path.append(tuple(space.op_index(op) for op in ops) +
                    (space.skip_index,) * (depth - len(ops)))
    return tuple(path)


def format_path(path) -> str:
    return "[" + ", ".join("[" + ", ".join(str(i) for i in s) + "]" for s in path) + "]"


# -- parsers -----------------------------------------------------------------------------------

def parse_path(text: str, space: Space) -> Arch:
    """Parses path lists (`[[0, 6], [3, 3], ...]`) into an architecture of `space`."""
    body = text.strip()
    if not (body.startswith("[") and body.endswith("]")):
        raise ArchError(f"path lists must look like [[0, 6], [3, 3], ...]; got {text!r}")
    body = body[1:-1]
    stages, pos = [], 0
    for m in re.finditer(r"\[([^\[\]]*)\]", body):
        between = body[pos:m.start()].strip()
        if between not in ("", ","):
            raise ArchError(f"unexpected token {between!r} between stages in {text!r}")
        pos = m.end()
        stage = []
        for token in m.group(1).split(","):
            token = token.strip()
            if not re.fullmatch(r"-?\d+", token):
                raise ArchError(f"bad token {token!r} in stage {len(stages) + 1}: expected an op "
                                f"index 0..{space.skip_index} of space {space.name!r}")
            index = int(token)
            if not 0 <= index <= space.skip_index:
                raise ArchError(f"bad token {token!r} in stage {len(stages) + 1}: op indices of "
                                f"space {space.name!r} are 0..{space.skip_index} "
                                f"({space.skip_index} = SkipConnect)")
            stage.append(index)
        stages.append(stage)
    tail = body[pos:].strip()
    if tail not in ("", ","):
        raise ArchError(f"unexpected token {tail!r} after the last stage in {text!r}")
    if len(stages) != space.num_stages:
        raise ArchError(f"expected {space.num_stages} stages, got {len(stages)} in {text!r}")
    padded = []
    for s, (stage, depth) in enumerate(zip(stages, space.depth)):
        if len(stage) > depth:
            raise ArchError(f"stage {s + 1} has {len(stage)} layers; space {space.name!r} has "
                            f"{depth}")
        padded.append(stage + [space.skip_index] * (depth - len(stage)))
    return path_to_arch(padded, space)


_PAPER_OP = re.compile(r"(?i)^(MB(\d+)|RES|CONV)\s+(\d+)\s*x\s*(\d+)$")


def _paper_op(token: str, space: Space, where: str) -> Op:
    valid = ", ".join(o.paper for o in space.ops)
    if token.lower() == "skip":
        return SKIP
    m = _PAPER_OP.match(token)
    if not m or m.group(3) != m.group(4):
        raise ArchError(f"bad token {token!r} in {where}: expected one of {valid}")
    kernel = int(m.group(3))
    head = m.group(1).upper()
    if head.startswith("MB"):
        op = Op("ir", kernel, int(m.group(2)))
    elif head == "RES":
        op = Op("res", kernel)
    else:
        op = Op("conv", kernel)
    if op not in space.ops:
        raise ArchError(f"bad token {token!r} in {where}: not an op of space {space.name!r}; "
                        f"expected one of {valid}")
    return op


def parse_paper(text: str, space: Space) -> Arch:
    """Parses the paper's notation (`DS | MB4 3x3 | MB6 5x5, MB6 5x5 | ...`)."""
    parts = [p.strip() for p in text.split("|")]
    if parts and parts[0].upper() == "DS":
        parts = parts[1:]
    if len(parts) != space.num_stages:
        raise ArchError(f"expected {space.num_stages} stages separated by '|' (optionally after "
                        f"'DS'), got {len(parts)} in {text!r}")
    stages = []
    for s, part in enumerate(parts):
        tokens = [t.strip() for t in part.split(",")]
        ops = [_paper_op(t, space, f"stage {s + 1}") for t in tokens]
        stages.append(tuple(op for op in ops if op != SKIP))
    return _checked(Arch(tuple(stages)), space)


_BLOCK_OPTION = re.compile(r"^(se|[rksec])(\d+(?:\.\d+)?)$")
_BLOCK_NEEDS = {"ds": "rksc", "ir": "rksec", "res": "rksc", "cn": "rksc"}


def _parse_block(token: str, where: str) -> tuple:
    parts = token.split("_")
    kind = parts[0]
    if kind not in _BLOCK_NEEDS:
        raise ArchError(f"bad block type {kind!r} in {token!r} ({where}); valid types: "
                        f"{', '.join(_BLOCK_NEEDS)}")
    opts = {}
    for part in parts[1:]:
        m = _BLOCK_OPTION.match(part)
        if not m or m.group(1) in opts:
            raise ArchError(f"bad option {part!r} in {token!r} ({where}); options are r<repeat>, "
                            f"k<kernel>, s<stride>, e<expansion>, c<channels>, se<ratio>, once each")
        opts[m.group(1)] = m.group(2)
    missing = [o for o in _BLOCK_NEEDS[kind] if o not in opts]
    if missing:
        raise ArchError(f"block {token!r} ({where}) lacks option(s) {', '.join(missing)}")
    allowed_se = kind in ("ds", "ir")
    if ("se" in opts) != allowed_se or (allowed_se and float(opts["se"]) != 0.25):
        raise ArchError(f"block {token!r} ({where}): " + (
            "ds and ir blocks take se0.25" if allowed_se else f"{kind} blocks take no se option"))
    for key in "rksec":
        if key in opts:
            if not re.fullmatch(r"\d+", opts[key]):
                raise ArchError(f"bad option {key}{opts[key]!r} in {token!r} ({where}): an "
                                f"integer is expected")
            opts[key] = int(opts[key])
    return kind, opts


def parse_blocks(text: str, space: Space) -> Arch:
    """Parses timm-style block strings; stages separated by '|', strings inside by ','."""
    body = text.strip()
    if body.startswith("["):  # a Python/JSON list of lists of strings, as timm writes arch_def
        body = body.replace("[", "").replace("'", "").replace('"', "")
        body = "|".join(s.strip(" ,") for s in body.split("]") if s.strip(" ,"))
    parts = [p.strip() for p in body.split("|")]
    if parts and parts[0].startswith("ds"):
        kind, opts = _parse_block(parts[0], "DS stage")
        if kind != "ds" or opts != {"r": 1, "k": 3, "s": space.ds_stride, "c": space.ds_channels,
                                    "se": opts.get("se")}:
            raise ArchError(f"the DS stage of this space is "
                            f"'ds_r1_k3_s{space.ds_stride}_c{space.ds_channels}_se0.25', got "
                            f"{parts[0]!r}")
        parts = parts[1:]
    if len(parts) != space.num_stages:
        raise ArchError(f"expected {space.num_stages} searchable stages separated by '|', got "
                        f"{len(parts)} in {text!r}")
    stages = []
    for s, (part, channels, stride) in enumerate(
            zip(parts, space.stage_channels, space.stage_strides)):
        ops = []
        for token in (t.strip() for t in part.split(",")):
            where = f"stage {s + 1}"
            kind, opts = _parse_block(token, where)
            if kind == "ds":
                raise ArchError(f"block {token!r} ({where}): ds is only the first, fixed stage")
            want_stride = stride if not ops else 1
            if opts["s"] != want_stride:
                raise ArchError(f"block {token!r} ({where}): stride s{opts['s']} given, the "
                                f"space's layout needs s{want_stride} here")
            if opts["c"] != channels:
                raise ArchError(f"block {token!r} ({where}): channels c{opts['c']} given, the "
                                f"space has c{channels} in this stage")
            if opts["r"] < 1:
                raise ArchError(f"block {token!r} ({where}): repeat must be at least 1")
            if kind == "ir":
                op = Op("ir", opts["k"], opts["e"])
            elif kind == "res":
                op = Op("res", opts["k"])
            else:
                op = Op("conv", opts["k"])
            if op not in space.ops:
                raise ArchError(f"block {token!r} ({where}): {op.paper} is not an op of space "
                                f"{space.name!r}; its ops: "
                                f"{', '.join(o.paper for o in space.ops if o != SKIP)}")
            ops.extend([op] * opts["r"])
        stages.append(tuple(ops))
    return _checked(Arch(tuple(stages)), space)


def _checked(arch: Arch, space: Space) -> Arch:
    arch_to_path(arch, space)  # raises on depth or op errors
    return arch


def detect_form(text: str) -> str:
    stripped = text.strip()
    if re.match(r"^\[\s*\[\s*-?\d", stripped):
        return "path"
    if re.search(r"(^|[\s|\[,'\"])(ds|ir|res|cn)_", stripped):
        return "blocks"
    return "paper"


def parse(text, space: Space, form: str | None = None) -> Arch:
    """Parses any of the three text forms (detected unless `form` is given) into an `Arch`."""
    if isinstance(text, Arch):
        return _checked(text, space)
    if not isinstance(text, str) or not text.strip():
        raise ArchError(f"an architecture string is expected, got {text!r}")
    form = form or detect_form(text)
    parser = {"path": parse_path, "paper": parse_paper, "blocks": parse_blocks}.get(form)
    if parser is None:
        raise ArchError(f"unknown architecture form {form!r}; valid forms: {', '.join(FORMS)}")
    return parser(text, space)

