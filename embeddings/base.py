"""The encoder contract every ``cactus embed --method NAME`` follows (scikit-learn style).

``__init__`` only stores hyper-parameters; ``fit(images)`` learns and returns ``self``;
learned attributes end in ``_``; ``get_params()`` is exactly what the cache key hashes;
``get_state()`` / ``from_state()`` turn the learned weights into plain numpy arrays that the
HDF5 artifact stores (never pickles).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from cactus.core.errors import CactusError


class Encoder:
    """Base class: images (N, H, W, C) uint8 in, embeddings (N, D) float32 out."""

    name: ClassVar[str] = "encoder"
    #: Why a multi-process (torchrun) fit could not equal a one-process fit; None: it can
    #: (the encoder splits its batches with :mod:`embeddings.parallel`).
    not_data_parallel: ClassVar[str | None] = "it has no data-parallel training loop"

    def __init__(self, dim: int = 64, seed: int = 0, **hyper: Any) -> None:
        self.dim = dim
        self.seed = seed
        self.hyper = hyper

    # -- the contract -------------------------------------------------------------------
    def fit(self, images: np.ndarray) -> Encoder:
        """Learn from unlabelled images (N, H, W, C) uint8; returns self."""
        raise NotImplementedError

    def transform(self, images: np.ndarray) -> np.ndarray:
        """Embed images (N, H, W, C) uint8 -> (N, D) float32."""
        raise NotImplementedError

    def get_params(self) -> dict[str, Any]:
        """JSON-able hyper-parameters; the embed stage's cache key hashes exactly these."""
        return {"method": self.name, "dim": self.dim, "seed": self.seed, **self.hyper}

    def get_state(self) -> dict[str, np.ndarray]:
        """Learned weights as named numpy arrays, stored as HDF5 datasets."""
        raise NotImplementedError

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`get_state` returned (after ``__init__`` with the same params)."""
        raise NotImplementedError

    # -- shared helpers -----------------------------------------------------------------
    def fit_transform(self, images: np.ndarray) -> np.ndarray:
        return self.fit(images).transform(images)

    def _remember_input(self, images: np.ndarray) -> None:
        check_images(images)
        self.input_shape_ = tuple(int(s) for s in images.shape[1:])

    def _check_input(self, images: np.ndarray) -> None:
        check_images(images)
        expected = getattr(self, "input_shape_", None)
        if expected is None:
            raise CactusError(f"{self.name} encoder: transform called before fit")
        if tuple(images.shape[1:]) != tuple(expected):
            raise CactusError(
                f"{self.name} encoder: images of shape {tuple(images.shape[1:])} (H, W, C) given, "
                f"but it was trained on {tuple(expected)}; pass --image-size to match"
            )


def check_images(images: np.ndarray) -> None:
    """Refuse anything but a non-empty (N, H, W, C) uint8 array."""
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.dtype != np.uint8:
        shape = getattr(images, "shape", None)
        dtype = getattr(images, "dtype", type(images).__name__)
        raise CactusError(f"encoder input: expected (N, H, W, C) uint8 images, got shape {shape} {dtype}")
    if len(images) == 0:
        raise CactusError("encoder input: no images")


def as_float_pixels(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 -> (N, H*W*C) float32 in [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0
