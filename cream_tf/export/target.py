"""Where an export goes: `ExportError`, and the rule that an export replaces an existing file or
folder only when asked (`overwrite=True`) and, like everything cream_tf writes, whole or not at
all (`cream_tf.atomic`)."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

from cream_tf import atomic

__all__ = ["ExportError", "refuse_existing", "new_target", "disk_size"]


class ExportError(ValueError):
    """An export target or argument is not valid."""


def refuse_existing(target: str, overwrite: bool, hint: str = ""):
    """Raises ExportError when `target` exists and `overwrite` is false."""
    if os.path.lexists(target) and not overwrite:
        raise ExportError(f"{os.path.abspath(target)} already exists; pass overwrite=True to "
                          f"replace it{hint}")


@contextlib.contextmanager
def new_target(target: str, overwrite: bool, is_dir: bool) -> Iterator[str]:
    """Yields a temporary sibling of `target` to write; renames it onto `target` only on success."""
    target = os.path.abspath(os.fspath(target))
    refuse_existing(target, overwrite)
    with (atomic.folder if is_dir else atomic.file)(target) as tmp:
        yield tmp
        if not os.path.lexists(tmp):
            raise ExportError(f"export wrote nothing to {tmp}")


def disk_size(path: str) -> int:
    """Bytes of a file, or of every file under a directory."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(path) for f in files)
