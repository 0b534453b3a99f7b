"""The whole job through run.py: small.flags end to end, each mode on its own, and reruns.

The end-to-end cases are slow (every search traces the supernet step: minutes on 2 cores); run
them alone with
`python -m pytest -m slow tests/test_pipeline.py`.
"""
import json
import os

import pytest

import conftest
from conftest import ROOT, run_py as run


def read(path):
    with open(path) as f:
        return json.load(f)


def versions(folder):
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit())


@pytest.mark.slow
def test_small_flags_end_to_end_with_fewer_steps(tmp_path, record_property):
    workdir = tmp_path / "small"
    # --deterministic: the accuracy checked below is the same on every run
    args = ["--flags=configs/small.flags", f"--workdir={workdir}", "--search_epochs=2",
            "--warmup_epochs=1", "--steps_per_epoch=10", "--meta_interval=5",
            "--retrain_epochs=4", "--deterministic"]
    result = run(args, ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    out = result.stdout
    summary = out[out.index("== summary"):]
    for label in ("architecture :", "MACs / params:", "accuracy     :", "keras file   :",
                  "SavedModel   :", "TFLite       :"):
        assert label in summary, summary

    s = read(workdir / "summary.json")
    record_property("test_accuracy", s["test_accuracy"])
    assert s["test_accuracy"] > 0.3, s  # 10 classes: chance is 0.1
    assert 0 < s["macs"] <= 1_200_000  # small.flags: --flops_max=1.2 (M MACs)
    board = read(workdir / "search" / "board.json")
    assert board and all("paper" in entry for entry in board)
    logs = workdir / "search" / "logs"
    assert any("tfevents" in name for _, _, names in os.walk(logs) for name in names)
    export = workdir / "export"
    assert (export / "cream_digits.keras").is_file()
    assert (export / "cream_digits" / "1" / "saved_model.pb").is_file()
    assert (export / "cream_digits.tflite").is_file()
    assert (export / "cream_digits_int8.tflite").is_file()
    pytest.importorskip("matplotlib")
    assert (workdir / "architecture.png").stat().st_size > 1000
    assert (workdir / "board.png").stat().st_size > 1000

    # The same command again: every phase is found finished, nothing is redone or re-exported.
    before = {p: os.stat(p).st_mtime_ns for p in (export / "cream_digits.keras",
                                                   workdir / "retrain" / "final.keras")}
    again = run(args, ROOT)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "== summary" in again.stdout and "== retrain" not in again.stdout
    assert {p: os.stat(p).st_mtime_ns for p in before} == before
    assert versions(export / "cream_digits") == [1]


TINY = ["--dataset=digits", "--resolution=32", "--depth=1", "--width=0.25", "--batch_size=16",
        "--search_epochs=2", "--warmup_epochs=1", "--steps_per_epoch=6", "--board_size=3",
        "--board_images=2", "--meta_interval=3", "--select_bn_batches=2", "--retrain_epochs=1",
        "--retrain_warmup_epochs=0",
        "--retrain_batch_size=32", "--strategy=default", "--seed=1", "--model_name=tiny"]

# Kills the process (no clean-up runs) when the int8 TFLite export starts, after the Keras file,
# the SavedModel and the float TFLite file were written.
KILL_AT_INT8 = """
import os, signal
from cream_tf import export as export_lib
_tflite = export_lib.export_tflite
def export_tflite(model, path, quantization=None, **kwargs):
    if quantization == "int8":
        os.kill(os.getpid(), signal.SIGKILL)
    return _tflite(model, path, quantization, **kwargs)
export_lib.export_tflite = export_tflite
"""


@pytest.mark.slow
def test_each_mode_in_turn_and_a_killed_export_resumes(tmp_path):
    workdir = tmp_path / "w"
    common = [f"--workdir={workdir}", *TINY]

    searched = run(["--mode=search", *common], tmp_path)
    assert searched.returncode == 0, searched.stderr[-4000:]
    assert read(workdir / "search" / "board.json")
    assert not (workdir / "select").exists() and not (workdir / "retrain").exists()

    selected = run(["--mode=select", *common], tmp_path)
    assert selected.returncode == 0, selected.stderr[-4000:]
    chosen = read(workdir / "select" / "selection.json")["best"]
    assert chosen["in_range"] and chosen["accuracy"] is not None

    retrained = run(["--mode=retrain", *common], tmp_path)
    assert retrained.returncode == 0, retrained.stderr[-4000:]
    result = read(workdir / "retrain" / "result.json")
    assert (workdir / "retrain" / "final.keras").is_file()
    # a rerun on the finished retraining returns it (result.json has one writer)
    again = run(["--mode=retrain", *common], tmp_path)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "holds a finished run" in again.stdout + again.stderr
    assert read(workdir / "retrain" / "result.json") == result

    export = workdir / "export"
    killed = run(["--mode=export", *common], tmp_path, prelude=KILL_AT_INT8)
    assert killed.returncode == -9, killed.stderr[-4000:]
    assert (export / "tiny.keras").is_file() and (export / "tiny.tflite").is_file()
    assert not (export / "tiny_int8.tflite").exists()
    assert not (export / "export_report.json").exists()
    assert not [n for n in os.listdir(export) if n.endswith(".tmp") or ".work-" in n]
    kept = os.stat(export / "tiny.keras").st_mtime_ns

    # --mode=all picks up every finished phase and completes the interrupted export, keeping
    # what the killed run had already written (no second SavedModel version).
    resumed = run(["--mode=all", *common], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "kept" in resumed.stdout and "== summary" in resumed.stdout
    assert "== retrain" not in resumed.stdout and "== select" not in resumed.stdout
    assert os.stat(export / "tiny.keras").st_mtime_ns == kept
    assert versions(export / "tiny") == [1]
    report = read(export / "export_report.json")
    assert os.path.isfile(report["tflite_int8"])
    assert not (export / ".export_progress.json").exists()
    assert read(workdir / "retrain" / "result.json") == result
    assert read(workdir / "select" / "selection.json")["best"] == chosen

    # Exporting the same model again without --overwrite: its finished export, nothing written.
    listing = {n: os.stat(export / n).st_mtime_ns for n in os.listdir(export)}
    again = run(["--mode=export", *common], tmp_path)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "holds a finished export of this model" in again.stdout
    assert {n: os.stat(export / n).st_mtime_ns for n in os.listdir(export)} == listing

    # A model retrained since (another final.keras): its export would replace these files, so
    # without --overwrite that is a one-line error, exit 2, nothing written.
    os.utime(workdir / "retrain" / "final.keras", ns=(1, 1))
    refused = run(["--mode=export", *common], tmp_path)
    assert refused.returncode == 2, refused.stderr[-4000:]
    errors = [l for l in refused.stderr.splitlines() if l.startswith("run.py: error:")]
    assert len(errors) == 1 and "already exists; pass --overwrite" in errors[0], errors
    assert "overwrite=True" not in errors[0]
    assert {n: os.stat(export / n).st_mtime_ns for n in os.listdir(export)} == listing


@pytest.mark.parametrize("batch", [32, 128, 1024])
def test_retrain_learning_rate_is_per_1024_images_scaled_once(batch):
    config = conftest.settings(retrain_lr=0.064, retrain_batch_size=batch,
                               retrain_epochs=10).retrain_config()
    assert config.lr == 0.064
    assert config.scaled_lr == pytest.approx(0.064 * batch / 1024)
