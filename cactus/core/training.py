"""The one checkpoint / signal layer of every training loop: meta-learners, neural encoders, the update rule.

A trainer states what to save and how one step runs; this module does the rest::

    policy = CheckpointPolicy(checkpoint_path(out), key, resume, every_s, world)
    saved = policy.restore("learner", total, position=lambda s: int(s["iteration"]), apply=load)
    with policy.running(lambda: {"iteration": done, ...}) as loop:   # SIGTERM / SIGINT become a flag
        for i in range(start, total):
            run_step(i)
            loop.after_step(i + 1)  # saves every ``every_s`` s; after a signal: saves, then raises Stopped

A checkpoint is a ``torch.save`` of plain tensors, numbers, strings, lists and dicts, written through
:func:`cactus.core.atomic.atomic_path` and read back with ``weights_only=True`` (never unpickling
arbitrary objects). It carries the configuration's key: one of another configuration is refused, as
is one with missing or malformed fields or a position outside [0, total], each in one line naming the
file. Only rank 0 of a distributed run saves; a stop asked of any rank stops every rank.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cactus.core import log
from cactus.core.atomic import atomic_path
from cactus.core.distributed import World
from cactus.core.errors import CactusError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
    """Raised after a checkpoint was saved because the job was asked to stop; exit with ``exit_code``.

    ``exit_code`` is 128 + the signal's number, as a shell reports a process killed by it: 143 for
    SIGTERM, 130 for SIGINT.
    """

    def __init__(self, signal_name: str, checkpoint: Path, step: int) -> None:
        super().__init__(
            f"stopped by {signal_name} at step {step}; checkpoint saved to {checkpoint}; rerun with --resume"
        )
        self.signal_name = signal_name
        self.checkpoint = checkpoint
        self.step = step
        self.exit_code = 128 + getattr(signal, signal_name, signal.SIGTERM).value


class StopFlag:
    """Set by SIGTERM / SIGINT while :func:`catch_stop_signals` is active."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


@contextmanager
def catch_stop_signals() -> Iterator[StopFlag]:
    """Turn SIGTERM / SIGINT into a flag while the block runs (outside the main thread: a flag never set)."""
    flag = StopFlag()

    def handler(signum, _frame) -> None:
        flag.signal_name = signal.Signals(signum).name

    previous = {}
    for sig in STOP_SIGNALS:
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
    """A checkpoint lives beside the artifact it will become: ``learner.h5`` -> ``learner.h5.ckpt``."""
    out = Path(out)
    return out.with_name(out.name + ".ckpt")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically write a checkpoint (temporary file, then rename; a full disk leaves the old one intact).

    The state is serialised in memory first: torch's own writer reports a full disk as an opaque
    RuntimeError, a plain file write as the OSError that :func:`atomic_path` turns into one line.
    """
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path, "checkpoint") as partial:
        partial.write_bytes(buffer.getbuffer())


def load_checkpoint(path: Path, key: str) -> dict[str, Any] | None:
    """The checkpoint's state, or None if there is none; refuses an unreadable one or one of another config."""
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


def torch_rng_states() -> dict[str, Any]:
    """torch's global CPU RNG state (and the CUDA ones when CUDA is in use), as ByteTensors."""
    import torch

    states: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_torch_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`torch_rng_states` returned."""
    import torch

    torch.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@dataclass(frozen=True)
class CheckpointPolicy:
    """Where and when a training loop checkpoints: every ``every_s`` seconds and on SIGTERM / SIGINT.

    ``path`` None: never save, and leave signals alone (a library call outside a stage). ``key``:
    the configuration's key (a checkpoint of another is refused). ``resume``: :meth:`restore`
    continues from the checkpoint on file. ``world``: the ranks of a distributed run (rank 0 saves).
    """

    path: Path | None = None
    key: str = ""
    resume: bool = False
    every_s: float = 300.0
    world: World = field(default_factory=World)

    def restore(self, what: str, total: int, position: Callable[[dict[str, Any]], int],
                apply: Callable[[dict[str, Any]], None]) -> dict[str, Any] | None:
        """With ``resume`` and a checkpoint on file: check it, ``apply`` it and return it; else None.

        ``position(saved)`` is the number of steps the checkpoint has done, which must lie in
        [0, total]; ``apply(saved)`` loads it into the trainer. A field missing or malformed (a
        KeyError, TypeError, ValueError, IndexError, AttributeError or RuntimeError from either) is
        one CactusError naming the file and the ``what`` it does not fit. Every rank of a distributed
        run reads the file, so it must be on a file system they share.
        """
        from cactus.core import distributed

        if not self.resume or self.path is None:
            return None
        saved = load_checkpoint(self.path, self.key)
        if self.world.distributed and distributed.broadcast_flag(saved is not None) != (saved is not None):
            raise CactusError(f"{self.path}: rank {self.world.rank} does not see rank 0's checkpoint; "
                              "--resume needs a file system shared by the ranks")
        if saved is None:
            log.info(f"{self.path}: no checkpoint to resume from; starting from the beginning")
            return None
        done = self._checked(what, lambda: int(position(saved)))
        if not 0 <= done <= total:
            raise CactusError(f"{self.path}: checkpoint at step {done} is outside [0, {total}]; "
                              "delete it to start over")
        self._checked(what, lambda: apply(saved))
        return saved

    def _checked(self, what: str, read: Callable[[], Any]) -> Any:
        try:
            return read()
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as error:
            raise CactusError(f"{self.path}: checkpoint does not fit this {what} ({_reason(error)}); "
                              "delete it to start over") from None

    @contextmanager
    def running(self, state: Callable[[], dict[str, Any]]) -> Iterator[CheckpointLoop]:
        """Catch SIGTERM / SIGINT while the loop runs; ``state()`` is what a checkpoint holds (the key is added)."""
        loop = CheckpointLoop(self, state)
        if self.path is None:
            yield loop
            return
        with catch_stop_signals() as flag:
            loop.flag = flag
            yield loop


class CheckpointLoop:
    """The per-step half of a :class:`CheckpointPolicy`, handed out by :meth:`CheckpointPolicy.running`."""

    def __init__(self, policy: CheckpointPolicy, state: Callable[[], dict[str, Any]]) -> None:
        self.policy = policy
        self.state = state
        self.flag = StopFlag()
        self.last_save = time.monotonic()

    def after_step(self, done: int) -> None:
        """Call after each step (``done`` steps so far): on a stop asked of any rank save and raise
        :class:`Stopped`; otherwise save when ``every_s`` seconds have passed since the last save."""
        from cactus.core import distributed

        policy = self.policy
        if policy.path is None:
            return
        requested = self.flag.requested
        if distributed.any_rank(requested) if policy.world.distributed else requested:
            self.save()
            raise Stopped(self.flag.signal_name or "SIGTERM", policy.path, done)
        if time.monotonic() - self.last_save >= policy.every_s:
            self.save()

    def save(self) -> None:
        """Write the checkpoint now (rank 0 only)."""
        if self.policy.path is not None and self.policy.world.is_main:
            save_checkpoint(self.policy.path, {**self.state(), "key": self.policy.key})
        self.last_save = time.monotonic()


def _reason(error: Exception) -> str:
    """One short line for what went wrong reading a checkpoint's field."""
    if isinstance(error, KeyError):
        return f"no field {error}"
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:120]}" if lines else type(error).__name__
