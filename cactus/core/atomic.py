"""Atomic file writes: a temporary file in the same folder, flushed to disk, then one rename.

Every file cactus writes (artifacts, checkpoints, JSON reports, caches) goes through
:func:`atomic_path`, so a killed job, a full disk or an exception never leaves a half-written file
under the final name, never leaves the temporary file behind, and leaves the previous file intact.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cactus.core.errors import CactusError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def temporary_name(path: Path) -> Path:
    """The hidden name a file is written under before its rename: ``.NAME.PID.tmp`` beside it."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def os_reason(error: OSError) -> str:
    """A short reason for an OSError; a full disk or quota always reads "no space left on device"."""
    if error.errno in NO_SPACE or "no space" in str(error).lower():
        return "no space left on device"
    if error.strerror:
        return error.strerror
    return str(error).splitlines()[0] if str(error) else type(error).__name__


@contextmanager
def atomic_path(path: str | Path, what: str = "file") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it is synced and renamed to ``path``.

    An OSError (no space, permission, read-only file system) becomes one CactusError naming
    ``path``; on any failure the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CactusError(f"{path}: cannot create its folder ({os_reason(error)})") from None
    partial = temporary_name(path)
    try:
        yield partial
        _sync(partial)
        os.replace(partial, path)
    except OSError as error:
        _remove(partial)
        raise CactusError(f"{path}: cannot write {what} ({os_reason(error)})") from None
    except BaseException:
        _remove(partial)
        raise


def write_text(path: str | Path, text: str, what: str = "file") -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path, what) as partial:
        partial.write_text(text, encoding="utf-8")


def _sync(path: Path) -> None:
    """Flush the file's data to the device, so a full disk is seen here and a crash after the rename is safe."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
