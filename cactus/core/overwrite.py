"""What an output path may replace: never an input of another kind, an unrelated file or a folder.

A stage's ``--out`` may replace nothing, an empty file, an artifact of the same stage (a rerun with
another config), or a damaged cactus artifact (a corrupt artifact is treated as missing). Anything
else (an artifact of another stage, a foreign HDF5 file, ``notes.txt``, a folder, a device) is
refused in one line naming the file, before anything is computed or written. A JSON report may
replace only a JSON report of the same command. Stages call :func:`check_output_path` early (the
cache check does), and :func:`cactus.core.store.write_artifact` calls it again just before writing.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from cactus.core.errors import CactusError
from cactus.core.paths import file_kind

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
REPORT_READ_LIMIT = 16 << 20  # a JSON report larger than this is not one of ours


def occupant(path: Path) -> tuple[str, str | None]:
    """What is at ``path``: (kind, stage) with kind one of "nothing", "empty", "artifact" (stage given),
    "damaged artifact", "HDF5 file", "file" or a special kind ("a folder", "a FIFO (named pipe)", ...)."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return "nothing", None
    except OSError as error:
        raise CactusError(f"{path}: cannot inspect the output path ({error.strerror or error})") from None
    if not stat.S_ISREG(status.st_mode):
        return file_kind(status.st_mode), None
    if status.st_size == 0:
        return "empty", None
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(HDF5_SIGNATURE))
    except OSError as error:
        raise CactusError(f"{path}: cannot inspect the output path ({error.strerror or error})") from None
    if head != HDF5_SIGNATURE:
        return "file", None
    return _hdf5_occupant(path)


def _hdf5_occupant(path: Path) -> tuple[str, str | None]:
    import h5py

    from cactus.core.store import FORMAT

    try:
        with h5py.File(path, "r") as source:
            if source.attrs.get("format") != FORMAT:
                return "HDF5 file", None
            stage = source.attrs.get("stage")
    except (OSError, ValueError, KeyError, TypeError, RuntimeError):
        return "damaged artifact", None  # an HDF5 signature but unreadable: a truncated or scribbled artifact
    if not isinstance(stage, str) or not stage.isprintable():
        return "damaged artifact", None
    return "artifact", stage


def _describe(kind: str, found: str | None) -> str:
    if kind == "artifact":
        return f"is a cactus '{found}' artifact"
    if kind == "HDF5 file":
        return "is an HDF5 file that is not a cactus artifact"
    if kind == "file":
        return "is a file that is not a cactus artifact"
    return f"is {kind}"


def check_output_path(path: str | Path, stage: str) -> None:
    """Refuse (CactusError naming ``path``) to write a ``stage`` artifact over anything but nothing, an
    empty file, a ``stage`` artifact or a damaged artifact."""
    path = Path(path)
    kind, found = occupant(path)
    if kind in ("nothing", "empty", "damaged artifact") or (kind == "artifact" and found == stage):
        return
    raise CactusError(f"{path}: {_describe(kind, found)}; refusing to replace it with a '{stage}' artifact "
                      "(choose another output path, or delete it first)")


def check_report_path(path: str | Path, keys: Iterable[str] = ()) -> None:
    """Refuse to write a JSON report over anything but nothing, an empty file, or a JSON object holding
    every one of ``keys`` (a report of the same command)."""
    path = Path(path)
    kind, found = occupant(path)
    if kind in ("nothing", "empty"):
        return
    if kind == "file" and _is_report(path, tuple(keys)):
        return
    what = _describe(kind, found) if kind != "file" else "is a file that is not a JSON report of this command"
    raise CactusError(f"{path}: {what}; refusing to replace it with a JSON report "
                      "(choose another output path, or delete it first)")


def _is_report(path: Path, keys: tuple[str, ...]) -> bool:
    try:
        if path.stat().st_size > REPORT_READ_LIMIT:
            return False
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(value, dict) and all(key in value for key in keys)
