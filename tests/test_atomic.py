"""cream_tf.atomic: a file or folder is replaced whole or not at all, and nothing is left behind."""
import json
import os

import pytest

from cream_tf import atomic, cli


def test_files_are_replaced_whole(tmp_path):
    target = tmp_path / "sub" / "state.json"
    atomic.write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1} and target.read_text().endswith("\n")
    atomic.write_text(target, "two")
    assert target.read_text() == "two"
    atomic.write_bytes(target, b"\x00three")
    assert target.read_bytes() == b"\x00three"
    assert os.listdir(tmp_path / "sub") == ["state.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "model.keras"
    target.write_text("old")
    with pytest.raises(ZeroDivisionError):
        with atomic.file(target) as tmp:
            assert tmp.endswith("model.keras") and os.path.dirname(tmp) == str(tmp_path)
            open(tmp, "w").write("half")
            1 / 0
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["model.keras"]


def test_folders_are_swapped_whole(tmp_path):
    target = tmp_path / "1"
    for content in ("first", "second"):
        with atomic.folder(target) as tmp:
            os.makedirs(tmp)
            (tmp_path / tmp / "saved_model.pb").write_text(content)
    assert (target / "saved_model.pb").read_text() == "second"
    with pytest.raises(OSError):
        with atomic.folder(target) as tmp:
            os.makedirs(os.path.join(tmp, "variables"))
            raise OSError("disk full")
    assert (target / "saved_model.pb").read_text() == "second"
    assert os.listdir(tmp_path) == ["1"]


def test_copy_and_the_older_names(tmp_path):
    src, dst = tmp_path / "a.weights.h5", tmp_path / "b.weights.h5"
    src.write_bytes(b"weights")
    atomic.copy(src, dst)
    assert dst.read_bytes() == b"weights"
    cli.atomic_write(str(dst), b"bytes", mode="wb")
    assert dst.read_bytes() == b"bytes"
    cli.write_json(str(tmp_path / "c.json"), [1])
    assert cli.read_json(str(tmp_path / "c.json")) == [1]
    assert sorted(os.listdir(tmp_path)) == ["a.weights.h5", "b.weights.h5", "c.json"]
