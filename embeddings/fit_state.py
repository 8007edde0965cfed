"""What the neural encoders' fit loop keeps and checkpoints, and the checkpoint policy of the running fit.

``cactus embed`` opens :func:`fit_session` with a :class:`cactus.core.training.CheckpointPolicy`
around ``encoder.fit``; the encoders know nothing of it except that they hand
:func:`embeddings.train_utils.train_epochs` a :class:`TrainingState`: what must be saved to
continue (modules, optimisers, schedulers, the augmentation generator, per-epoch extras). The loop
then checkpoints as the policy says (every N seconds and on SIGTERM / SIGINT), and on ``--resume``
restores the :class:`Position` (epoch, step), the weights, every random-number state and the
losses so far, so the run ends where an uninterrupted one would. Outside a session (the library
used directly) nothing is saved and signals are left alone.

A checkpoint holds plain tensors, numbers, lists and dicts only (it is read with
``weights_only=True``); the NumPy batch-order generator's state is a dict of Python ints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cactus.core.training import CheckpointPolicy, set_torch_rng_states, torch_rng_states

_SESSION: ContextVar[CheckpointPolicy | None] = ContextVar("embeddings_fit_session", default=None)


@contextmanager
def fit_session(policy: CheckpointPolicy) -> Iterator[CheckpointPolicy]:
    """Make ``policy`` the one :func:`current_session` returns while the block runs."""
    token = _SESSION.set(policy)
    try:
        yield policy
    finally:
        _SESSION.reset(token)


def current_session() -> CheckpointPolicy:
    """The policy opened by :func:`fit_session`, or the default one (no checkpoints, one process)."""
    return _SESSION.get() or CheckpointPolicy()


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

    def checkpoint(self, state: TrainingState) -> dict[str, Any]:
        """The checkpoint of this position: the loop's counters, torch's RNG and the encoder's state."""
        return {"epoch": self.epoch, "step": self.step, "losses": list(self.losses), "total": float(self.total),
                "count": int(self.count), "epoch_rng": self.epoch_rng, "torch_rng": torch_rng_states(),
                "encoder": _plain(state.save())}  # e.g. a NumPy lr in a schedule

    @classmethod
    def restore(cls, saved: dict[str, Any], state: TrainingState, steps_per_epoch: int) -> Position:
        """Load a checkpoint into ``state`` and torch's RNG; its Position. A step beyond an epoch is a ValueError."""
        position = cls(int(saved["epoch"]), int(saved["step"]), [float(x) for x in saved["losses"]],
                       float(saved["total"]), int(saved["count"]), saved["epoch_rng"])
        if not 0 <= position.step <= steps_per_epoch:
            raise ValueError(f"step {position.step} of an epoch of {steps_per_epoch}")
        if position.epoch_rng is not None:
            np.random.default_rng().bit_generator.state = position.epoch_rng  # a malformed state raises here
        state.load(saved["encoder"])
        set_torch_rng_states(saved["torch_rng"])
        return position


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
