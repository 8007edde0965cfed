"""Checkpoints, resume and the process world for the neural encoders' fit loop (``train_epochs``).

``cactus embed`` opens a :class:`FitSession` around ``encoder.fit`` (:func:`fit_session`); the
encoders know nothing of it except that they hand :func:`embeddings.train_utils.train_epochs` a
:class:`TrainingState`: what must be saved to continue (modules, optimisers, schedulers, the
augmentation generator, per-epoch extras). The loop then saves a checkpoint every
``every_s`` seconds and on SIGTERM / SIGINT (then raises :class:`cactus.core.checkpoint.Stopped`),
and on ``--resume`` restores the position (epoch, step), the weights, every random-number state
and the losses so far, so the run ends where an uninterrupted one would.

A checkpoint holds plain tensors, numbers, lists and dicts only (it is read with
``weights_only=True``); the NumPy batch-order generator's state is a dict of Python ints.
Outside a session (the library used directly) nothing is saved and signals are left alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cactus.core import log
from cactus.core.distributed import World
from cactus.core.errors import CactusError


@dataclass(frozen=True)
class FitSession:
    """Where and how a fit checkpoints: ``checkpoint`` None means never.

    ``key`` is the artifact key (a checkpoint of another configuration is refused); ``world`` the
    ranks of a distributed run (only rank 0 saves); ``stop_after_steps`` is a testing aid that
    behaves as if SIGTERM arrived once that many steps (counted from the start of training) ran.
    """

    checkpoint: Path | None = None
    key: str = ""
    resume: bool = False
    every_s: float = 300.0
    world: World = field(default_factory=World)
    stop_after_steps: int | None = None


_SESSION: ContextVar[FitSession | None] = ContextVar("embeddings_fit_session", default=None)


@contextmanager
def fit_session(session: FitSession) -> Iterator[FitSession]:
    """Make ``session`` the one :func:`current_session` returns while the block runs."""
    token = _SESSION.set(session)
    try:
        yield session
    finally:
        _SESSION.reset(token)


def current_session() -> FitSession:
    """The session opened by :func:`fit_session`, or the default one (no checkpoints, one process)."""
    return _SESSION.get() or FitSession()


@dataclass
class TrainingState:
    """What an encoder's fit must save to continue exactly.

    ``objects``: name -> anything with ``state_dict()`` / ``load_state_dict()`` that exists for the
    whole fit (modules, optimisers, LR schedulers). ``generator``: the torch.Generator of the
    augmentations / noise. ``extra()`` returns plain data (lists of floats, tensors) the encoder
    keeps between steps or epochs, and ``load_extra(saved)`` puts it back (it may rebuild per-epoch
    objects such as DeepCluster's classifier head).
    """

    objects: dict[str, Any]
    generator: Any = None
    extra: Callable[[], dict[str, Any]] | None = None
    load_extra: Callable[[dict[str, Any]], None] | None = None

    def save(self) -> dict[str, Any]:
        """The encoder's part of a checkpoint."""
        saved: dict[str, Any] = {"objects": {name: obj.state_dict() for name, obj in self.objects.items()}}
        if self.generator is not None:
            saved["generator"] = self.generator.get_state()
        saved["extra"] = self.extra() if self.extra is not None else {}
        return saved

    def load(self, saved: dict[str, Any]) -> None:
        """Restore what :meth:`save` returned (torch's global RNG is restored after this, by the caller)."""
        for name, obj in self.objects.items():
            obj.load_state_dict(saved["objects"][name])
        if self.generator is not None:
            self.generator.set_state(saved["generator"])
        if self.load_extra is not None:
            self.load_extra(saved["extra"])


@dataclass
class Position:
    """Where a fit stands: ``step`` steps of epoch ``epoch`` done; ``losses`` the finished epochs' means.

    ``total`` / ``count``: the running loss sum and step count of the current epoch; ``epoch_rng``:
    the batch-order generator's state when the current epoch's order was drawn (None at the start).
    """

    epoch: int = 0
    step: int = 0
    losses: list[float] = field(default_factory=list)
    total: float = 0.0
    count: int = 0
    epoch_rng: dict[str, Any] | None = None


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """The NumPy generator's state as plain Python values (ints, strings, nested dicts)."""
    return _plain(rng.bit_generator.state)


def _plain(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays turned into Python numbers and lists (tensors kept)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def torch_rng_states() -> dict[str, Any]:
    """torch's global CPU RNG state (and the CUDA ones when CUDA is in use): ByteTensors."""
    import torch

    states: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_torch_rng_states(states: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save(session: FitSession, position: Position, state: TrainingState) -> None:
    """Write the checkpoint of ``position`` (rank 0 only; a no-op without a checkpoint path)."""
    from cactus.core.checkpoint import save_checkpoint

    if session.checkpoint is None or not session.world.is_main:
        return
    save_checkpoint(session.checkpoint, {
        "key": session.key, "epoch": position.epoch, "step": position.step, "losses": list(position.losses),
        "total": float(position.total), "count": int(position.count), "epoch_rng": position.epoch_rng,
        "torch_rng": torch_rng_states(), "encoder": _plain(state.save()),  # e.g. a NumPy lr in a schedule
    })


def restore(session: FitSession, state: TrainingState) -> Position | None:
    """With ``--resume``: load the checkpoint into ``state`` and torch's RNG; its Position (None if none).

    Every rank of a distributed run reads the file, so it must be on a file system they share.
    """
    from cactus.core import distributed
    from cactus.core.checkpoint import load_checkpoint

    if not session.resume or session.checkpoint is None:
        return None
    saved = load_checkpoint(session.checkpoint, session.key)
    world = session.world
    if world.distributed and distributed.broadcast_flag(saved is not None) != (saved is not None):
        raise CactusError(f"{session.checkpoint}: rank {world.rank} does not see rank 0's checkpoint; "
                          "--resume needs a file system shared by the ranks")
    if saved is None:
        return None
    try:
        state.load(saved["encoder"])
        set_torch_rng_states(saved["torch_rng"])
        log.info(f"embed: resuming from {session.checkpoint} at epoch {int(saved['epoch']) + 1}, "
                 f"step {int(saved['step'])}")
        return Position(int(saved["epoch"]), int(saved["step"]), [float(x) for x in saved["losses"]],
                        float(saved["total"]), int(saved["count"]), saved["epoch_rng"])
    except (KeyError, RuntimeError, ValueError, TypeError) as error:
        raise CactusError(f"{session.checkpoint}: checkpoint does not fit this encoder ({type(error).__name__}); "
                          "delete it to start over") from None
