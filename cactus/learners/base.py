"""What the meta-training loop and evaluation need from a meta-learner.

A task batch is fixed-shape tensors, class-major as in :mod:`cactus.task_sampling`:
support_x (B, N*K, C, H, W) float, support_y (B, N*K) int64 in [0, N),
query_x (B, N*Q, C, H, W) float, query_y (B, N*Q) int64.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch


class MetaLearner(Protocol):
    """ProtoNets and MAML both follow this; the training loop in :mod:`cactus.learners.train` drives it."""

    def meta_step(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor, query_y: torch.Tensor
    ) -> dict[str, float]:
        """One meta-update on a task batch; returns {"loss": ..., "accuracy": ...} (accuracy in %)."""
        ...

    def predict(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """Learn each task from its support set and label its queries: (B, N*Q) int64."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: weights, optimiser state (torch tensors / plain values)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def weights(self) -> dict[str, np.ndarray]:
        """The learned weights only, as numpy arrays, for the HDF5 artifact."""
        ...

    def load_weights(self, weights: dict[str, np.ndarray]) -> None: ...
