"""Writing one HDF5 file so that a full disk is an ordinary error, never a crash at exit.

When HDF5 writes a file by name and the disk fills up, the failed write leaves the library holding
dirty metadata it can no longer flush: closing the file fails, h5py retries when the object is
collected, and the interpreter can segfault at exit (cactus issue 18: exit 139 on a 12 KB tmpfs).
Here HDF5 writes through a Python file object instead (h5py's ``fileobj`` driver, same speed for
large datasets). That object never raises (h5py's driver does not clear a Python exception raised
inside it, and crashes on the next call): it records the first ``OSError`` and from then on is a
sink that accepts and discards everything, so HDF5 finishes and closes the file and drops its
state. :func:`write_h5` then raises the recorded error (``errno`` intact: a full disk stays
ENOSPC), and the caller (``atomic_path``) removes the temporary file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


class _FailSafeFile:
    """A binary file for h5py's ``fileobj`` driver that becomes a bottomless sink after its first OSError."""

    def __init__(self, path: Path) -> None:
        self._handle = open(path, "w+b")  # noqa: SIM115 - closed by close()
        self.error: OSError | None = None
        self._position = 0  # where the sink pretends to be, once it is one

    def _guard(self, operation: Callable[[], Any], instead: Callable[[], Any]) -> Any:
        """``operation()`` while the file works; ``instead()`` once an OSError was recorded. Never raises one."""
        if self.error is None:
            try:
                return operation()
            except OSError as error:
                self.error = error
                self._position = self._safe_tell()
        return instead()

    def _safe_tell(self) -> int:
        try:
            return self._handle.tell()
        except (OSError, ValueError):
            return 0

    def _zeros_into(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        view[:] = bytes(len(view))
        return len(view)

    def readinto(self, buffer) -> int:
        return self._guard(lambda: self._handle.readinto(buffer), lambda: self._zeros_into(buffer))

    def read(self, size: int = -1) -> bytes:
        return self._guard(lambda: self._handle.read(size), lambda: bytes(max(size, 0)))

    def write(self, data) -> int:
        size = len(memoryview(data).cast("B"))

        def discard() -> int:
            self._position += size
            return size
        return self._guard(lambda: self._handle.write(data), discard)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        def move() -> int:
            self._position = offset if whence == os.SEEK_SET else self._position + offset
            return self._position
        return self._guard(lambda: self._handle.seek(offset, whence), move)

    def tell(self) -> int:
        return self._guard(self._handle.tell, lambda: self._position)

    def truncate(self, size: int | None = None) -> int:
        return self._guard(lambda: self._handle.truncate(size), lambda: self._position if size is None else size)

    def flush(self) -> None:
        self._guard(self._handle.flush, lambda: None)

    def close(self) -> None:
        """Flush and sync what was written (a full disk may only show here), then close the handle."""
        self._guard(self._handle.flush, lambda: None)
        self._guard(lambda: os.fsync(self._handle.fileno()), lambda: None)
        try:
            self._handle.close()
        except OSError as error:
            self.error = self.error or error


def write_h5(path: Path, fill: Callable[[Any], None]) -> int:
    """Create the HDF5 file ``path``, call ``fill(h5py_file)`` and close it; returns the bytes written.

    Any failure (a full disk included) leaves no open HDF5 object behind; an OSError of the file
    itself is raised as that OSError, so its errno names the cause.
    """
    import gc

    import h5py

    sink = _FailSafeFile(path)
    failure: BaseException | None = None
    try:
        h5 = h5py.File(sink, "w")
        try:
            fill(h5)
        except BaseException as error:  # noqa: BLE001 - re-raised below, after the file is closed
            failure = error
        try:
            h5.close()
        except Exception as error:  # noqa: BLE001 - a close after a failed write; the sink's error explains it
            failure = failure or error
        del h5
        if failure is not None or sink.error is not None:
            gc.collect()  # h5py ids still referenced from a traceback's frames are released now, not at exit
    except BaseException as error:  # noqa: BLE001 - opening failed
        failure = failure or error
    finally:
        sink.close()
    if sink.error is not None:
        raise sink.error from None
    if failure is not None:
        raise failure
    return os.path.getsize(path)
