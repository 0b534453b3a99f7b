"""Crash safety shared by the search and retraining: stop signals, checkpoint checks, stops.

SIGINT (Ctrl-C) and SIGTERM do not kill a run mid-step: `catch_signals` turns them into a flag
that the training loops read after each step; the loop then writes a checkpoint and raises
`Interrupted`, which run.py prints as one line and turns into exit code 128 + signal (130, 143).
A second Ctrl-C while the checkpoint is written interrupts at once (KeyboardInterrupt).

`verify_checkpoint` reads every tensor of a checkpoint (TensorFlow checks the CRC32C of each)
before anything is restored or written, so a truncated or corrupted checkpoint gives a clear
error and leaves the workdir as it was.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading

from cream_tf.errors import InputError

__all__ = ["Interrupted", "TooManyBadSteps", "catch_signals", "requested", "verify_checkpoint",
           "checkpoint_error", "signal_name",
           "CheckpointError"]

_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}
_state = {"depth": 0, "signum": None, "previous": {}}


class Interrupted(Exception):
    """A stop signal arrived; the run saved what it could. `exit_code` is 128 + signal number."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + int(signum)


class TooManyBadSteps(RuntimeError):
    """`max_bad_steps` steps in a row had a non-finite loss or gradient."""


class CheckpointError(InputError):
    """A checkpoint cannot be read (truncated, corrupted or of something else)."""


def _handler(signum, frame):
    if _state["signum"] is not None and signum == signal.SIGINT:
        raise KeyboardInterrupt  # second Ctrl-C: the user insists
    _state["signum"] = signum


@contextlib.contextmanager
def catch_signals():
    """SIGINT/SIGTERM set a flag (see `requested`) instead of raising, while inside.

    Nests (the outermost one installs and restores the handlers). Only the main thread may install
    signal handlers; elsewhere this does nothing and signals behave as usual.
    """
    main = threading.current_thread() is threading.main_thread()
    if not main:
        yield
        return
    if _state["depth"] == 0:
        _state["signum"] = None
        _state["previous"] = {s: signal.signal(s, _handler) for s in _NAMES}
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        if _state["depth"] == 0:
            for s, old in _state["previous"].items():
                signal.signal(s, old)
            _state["previous"] = {}


def requested():
    """The stop signal received inside `catch_signals` (an int), or None."""
    return _state["signum"]


def signal_name(signum: int) -> str:
    return _NAMES.get(signum, f"signal {signum}")


def verify_checkpoint(prefix: str):
    """Reads every tensor of the TF checkpoint `prefix`; raises CheckpointError naming the file.

    TensorFlow stores a CRC32C per tensor and per index block, so flipped or missing bytes in the
    .data-* or .index files surface here, before any state is restored or any file written.
    """
    import tensorflow as tf

    folder = os.path.dirname(prefix)
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name, dtype in sorted(reader.get_variable_to_dtype_map().items()):
            if dtype != tf.variant:  # input-pipeline states: checked when restored
                reader.get_tensor(name)
    except Exception as e:  # noqa: BLE001  (any failure to read it is a damaged checkpoint)
        raise checkpoint_error(prefix, e) from None


def checkpoint_error(prefix: str, error) -> CheckpointError:
    """The error for a checkpoint that cannot be read or restored: names the files, says what to do."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    folder = os.path.dirname(prefix)
    return CheckpointError(
        f"checkpoint {prefix} (files {prefix}.index and {prefix}.data-*) cannot be read: "
        f"{first}. It is truncated or corrupted (or of another search); delete those files and "
        f"the matching line of {os.path.join(folder, 'checkpoint')} to resume from an older "
        f"checkpoint, or use a new workdir")
