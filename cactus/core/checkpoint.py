"""Checkpoints and graceful stops for long stages (pre-emptible batch jobs).

A checkpoint is a ``torch.save`` of plain tensors, numbers and lists, read back with
``weights_only=True`` (never unpickling arbitrary objects). SIGTERM / SIGINT set a flag that the
training loop checks after each step; it then saves a checkpoint and raises :class:`Stopped`.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cactus.core.atomic import atomic_path
from cactus.core.errors import CactusError


class Stopped(Exception):
    """Raised after a checkpoint was saved because the job was asked to stop."""

    def __init__(self, signal_name: str, checkpoint: Path, step: int) -> None:
        super().__init__(
            f"stopped by {signal_name} at step {step}; checkpoint saved to {checkpoint}; rerun with --resume"
        )
        self.exit_code = 128 + getattr(signal, signal_name, signal.SIGTERM).value


class StopFlag:
    """Set by SIGTERM / SIGINT while :func:`catch_stop_signals` is active."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


@contextmanager
def catch_stop_signals():
    """Turn SIGTERM / SIGINT into a flag for the duration of a training loop."""
    flag = StopFlag()

    def handler(signum, _frame) -> None:
        flag.signal_name = signal.Signals(signum).name

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def checkpoint_path(out: Path) -> Path:
    """Checkpoints live beside the artifact they will become: ``learner.h5`` -> ``learner.h5.ckpt``."""
    return out.with_name(out.name + ".ckpt")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically write a checkpoint (temporary file, then rename)."""
    import torch

    with atomic_path(path, "checkpoint") as partial:
        torch.save(state, partial)


def load_checkpoint(path: Path, key: str) -> dict[str, Any] | None:
    """The checkpoint's state, or None if there is none; refuses one made for another config."""
    import torch

    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # torch raises many types for a corrupt file
        raise CactusError(f"{path}: unreadable checkpoint ({type(error).__name__}); delete it to start over") from None
    if not isinstance(state, dict) or state.get("key") != key:
        raise CactusError(f"{path}: checkpoint belongs to a different configuration; delete it or drop --resume")
    return state
