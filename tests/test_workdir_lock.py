"""One live run per workdir: a second run stops with one line naming the holder; a lock left by a
killed run does not block the next."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import conftest
from conftest import ROOT, run_py
from cream_tf import job
from cream_tf.workdir_lock import LOCK_FILE, WorkdirBusy, WorkdirLock

HOLD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from cream_tf.workdir_lock import WorkdirLock
    with WorkdirLock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(600)
""")


@pytest.fixture
def holder(tmp_path):
    """A live process holding tmp_path/work (killed with SIGKILL at the end)."""
    workdir = tmp_path / "work"
    process = subprocess.Popen([sys.executable, "-c", HOLD.format(root=ROOT), str(workdir)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    yield process, workdir
    process.kill()
    process.wait()


def test_second_holder_is_refused_until_the_first_releases(tmp_path):
    workdir = str(tmp_path / "work")
    with WorkdirLock(workdir):
        with pytest.raises(WorkdirBusy, match=f"in use by process {os.getpid()} on .*started"):
            WorkdirLock(workdir).acquire()
    with WorkdirLock(workdir):  # released on exit
        pass


def test_a_killed_holder_does_not_block_the_next_run(holder):
    process, workdir = holder
    with pytest.raises(WorkdirBusy, match=f"process {process.pid} "):
        WorkdirLock(str(workdir)).acquire()
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert os.listdir(workdir) == [LOCK_FILE]  # the file stays, its lock died with the process
    with WorkdirLock(str(workdir)):
        pass
    # and a workdir holding only a stale lock file is a fresh workdir to run.py
    settings = conftest.settings(workdir=str(workdir))
    assert job.check_workdir(settings) == os.path.join(str(workdir), job.CONFIG_FILE)


def test_run_py_on_a_busy_workdir_is_one_line_and_writes_nothing(holder, tmp_path):
    process, workdir = holder
    result = run_py(["--dataset=synthetic:4", "--resolution=32", "--depth=1", "--width=0.25",
                     f"--workdir={workdir}"], tmp_path, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [l for l in result.stderr.splitlines() if l.startswith("run.py: error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert f"is in use by process {process.pid} on " in lines[0]
    assert "use another --workdir" in lines[0]
    assert os.listdir(workdir) == [LOCK_FILE]
