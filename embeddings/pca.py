"""Pixel PCA with whitening: the baseline every learned encoder must beat."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cactus.core.errors import CactusError
from embeddings.base import Encoder, as_float_pixels


@dataclass(eq=False, kw_only=True)
class PCAEncoder(Encoder):
    """Project flattened pixels on the top ``dim`` principal components, whitened when ``whiten``.

    ``seed`` is accepted like every encoder's, but PCA draws nothing at random.
    Learned: mean_ (P,), components_ (dim, P), scale_ (dim,) where P = H*W*C.
    """

    name = "pca"
    positive_params = ("dim",)

    dim: int = 64
    seed: int = 0
    whiten: bool = True

    def fit(self, images: np.ndarray) -> PCAEncoder:
        self.check_params()
        self._remember_input(images)
        pixels = as_float_pixels(images).astype(np.float64)
        if self.dim > min(pixels.shape):
            raise CactusError(
                f"--dim {self.dim}: PCA can give at most min(images, pixels) = {min(pixels.shape)} dimensions"
            )
        self.mean_ = pixels.mean(axis=0)
        centred = pixels - self.mean_
        covariance = centred.T @ centred / max(len(pixels) - 1, 1)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        top = np.argsort(eigenvalues)[::-1][: self.dim]
        components = eigenvectors[:, top].T
        # Fix each component's sign so the same data always gives the same embedding.
        signs = np.sign(components[np.arange(self.dim), np.abs(components).argmax(axis=1)])
        self.components_ = (components * signs[:, None]).astype(np.float32)
        variance = np.maximum(eigenvalues[top], 1e-12)
        self.scale_ = (1.0 / np.sqrt(variance) if self.whiten else np.ones(self.dim)).astype(np.float32)
        self.mean_ = self.mean_.astype(np.float32)
        return self

    def transform(self, images: np.ndarray) -> np.ndarray:
        self._check_input(images)
        projected = (as_float_pixels(images) - self.mean_) @ self.components_.T
        return (projected * self.scale_).astype(np.float32)

    def get_state(self) -> dict[str, np.ndarray]:
        return {
            "mean": self.mean_,
            "components": self.components_,
            "scale": self.scale_,
            "input_shape": np.asarray(self.input_shape_, dtype=np.int64),
        }

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self.mean_ = np.asarray(state["mean"], dtype=np.float32)
        self.components_ = np.asarray(state["components"], dtype=np.float32)
        self.scale_ = np.asarray(state["scale"], dtype=np.float32)
        self._restore_input_shape(state)
        if self.components_.shape != (self.dim, self.mean_.shape[0]) or self.scale_.shape != (self.dim,):
            raise CactusError("pca encoder: stored weights do not match --dim")
