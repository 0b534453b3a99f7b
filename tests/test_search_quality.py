"""benchmarks/search_quality.py: budget accounting, Kendall tau, settings checks and the table.

The fast tests use hand-made numbers and never train; the end-to-end run of the script with
minuscule settings is marked slow.
"""
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "search_quality.py")


def _load():
    spec = importlib.util.spec_from_file_location("search_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines its absl flags once per test session
    return module


sq = _load()


def _defaults():
    return {name: sq.FLAGS[name].default for name in sq._SETTINGS}


# -- budget ---------------------------------------------------------------------------------------

def test_budget_defaults_match_exactly():
    b = sq.budget_plan(5, 100, 32, 5, 1)
    assert b["one_shot_images"] == 5 * 100 * 32 == 16_000
    assert b["search_steps"] == 500
    assert b["tune_steps_per_epoch"] == 100         # 5 trials x 1 epoch x 100 steps x 32
    assert b["tuner_images"] == 16_000
    assert b["tuner_shortfall"] == 0


def test_budget_rounds_the_tuner_down_and_reports_the_shortfall():
    b = sq.budget_plan(1, 10, 32, 3, 1)              # 320 images, 3 trials of 96k images
    assert b["tune_steps_per_epoch"] == 3
    assert b["tuner_images"] == 3 * 3 * 32 == 288
    assert b["tuner_shortfall"] == 32
    b = sq.budget_plan(2, 30, 16, 4, 3)              # 960 images over 12 trial epochs: 5 steps
    assert b["tuner_images"] == 4 * 3 * 5 * 16 == 960
    assert b["tuner_images"] <= b["one_shot_images"]


def test_budget_refuses_a_tuner_without_a_step():
    with pytest.raises(ValueError, match="less than one batch"):
        sq.budget_plan(1, 1, 32, 2, 1)
    with pytest.raises(ValueError, match="tune_trials"):
        sq.budget_plan(1, 10, 32, 0, 1)
    with pytest.raises(ValueError, match="batch_size"):
        sq.budget_plan(1, 10, 32.0, 1, 1)


# -- Kendall tau -----------------------------------------------------------------------------------

def test_kendall_tau_hand_made():
    assert sq.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert sq.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # [3, 1, 2, 5, 4]: 10 pairs, 3 discordant ((3,1), (3,2), (5,4)) -> (7 - 3) / 10
    assert sq.kendall_tau([1, 2, 3, 4, 5], [3, 1, 2, 5, 4]) == pytest.approx(0.4)
    # tau-b with a tie in x: 2 concordant of 3 pairs, 1 tied -> 2 / sqrt(2 * 3)
    assert sq.kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))
    assert math.isnan(sq.kendall_tau([5, 5, 5], [1, 2, 3]))


def test_kendall_tau_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    x = [90.3, 88.9, 88.9, 91.0, 87.5, 90.3, 86.1, 92.2]
    y = [93.1, 92.5, 94.0, 93.1, 91.9, 92.2, 90.0, 95.3]
    assert sq.kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)
    assert sq.kendall_pvalue(x, y) == pytest.approx(stats.kendalltau(x, y).pvalue)


def test_kendall_tau_refuses_bad_input():
    with pytest.raises(ValueError, match="one length"):
        sq.kendall_tau([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2"):
        sq.kendall_tau([1], [1])
    with pytest.raises(ValueError, match="finite"):
        sq.kendall_tau([1, float("nan")], [1, 2])


# -- settings --------------------------------------------------------------------------------------

def test_defaults_are_valid():
    assert sq.validate(_defaults()) == []


@pytest.mark.parametrize("change, message", [
    ({"seeds": 0}, "--seeds must be >= 1"),
    ({"tau_paths": 1}, "--tau_paths must be >= 2"),
    ({"warmup_epochs": 15}, "so that Cream distils"),
    ({"retrain_epochs": 1}, "--retrain_epochs must be >= 2"),
    ({"flops_min": 2.0, "flops_max": 1.0}, "--flops_min/--flops_max"),
    ({"tau_supernets": ["cream"]}, "--tau_supernets must list spos"),
    ({"tau_supernets": ["spos", "top1"]}, "--tau_supernets"),
    ({"tune_trials": 2000}, "less than one batch"),
    ({"batch_size": 2}, "--batch_size must be >= board_images"),
    ({"retrain_lr": 0.0}, "--retrain_lr must be > 0"),
])
def test_validate_names_the_bad_flag(change, message):
    values = {**_defaults(), **change}
    problems = sq.validate(values)
    assert any(message in p for p in problems), problems


def test_script_refuses_bad_flags_before_loading_anything(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, "--seeds=0", f"--workdir={tmp_path}/w"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "--seeds must be >= 1" in proc.stderr
    assert not os.path.exists(tmp_path / "w")
    proc = subprocess.run([sys.executable, SCRIPT, "--prior=flat", f"--workdir={tmp_path}/w"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "one of <release|uniform>" in proc.stderr, proc.stderr[-2000:]
    assert not os.path.exists(tmp_path / "w")


def test_settings_key_is_stable_and_sees_every_setting():
    import dataclasses

    a = {"lr": 2.0, "seed": 0, "steps": 500}
    assert sq.settings_key(a) == sq.settings_key({"steps": 500, "seed": 0, "lr": 2.0})
    assert sq.settings_key(a) != sq.settings_key({**a, "lr": 0.5})
    assert len(sq.settings_key(a)) == 8

    @dataclasses.dataclass
    class Config:
        lr: float = 2.0

    assert sq.settings_key(Config()) == sq.settings_key({"lr": 2.0})
    assert sq.settings_key(Config()) != sq.settings_key(Config(lr=0.5))


# -- the table -------------------------------------------------------------------------------------

def test_table_rows_and_markdown():
    budget = sq.budget_plan(1, 10, 32, 3, 1)
    pick = lambda acc, macs: {"test_accuracy": acc, "macs": macs}  # noqa: E731
    results = {"budget": budget, "picks": {
        "cream": [pick(0.90, 1_000_000), pick(0.94, 1_100_000)],
        "top1": [pick(0.92, 1_050_000)],
        "spos": [],
        "tuner": [pick(0.80, 990_000), pick(0.82, 990_000)],
        "random": [pick(0.70, 1_000_000), pick(0.90, 1_000_000), pick(0.80, 1_000_000)]}}
    rows = {r["method"]: r for r in sq.table_rows(results)}
    assert rows["cream"]["test_mean"] == pytest.approx(92.0)
    assert rows["cream"]["test_std"] == pytest.approx(math.sqrt(8.0))   # sample std of 90, 94
    assert rows["cream"]["macs_mean"] == pytest.approx(1.05)
    assert rows["top1"]["test_std"] == 0.0 and rows["top1"]["n"] == 1
    assert rows["spos"]["n"] == 0
    assert rows["random"]["test_mean"] == pytest.approx(80.0)
    assert rows["random"]["images"] == 0
    assert rows["tuner"]["images"] == budget["tuner_images"] == 288
    assert rows["cream"]["images"] == 320
    text = sq.markdown_table(sq.table_rows(results))
    lines = text.splitlines()
    assert len(lines) == 2 + len(sq.METHODS)
    assert "| (a) Cream (meta teacher) | 92.00 ± 2.83 | 2 | 1.050 (1.000-1.100) | 320 |" in text
    assert "| (c) SPOS (no distillation) | n/a | 0 | n/a | 320 |" in text
    assert "| (d) keras-tuner random search | 81.00 ± 1.41 | 2 | 0.990 | 288 |" in text


def test_mean_std():
    assert sq.mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2.0)), 2)
    assert sq.mean_std([5.0]) == (5.0, 0.0, 1)
    m, s, n = sq.mean_std([None])
    assert math.isnan(m) and math.isnan(s) and n == 0


# -- end to end (slow) -----------------------------------------------------------------------------

@pytest.mark.slow
def test_end_to_end_minuscule(tmp_path):
    out = tmp_path / "quality.json"
    cmd = [sys.executable, SCRIPT, "--seeds=1", "--search_epochs=2", "--steps_per_epoch=6",
           "--meta_interval=3", "--tau_paths=3", "--tune_trials=2", "--retrain_epochs=2",
           "--select_bn_batches=1", f"--workdir={tmp_path}/w", f"--out={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| (a) Cream (meta teacher) |" in proc.stdout
    assert "Kendall tau, spos supernet" in proc.stdout
    data = json.loads(out.read_text())
    assert data["budget"]["one_shot_images"] == 2 * 6 * 32
    lo, hi = data["macs_range"]
    for method in ("cream", "top1", "spos", "tuner"):
        (pick,) = data["picks"][method]
        assert lo <= pick["macs"] <= hi
        assert 0.0 <= pick["test_accuracy"] <= 1.0
    assert len(data["picks"]["random"]) == 3
    (tau,) = data["tau"]
    assert tau["supernet"] == "spos" and len(tau["scores"]) == 3
