"""Whether a workdir holds the same run: one implementation for every file that records it.

A rerun in a workdir resumes what is there, so it must be the same run: a resumed search with
another seed or batch size would mix two searches in one checkpoint. Each kind of run records the
settings that make it "the same run" (its identity) in one JSON file of its workdir, and every
rerun compares its own identity with the saved one, key by key, before it writes anything:

  search.json      `cream_tf.search` (the search's signature: space, seed, batch, steps, board);
  run_config.json  `cream_tf.job` (run.py's search flags, `Settings.search_identity`);
  tune_config.json `cream_tf.tuner` (the tuning run's settings).

A difference raises `errors.InputError` naming each differing key as the user names it
("--lr (0.5 there, 0.25 now)"), and what to do; `cream_tf.job` turns it into its usage error.

    identity = RunIdentity(workdir, "search.json", {"seed": 1, ...}, noun="search")
    identity.check()   # raises if the file holds another identity; no file: nothing to compare
    identity.write()   # atomically (`atomic.write_json`)

Keys are compared over both identities; a key one side lacks counts as None there, so adding a
key whose default is None (and recording it only when set) keeps older workdirs resuming.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Optional

from cream_tf import atomic
from cream_tf.errors import InputError

__all__ = ["RunIdentity"]


class RunIdentity:
    """The identity of one run and the file that records it.

    Args:
      workdir: the run's workdir, as the user gave it (the message shows it).
      file_name: the JSON file in `workdir` that records the identity.
      identity: the current run's settings (JSON values; compared after a JSON round trip, so
        tuples equal the lists they are saved as).
      noun: what the workdir holds, for the message: "run", "search", "tuning run".
      name: how the user names a key in the message: `str` for a library's arguments,
        `lambda k: "--" + k` for run.py's flags. The workdir is called `name("workdir")`.
      field: the identity is this field of the file (search.json keeps it under "signature",
        next to the whole config); None: the file is the identity.
      remedy: what the user can do, ending the message (default: "use a new <workdir> or the
        same settings").
    """

    def __init__(self, workdir: str, file_name: str, identity: dict, noun: str = "run",
                 name: Callable[[str], str] = str, field: Optional[str] = None,
                 remedy: Optional[str] = None):
        self.workdir = os.fspath(workdir)
        self.path = os.path.join(self.workdir, file_name)
        self.identity = json.loads(json.dumps(identity))
        self.noun, self.name, self.field = noun, name, field
        self.remedy = remedy or f"use a new {name('workdir')} or the same settings"

    def saved(self) -> Optional[dict]:
        """The identity the file records, or None without a file."""
        if not os.path.exists(self.path):
            return None
        with open(self.path) as f:
            saved = json.load(f)
        return saved.get(self.field, {}) if self.field else saved

    def differences(self) -> list:
        """(key, saved value, current value) of each differing key: the current identity's keys
        in its order, then keys only the saved one has. Empty without a file."""
        saved, now = self.saved(), self.identity
        if saved is None:
            return []
        keys = list(now) + sorted(set(saved) - set(now))
        return [(k, saved.get(k), now.get(k)) for k in keys if saved.get(k) != now.get(k)]

    def check(self) -> dict:
        """The current identity; raises `InputError` if the file records another one."""
        diff = self.differences()
        if diff:
            changes = ", ".join(f"{self.name(k)} ({old!r} there, {new!r} now)"
                                for k, old, new in diff)
            raise InputError(f"{self.name('workdir')} {self.workdir!r} holds a {self.noun} with "
                             f"other settings: {changes}; {self.remedy}")
        return self.identity

    def write(self, **extra) -> str:
        """Records the identity (atomically; a file that already holds it is left as it is);
        `extra` are more fields next to it (needs `field`), e.g. search.json's whole config."""
        if extra and not self.field:
            raise ValueError("extra fields need a `field` to keep the identity under")
        value = {self.field: self.identity, **extra} if self.field else self.identity
        atomic.write_json_if_changed(self.path, value, default=str)
        return self.path
