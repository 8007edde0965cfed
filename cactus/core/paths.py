"""What cactus accepts as an input file: an existing regular file, checked before it is opened or hashed.

A device (``/dev/zero``), a FIFO or a folder given where a file is expected would make a reader
hang forever or fail deep inside a library; each gets one line naming it instead.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cactus.core.errors import CactusError

KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
         (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str:
    """'a folder', 'a FIFO (named pipe)', ... for a ``st_mode`` that is not a regular file's."""
    return next((name for test, name in KINDS if test(mode)), "not a regular file")


def require_regular_file(path: str | Path, what: str = "file", name: str | None = None) -> Path:
    """``path`` if it is an existing regular file (symbolic links followed); else CactusError.

    ``what`` names the file in "no such ..." ("artifact", "file"); ``name`` replaces the path at the
    start of the message (``--path x.npy``).
    """
    path = Path(path)
    label = name or str(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise CactusError(f"{label}: no such {what}") from None
    except OSError as error:  # a symbolic-link loop, a path through a file, no permission
        raise CactusError(f"{label}: cannot read {what} ({error.strerror or error})") from None
    if not stat.S_ISREG(mode):
        raise CactusError(f"{label}: is {file_kind(mode)}, not a regular file")
    return path
