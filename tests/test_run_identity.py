"""run_identity: the one check of "the same run in this workdir" (search.json, run_config.json)."""
import json
import os

import pytest

from cream_tf.errors import InputError
from cream_tf.run_identity import RunIdentity


def test_no_file_no_difference_and_the_same_identity_passes(tmp_path):
    identity = RunIdentity(str(tmp_path), "run.json", {"seed": 1, "range": (0, 5)})
    assert identity.saved() is None and identity.check() == {"seed": 1, "range": [0, 5]}
    identity.write()
    assert json.loads((tmp_path / "run.json").read_text()) == {"seed": 1, "range": [0, 5]}
    # a tuple is saved as a list and still the same setting
    assert RunIdentity(str(tmp_path), "run.json", {"seed": 1, "range": (0, 5)}).check()
    assert [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")] == []  # written atomically


def test_each_difference_is_named_as_the_user_names_it(tmp_path):
    RunIdentity(str(tmp_path), "run.json", {"lr": 0.5, "board": 10, "seed": 0}).write()
    now = RunIdentity(str(tmp_path), "run.json", {"lr": 0.25, "board": 3, "seed": 0},
                      name=lambda key: f"--{key}")
    with pytest.raises(InputError) as info:
        now.check()
    assert str(info.value) == (
        f"--workdir {str(tmp_path)!r} holds a run with other settings: --lr (0.5 there, 0.25 "
        f"now), --board (10 there, 3 now); use a new --workdir or the same settings")


def test_a_key_one_side_lacks_counts_as_none(tmp_path):
    RunIdentity(str(tmp_path), "s.json", {"seed": 0}, field="signature").write(config={"a": 1})
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved == {"signature": {"seed": 0}, "config": {"a": 1}}
    # a setting added with default None, recorded only when set: old workdirs still match
    assert RunIdentity(str(tmp_path), "s.json", {"seed": 0, "new": None},
                       field="signature").check()
    later = RunIdentity(str(tmp_path), "s.json", {"seed": 0, "new": "x"}, noun="search",
                        field="signature", remedy="start again elsewhere")
    assert later.differences() == [("new", None, "x")]
    with pytest.raises(InputError, match=r"holds a search with other settings: new \(None there, "
                                         r"'x' now\); start again elsewhere$"):
        later.check()
    gone = RunIdentity(str(tmp_path), "s.json", {}, field="signature")
    assert gone.differences() == [("seed", 0, None)]


def test_extra_fields_need_a_field_for_the_identity(tmp_path):
    with pytest.raises(ValueError, match="extra fields"):
        RunIdentity(str(tmp_path), "run.json", {"seed": 0}).write(config={})
