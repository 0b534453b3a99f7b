"""One live run per workdir: an advisory lock that the operating system drops with its process.

Two `run.py` processes on one workdir would write the same checkpoints and exports. The run's
chief holds an exclusive `flock` on `WORKDIR/run.lock` for as long as it runs; a second run
stops with one line naming the process that holds it. The kernel releases the lock when the
holder exits in any way (kill -9 included), so a lock left by a killed run never blocks the
next one: the file may stay, its lock does not. The other workers of a multi-worker run share
the chief's workdir and take no lock.

`flock` is per host: two runs on different machines writing to one network folder are not
detected, and a workdir on object storage (`gs://...`) takes no lock.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time

__all__ = ["LOCK_FILE", "WorkdirBusy", "WorkdirLock"]

LOCK_FILE = "run.lock"


class WorkdirBusy(Exception):
    """Another live process holds the workdir; the message names it."""


class WorkdirLock:
    """`with WorkdirLock(workdir):` holds the workdir for this process (creating the folder).

    Raises `WorkdirBusy` if another live process holds it. Reentrant use in one process is
    refused too, as a second run would be.
    """

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd = None

    def acquire(self) -> "WorkdirLock":
        if "://" in self.workdir:  # object storage: no file locks
            return self
        os.makedirs(self.workdir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise WorkdirBusy(f"--workdir {self.workdir!r} is in use by {self._holder()}; wait "
                              f"for it to finish or stop it, or use another --workdir") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd
        return self

    def _holder(self) -> str:
        try:
            with open(self.path) as f:
                h = json.loads(f.read() or "{}")
        except (OSError, ValueError):
            h = {}
        if not h.get("pid"):
            return "another process (it has not written its name yet)"
        command = f" ({h['command']})" if h.get("command") else ""
        return (f"process {h['pid']} on {h.get('host', '?')}{command}, started "
                f"{h.get('started', '?')}")

    def release(self):
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays for the next run
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
