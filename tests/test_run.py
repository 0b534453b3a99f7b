"""run.py: bad input is one line on stderr, exit code 2 and nothing written; flag files and their
override order; profile mode."""
import os

import pytest

from conftest import ROOT, run_py


def run(args, cwd, prelude=""):
    return run_py(args, cwd, prelude=prelude, timeout=600)


def _error_line(result):
    lines = [l for l in result.stderr.splitlines() if l.startswith("run.py: error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


@pytest.fixture
def flags_file(tmp_path):
    path = tmp_path / "my.flags"
    path.write_text("# a comment\n--dataset=synthetic:4\n--resolution=32\n--depth=1\n--width=0.25\n"
                    "--batch_size=8\n")
    return path


BAD = [
    (["--no_such_flag=1"], "unknown flag --no_such_flag", "valid flags: "),
    (["--bach_size=3"], "unknown flag --bach_size (did you mean --batch_size", "--workdir"),
    (["--flags=missing.flags"], "flags file 'missing.flags' not found", ""),
    (["--mode=fly"], "mode", "all|search|select|retrain|export|profile|tune|rank"),
    (["--space=resnet"], "space", "mbconv|mbconv_res|mbconv_res_conv"),
    (["--dataset=imagenet"], "unknown dataset spec 'imagenet'", "valid kinds: tfds:NAME"),
    (["--dataset=folder:{tmp}/nothing_here"], "folder", ""),
    (["--batch_size=-4"], "--batch_size must be an int >= 1, got -4", ""),
    (["--lr=0"], "--lr must be > 0, got 0.0", ""),
    (["--search_epochs=0"], "--search_epochs must be an int >= 1", ""),
    (["--flops_min=50", "--flops_max=10"], "--flops_min/--flops_max (50.0M, 10.0M)",
     "min <= max"),
    (["--resolution=16"], "resolution must be an int >= 32", ""),
    (["--retrain_epochs=2"], "--retrain_warmup_epochs must be in [0, --retrain_epochs=2), got 3.0",
     ""),
    (["--retrain_epochs=0", "--mode=retrain"], "--retrain_epochs must be an int >= 1", ""),
    (["--depth=2,2"], "depth must be one int or 5 ints", ""),
    (["--depth=x"], "--depth takes one int or five", ""),
    (["--mode=retrain", "--arch=DS | MB9 3x3"], "--arch: ", "expected"),
    (["--mode=profile"], "--mode=profile needs --arch", "cream_14"),
    (["--mode=profile", "--arch=cream_15"], "--arch: ", ""),
    (["stray"], "unexpected arguments 'stray'", ""),
]


@pytest.mark.parametrize("args,needle,valid", BAD, ids=[" ".join(a) for a, _, _ in BAD])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, args, needle, valid):
    workdir = tmp_path / "work"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = run(["--dataset=synthetic:4", "--resolution=32", f"--workdir={workdir}"] + args,
                 cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    line = _error_line(result)
    assert needle in line and valid in line
    assert not workdir.exists()


def test_folder_without_class_folders(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    result = run([f"--dataset=folder:{tmp_path / 'flat'}", f"--workdir={tmp_path / 'w'}"],
                 cwd=tmp_path)
    assert result.returncode == 2
    assert "flat" in _error_line(result)
    assert not (tmp_path / "w").exists()


def test_foreign_workdir_is_refused(tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "thesis.tex").write_text("precious")
    result = run(["--dataset=synthetic:4", "--resolution=32", f"--workdir={workdir}"], cwd=tmp_path)
    assert result.returncode == 2
    assert "is not empty and holds no cream_tf run" in _error_line(result)
    assert os.listdir(workdir) == ["thesis.tex"]


def test_workdir_of_another_configuration_is_refused(tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "run_config.json").write_text('{"space": "mbconv_res", "seed": 0}')
    result = run(["--dataset=synthetic:4", "--resolution=32", f"--workdir={workdir}",
                  "--mode=search"], cwd=tmp_path)
    assert result.returncode == 2
    line = _error_line(result)
    assert "holds a run with other settings" in line and "--space ('mbconv_res' there" in line
    assert os.listdir(workdir) == ["run_config.json"]


def test_profile_zoo_name(tmp_path):
    result = run(["--mode=profile", "--arch=cream_14"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "13,848,832" in result.stdout and "2,673,096" in result.stdout


def test_flag_file_then_command_line_overrides(tmp_path, flags_file):
    # The file says depth 1 and width 0.25; the command line after it changes the width.
    arch = "DS | MB4 3x3 | MB4 3x3 | MB4 3x3 | MB4 3x3 | MB4 3x3"
    base = ["--mode=profile", f"--arch={arch}", "--num_classes=10"]
    from_file = run([f"--flags={flags_file}"] + base, cwd=tmp_path)
    overridden = run([f"--flags={flags_file}"] + base + ["--width=0.5"], cwd=tmp_path)
    before = run(["--width=0.5", f"--flags={flags_file}"] + base, cwd=tmp_path)
    for r in (from_file, overridden, before):
        assert r.returncode == 0, r.stderr[-3000:]
    total = lambda r: [l for l in r.stdout.splitlines() if l.startswith("total")][0]
    assert total(from_file) != total(overridden)
    assert total(before) == total(from_file)  # the file, read later, wins over an earlier flag


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(os.path.join(ROOT, "configs"))
                                        if f.endswith(".flags")))
def test_shipped_flag_files_parse(name, tmp_path):
    """Every shipped config parses and validates (profile mode: nothing trains)."""
    result = run([f"--flags=configs/{name}", "--mode=profile", "--arch=cream_14",
                  f"--workdir={tmp_path / 'w'}"], cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    text = open(os.path.join(ROOT, "configs", name)).read()
    assert text.startswith("#")  # says what it is for and how long it takes


def test_a_library_bug_keeps_its_traceback(tmp_path):
    """Only bad input becomes a one-line usage error: a ValueError from inside a phase (here
    a stand-in for a bug in the search) ends the run with its traceback, exit code 1."""
    prelude = ("import cream_tf.search as t\n"
               "def broken(*args, **kwargs):\n"
               "    raise ValueError('a bug inside the search')\n"
               "t.search = broken\n")
    result = run(["--dataset=synthetic:4", "--resolution=32", "--depth=1", "--width=0.25",
                  "--mode=search", f"--workdir={tmp_path / 'w'}"], tmp_path, prelude=prelude)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" in result.stderr
    assert "ValueError: a bug inside the search" in result.stderr
    assert "run.py: error:" not in result.stderr


def test_input_found_bad_while_working_is_one_line(tmp_path):
    """A budget no path reaches is found by the search's sampler, not by flag checks: still one
    line and exit code 2 (errors.InputError)."""
    result = run(["--dataset=synthetic:4", "--resolution=32", "--depth=1", "--width=0.25",
                  "--mode=search", "--flops_min=0", "--flops_max=0.001",
                  f"--workdir={tmp_path / 'w'}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    line = _error_line(result)
    assert "has MACs in [0, 1,000]" in line and "its paths reach" in line
    assert "Traceback" not in result.stderr
