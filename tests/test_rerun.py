"""Every mode reruns cleanly (issue 16, item 2): on a finished workdir a rerun exits 0 and redoes
nothing, and a half-finished one is either refused in one line or finished.

One tiny pipeline (test_pipeline's TINY flags) runs once through run.py, the way a new user's
might: killed during the search, refused by --mode=select (the search has steps left), finished
by --mode=all. Each rerun case then restores that finished workdir (mtimes kept), reruns one mode
on it, and compares the mtime and content of every file with what the finished run left. A mode
may change only the files it rewrites on purpose:

- `all`: the summary (`summary.json`, whose `seconds` is this run's wall time, and the pictures,
  drawn again alike); every phase is found finished.
- `select`: `select/selection.json` (selecting again is what the mode is for; with
  --deterministic it comes out the same).
- `export --overwrite`: the export files and a new SavedModel version; without --overwrite the
  finished export of the same model is returned as it is.
- `search`, `retrain`, `profile`: nothing.

`run.lock` is left out: every run writes its holder there (`workdir_lock`).

Each case is a run.py process on top of one tiny pipeline (about 2 minutes on 2 cores), so all
are slow: `python -m pytest -m slow tests/test_rerun.py`.
"""
import hashlib
import json
import os
import shutil
import signal
import types

import pytest

from conftest import run_py as run
from test_pipeline import TINY

FLAGS = [*TINY, "--deterministic", "--checkpoint_every=4"]  # 12 search steps, 6 of warm-up
LOCK = "run.lock"
# an architecture of TINY's space (depth 1: one searchable layer per stage)
ARCH = "DS | MB6 5x5 | MB4 3x3 | MB4 3x3 | MB4 3x3 | MB4 3x3"

pytestmark = pytest.mark.slow


def snapshot(folder):
    """{relative path: (mtime_ns, sha256)} of every file under `folder` but the lock file."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if rel == LOCK:
                continue
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            out[rel] = (os.stat(path).st_mtime_ns, digest)
    return out


def changed(before, after):
    return {p for p in set(before) | set(after) if before.get(p) != after.get(p)}


def read(path):
    with open(path) as f:
        return json.load(f)


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("run.py: error:")]


# SIGKILL (no clean-up runs) once search step 7 is done: its checkpoint at 4 is the newest.
KILL_AT_STEP_7 = """
import os, signal
from cream_tf import search as search_lib
_search = search_lib.search
def search(*args, callback=None, **kwargs):
    def hook(step, logs):
        callback(step, logs)
        if step + 1 == 7:
            os.kill(os.getpid(), signal.SIGKILL)
    return _search(*args, callback=hook, **kwargs)
search_lib.search = search
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny pipeline through a half-finished state: killed during the search, refused by
    --mode=select, finished by --mode=all. Keeps each run's result and the finished workdir as
    `pristine` (mtimes included)."""
    base = tmp_path_factory.mktemp("rerun")
    path = base / "w"
    common = [f"--workdir={path}", *FLAGS]
    runs = types.SimpleNamespace(base=base, path=path, pristine=base / "pristine")
    runs.killed = run(common, base, prelude=KILL_AT_STEP_7)
    runs.checkpoints = sorted(os.listdir(path / "search" / "checkpoints"))
    runs.before_select = snapshot(path)
    runs.select = run(["--mode=select", *common], base)
    runs.after_select = snapshot(path)
    runs.all = run(["--mode=all", *common], base)
    shutil.copytree(path, runs.pristine)  # copy2: mtimes to the nanosecond
    return runs


@pytest.fixture
def workdir(finished):
    """The finished workdir as the pipeline left it, at the path it was made at."""
    assert finished.all.returncode == 0, finished.all.stderr[-4000:]
    shutil.rmtree(finished.path)
    shutil.copytree(finished.pristine, finished.path)
    assert snapshot(finished.path) == snapshot(finished.pristine)
    return finished.base, finished.path


SUMMARY = {"summary.json", "architecture.png", "board.png"}


def export_files(before, after):
    """What --overwrite replaces: the export's files and a new SavedModel version; version 1
    stays as it was."""
    top = {p for p in before if p.startswith("export/") and p.count("/") == 1}
    return top | {p for p in after if p.startswith("export/tiny/2/")}


# mode flags, exit code, files the mode rewrites (given the listings before and after), and
# what its output says about the finished phases
MODES = {
    "all": (["--mode=all"], 0, lambda b, a: SUMMARY & set(b),
            ["holds a finished search", "== summary"]),
    "search": (["--mode=search"], 0, lambda b, a: set(), ["holds a finished search"]),
    "select": (["--mode=select"], 0, lambda b, a: {"select/selection.json"}, ["== select"]),
    "retrain": (["--mode=retrain"], 0, lambda b, a: set(), ["holds a finished run"]),
    "export": (["--mode=export", "--overwrite"], 0, export_files, ["== export"]),
    "export_again": (["--mode=export"], 0, lambda b, a: set(),
                     ["holds a finished export of this model"]),
    "profile": (["--mode=profile", f"--arch={ARCH}"], 0, lambda b, a: set(), ["MACs"]),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_rerun_on_a_finished_workdir_redoes_nothing(workdir, mode):
    base, path = workdir
    args, code, rewrites, says = MODES[mode]
    before = snapshot(path)
    result = run([f"--workdir={path}", *FLAGS, *args], base)
    assert result.returncode == code, result.stderr[-4000:]
    after = snapshot(path)
    assert changed(before, after) == rewrites(before, after)
    for text in says:
        assert text in result.stdout, result.stdout[-4000:]
    # no finished phase starts again (a finished search is announced, then returned as it is)
    for phase in ("select", "retrain", "export"):
        if f"--mode={phase}" not in args:
            assert f"== {phase}:" not in result.stdout
    if mode == "all":  # the summary again: the same but for this run's wall time
        for picture in SUMMARY & set(before) - {"summary.json"}:
            assert after[picture][1] == before[picture][1], picture
        old = read(base / "pristine" / "summary.json")
        new = read(path / "summary.json")
        assert {**new, "seconds": old["seconds"]} == old
    if mode == "select":  # selected again, alike (--deterministic)
        assert after["select/selection.json"][1] == before["select/selection.json"][1]
    if mode == "export":
        assert sorted(os.listdir(path / "export" / "tiny")) == ["1", "2"]


def test_half_finished_workdir_select_refuses_in_one_line_and_all_finishes(finished):
    path = finished.path
    assert finished.killed.returncode == -signal.SIGKILL, finished.killed.stderr[-4000:]
    assert finished.checkpoints == ["checkpoint", "ckpt-4.data-00000-of-00001", "ckpt-4.index"]

    early = finished.select
    assert early.returncode == 2, early.stderr[-4000:]
    lines = error_lines(early)
    assert len(lines) == 1 and "trained 4 of 12 steps (8 left)" in lines[0], early.stderr
    assert "Traceback" not in early.stderr
    assert finished.after_select == finished.before_select  # nothing written, no select/ folder

    done = finished.all
    assert done.returncode == 0, done.stderr[-4000:]
    assert "holds a finished search" not in done.stdout and "== summary" in done.stdout
    assert "ckpt-12.index" in os.listdir(finished.pristine / "search" / "checkpoints")
    assert read(finished.pristine / "select" / "selection.json")["best"]["path"]
    assert 0.0 <= read(finished.pristine / "retrain" / "result.json")["val_accuracy"] <= 1.0
    report = read(finished.pristine / "export" / "export_report.json")
    assert os.path.isfile(report["tflite_int8"]) and str(path) in report["tflite_int8"]
    # the board's history holds each step once: what the killed run recorded after its
    # checkpoint (steps 5 to 7) was dropped when the search resumed from step 4
    steps = [h["step"] for h in read(finished.pristine / "search" / "board_history.json")]
    assert steps and steps == sorted(set(steps)) and steps[-1] <= 12, steps


def test_tune_rerun_trains_nothing_and_rewrites_nothing_of_ours(workdir):
    """--mode=tune: a rerun of a finished tuning run (its trials spent) trains no trial, and the
    files cream_tf writes (tune_config.json, tune_results.json) stay as they were; keras-tuner's
    own project files under tune/cream_tuner/ are its to rewrite."""
    base, path = workdir
    args = [f"--workdir={path}", *FLAGS, "--mode=tune", "--tune_trials=1", "--tune_epochs=1"]
    first = run(args, base)
    assert first.returncode == 0, first.stderr[-4000:]
    ours = {p: v for p, v in snapshot(path).items() if p.startswith("tune/") and
            not p.startswith("tune/cream_tuner/")}
    assert {"tune/tune_config.json", "tune/tune_results.json"} <= set(ours), sorted(ours)
    trained = read(path / "tune" / "tune_results.json")["trials"]
    again = run(args, base)
    assert again.returncode == 0, again.stderr[-4000:]
    after = {p: v for p, v in snapshot(path).items() if p in ours}
    assert after == ours
    assert read(path / "tune" / "tune_results.json")["trials"] == trained
    assert "Running Trial #1" in first.stdout
    assert "Running Trial" not in again.stdout  # no trial trained
