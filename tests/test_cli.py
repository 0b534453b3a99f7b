"""cli: flag files, one-line usage errors, atomic JSON files and strategies by name."""
import json
import os

import pytest

from cream_tf import cli


def test_flags_file_becomes_flagfile_and_later_flags_stay_after_it(tmp_path):
    path = tmp_path / "a.flags"
    path.write_text("--lr=0.5\n")
    assert cli.expand_flags_file(["--mode=search", f"--flags={path}", "--lr=1"]) == [
        "--mode=search", f"--flagfile={path}", "--lr=1"]
    assert cli.expand_flags_file(["--flags", str(path)]) == [f"--flagfile={path}"]


@pytest.mark.parametrize("argv,needle", [
    (["--flags"], "--flags needs a file"),
    (["--flags=nowhere.flags"], "flags file 'nowhere.flags' not found"),
])
def test_bad_flags_files_are_usage_errors(argv, needle):
    with pytest.raises(cli.UsageError, match=needle):
        cli.expand_flags_file(argv)


def test_fail_prints_one_line_and_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        cli.fail("--lr must be > 0")
    assert info.value.code == cli.USAGE_EXIT == 2
    assert capsys.readouterr().err == "run.py: error: --lr must be > 0\n"


def test_json_round_trip_is_atomic(tmp_path):
    path = str(tmp_path / "sub" / "x.json")
    cli.write_json(path, {"a": [1, 2]})
    assert cli.read_json(path) == {"a": [1, 2]}
    assert os.listdir(tmp_path / "sub") == ["x.json"]  # no temp file left


def test_a_failed_write_leaves_the_old_file_whole(tmp_path):
    path = str(tmp_path / "x.json")
    cli.write_json(path, {"old": True})

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        cli.write_json(path, {"new": Unserialisable()})
    assert json.load(open(path)) == {"old": True}
    assert os.listdir(tmp_path) == ["x.json"]


@pytest.mark.parametrize("name,kind", [("default", "_DefaultDistributionStrategy"),
                                       ("auto", "_DefaultDistributionStrategy")])
def test_strategies_by_name(name, kind, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert type(cli.make_strategy(name)).__name__ == kind


def test_multi_worker_without_tf_config_is_a_usage_error(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(cli.UsageError, match="needs TF_CONFIG"):
        cli.make_strategy("multi_worker")
    with pytest.raises(cli.UsageError, match="unknown strategy 'gpu'"):
        cli.make_strategy("gpu")
