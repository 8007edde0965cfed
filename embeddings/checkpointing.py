"""Kept only for the encoders' ``from embeddings.checkpointing import TrainingState`` line.

The fit loop's state lives in :mod:`embeddings.fit_state` (also exported by
:mod:`embeddings.train_utils`), its checkpoints in :mod:`cactus.core.training`. Delete this file
once no encoder imports it.
"""

from embeddings.fit_state import TrainingState

__all__ = ["TrainingState"]
