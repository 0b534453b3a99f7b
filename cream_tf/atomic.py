"""Writing a file or a folder whole or not at all.

Everything cream_tf leaves on disk (JSON state, checkpoints, figures, exports) goes through here,
so a crash or a full disk never leaves a half-written file where a reader (a resumed run, TF
Serving, a user) would take it for a complete one. The recipe: write under a temporary name in
the target's folder (same file system, so the rename is atomic), fsync, then `os.replace`. The
temporary name starts with '.tmp-' and ends with the target's own name, so writers that check the
suffix ('.keras', '.weights.h5') accept it and leftovers are easy to recognise.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from typing import Iterator

__all__ = ["file", "folder", "write_text", "write_bytes", "write_json", "write_json_if_changed",
           "copy"]


def _temporary_sibling(path: str) -> str:
    parent, base = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    return os.path.join(parent, f".tmp-{uuid.uuid4().hex[:8]}-{base}")


def _remove(path: str):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


@contextlib.contextmanager
def file(path) -> Iterator[str]:
    """Yields a temporary path next to `path` for the caller to write; on success it is synced
    and renamed onto `path` (replacing it), on any error removed."""
    path = os.path.abspath(os.fspath(path))
    tmp = _temporary_sibling(path)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        _remove(tmp)


@contextlib.contextmanager
def folder(path) -> Iterator[str]:
    """Like `file`, for a folder: an existing folder at `path` is swapped out only after the new
    one is complete (renamed aside, the new one renamed in, then the old one deleted)."""
    path = os.path.abspath(os.fspath(path))
    tmp = _temporary_sibling(path)
    try:
        yield tmp
        if os.path.lexists(path):
            old = _temporary_sibling(path)
            os.rename(path, old)
            os.rename(tmp, path)
            _remove(old)
        else:
            os.rename(tmp, path)
    finally:
        _remove(tmp)


def write_bytes(path, data: bytes) -> str:
    with file(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return os.fspath(path)


def write_text(path, text: str) -> str:
    with file(path) as tmp, open(tmp, "w") as f:
        f.write(text)
    return os.fspath(path)


def write_json(path, value, indent=2, **dumps_kwargs) -> str:
    """`value` as JSON (with a final newline); `dumps_kwargs` go to `json.dumps`."""
    return write_text(path, json.dumps(value, indent=indent, **dumps_kwargs) + "\n")


def write_json_if_changed(path, value, indent=2, **dumps_kwargs) -> bool:
    """`write_json` unless `path` already holds `value` (compared as JSON values), so a rerun
    that changes nothing leaves the file, its mtime included, as it was. Returns whether it
    wrote."""
    try:
        with open(path) as f:
            if json.load(f) == json.loads(json.dumps(value, **dumps_kwargs)):
                return False
    except (OSError, ValueError):
        pass
    write_json(path, value, indent=indent, **dumps_kwargs)
    return True


def copy(src, dst) -> str:
    """Copies the file `src` onto `dst`, atomically for readers of `dst`."""
    with file(dst) as tmp:
        shutil.copyfile(src, tmp)
    return os.fspath(dst)
