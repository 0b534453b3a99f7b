"""safety: stop signals become a flag read between steps; damaged checkpoints are one clear error."""
import os
import signal
import threading

import pytest
import tensorflow as tf

from cream_tf import safety


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_inside_catch_signals_is_a_flag_not_an_exception(signum):
    before = signal.getsignal(signum)
    with safety.catch_signals():
        assert safety.requested() is None
        os.kill(os.getpid(), signum)
        assert safety.requested() == signum
    assert signal.getsignal(signum) == before  # handlers restored on exit


def test_a_second_ctrl_c_interrupts_at_once():
    with safety.catch_signals():
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_catch_signals_nests_and_only_the_outermost_restores():
    before = signal.getsignal(signal.SIGTERM)
    with safety.catch_signals():
        with safety.catch_signals():
            pass
        assert signal.getsignal(signal.SIGTERM) != before  # still caught by the outer one
        os.kill(os.getpid(), signal.SIGTERM)
        assert safety.requested() == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before


def test_catch_signals_off_the_main_thread_changes_nothing():
    seen = []

    def worker():
        with safety.catch_signals():
            seen.append(signal.getsignal(signal.SIGINT))

    before = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [before]


def test_interrupted_exit_code_is_128_plus_the_signal():
    assert safety.Interrupted(signal.SIGINT, "stopped").exit_code == 130
    assert safety.Interrupted(signal.SIGTERM, "stopped").exit_code == 143
    assert safety.signal_name(signal.SIGTERM) == "SIGTERM"


def _checkpoint(folder):
    checkpoint = tf.train.Checkpoint(v=tf.Variable(tf.range(1000, dtype=tf.float32)))
    return checkpoint.save(os.path.join(folder, "ckpt"))


def test_a_good_checkpoint_verifies(tmp_path):
    safety.verify_checkpoint(_checkpoint(str(tmp_path)))


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_checkpoint_is_one_error_naming_its_files(tmp_path, damage):
    prefix = _checkpoint(str(tmp_path))
    data = [f for f in os.listdir(tmp_path) if ".data-" in f][0]
    path = tmp_path / data
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(safety.CheckpointError) as info:
        safety.verify_checkpoint(prefix)
    message = str(info.value)
    assert f"checkpoint {prefix} (files {prefix}.index and {prefix}.data-*)" in message
    assert "delete those files" in message and "\n" not in message
    assert isinstance(info.value, ValueError)  # an InputError: run.py prints it as one line
