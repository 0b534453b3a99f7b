"""The flag files in configs/: known flags only, valid spaces, reachable FLOPs ranges."""
import glob
import os
import sys

import pytest

from cream_tf import flops
from cream_tf.space import Space

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.flags")))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import run  # noqa: E402  (run.py defines the flags; the configs may use only those)

FLAGS = set(run.OUR_FLAGS)
NUM_CLASSES = {"digits": 10, "tfds:cifar10": 10, "tfds:imagenet2012": 1000}


def read_flags(path):
    flags, lines = {}, open(path).read().splitlines()
    assert lines[0].startswith("# ") and "Time:" in "".join(lines), \
        f"{path} must begin with comments saying what it is for and how long it takes"
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        assert line.startswith("--") and "=" in line, f"bad line {line!r} in {path}"
        name, value = line[2:].split("=", 1)
        assert name in FLAGS, f"unknown flag --{name} in {path}"
        assert name not in flags, f"--{name} twice in {path}"
        flags[name] = value
    return flags


def test_all_configs_present():
    names = {os.path.basename(p) for p in CONFIGS}
    assert names == {"small.flags", "cifar10.flags", "imagenet_table1.flags",
                     "imagenet_table2.flags", "imagenet_table3.flags", "tiny.flags"}


def space_of(f):
    return Space(f["space"], f["layout"], depth=int(f["depth"]), resolution=int(f["resolution"]),
                 width=float(f["width"]), num_classes=NUM_CLASSES[f["dataset"]])


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_is_valid(path):
    f = read_flags(path)
    assert f["teacher"] in ("meta", "top1") and f["prior"] in ("uniform", "release")
    space_of(f)
    assert 0 <= float(f["ema_decay"]) < 1 and 0 <= float(f["retrain_dropout"]) < 1


# Cost tables of 224x224 spaces take ~10 s each on the shared CPU: those run with -m slow.
@pytest.mark.parametrize("path", [
    pytest.param(p, marks=[pytest.mark.slow] if int(read_flags(p)["resolution"]) > 64 else [])
    for p in CONFIGS], ids=os.path.basename)
def test_config_flops_range_is_reachable(path):
    f = read_flags(path)
    table = flops.cost_table(space_of(f))
    lo, hi = float(f["flops_min"]) * 1e6, float(f["flops_max"]) * 1e6
    assert lo < hi and lo <= table.max_macs and hi >= table.min_macs, \
        f"{path}: FLOPs range [{lo / 1e6}, {hi / 1e6}]M is outside what the space reaches " \
        f"[{table.min_macs / 1e6:.2f}, {table.max_macs / 1e6:.2f}]M"
