"""Pixel PCA: the linear baseline every learned encoder must beat, and never below the pixel floor.

Fitting never holds more than a chunk of the images as float (:func:`embeddings.base.float_pixel_chunks`)
and never forms a P x P matrix when P (= H*W*C) is large: up to :data:`EXACT_MAX_PIXELS` pixels the
covariance is accumulated chunk by chunk and diagonalised exactly; above, the top components come
from a randomized SVD (Halko, Martinsson & Tropp 2011: a Gaussian sketch, power iterations,
every product with the centred data taken one chunk at a time), so miniImageNet at 84x84
(P = 21,168, 38,400 images) fits in a few hundred MB.

The default embedding is the projection on the top ``dim`` components, *not* whitened, scaled to
unit length (1-NN by cosine around the training mean). Whitening divides each component by its
standard deviation, which on images lifts the many low-variance, noisy components to the weight
of the few that carry the shape: 5-way 1-shot 1-NN on Omniglot fell to 40% with whitened PCA-64
against 54.7% unwhitened and unit length (BENCHMARKS.md, "Embedding floors").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cactus.core.errors import CactusError
from embeddings.base import Encoder, float_pixel_chunks

#: Largest pixel count P for which the exact P x P covariance is formed (128 MB in float64).
EXACT_MAX_PIXELS = 4096
#: Extra sketch columns and power iterations of the randomized SVD.
OVERSAMPLE, POWER_ITERATIONS = 16, 4


def pixel_mean(images: np.ndarray) -> np.ndarray:
    """The mean image of (N, H, W, C) uint8 as (P,) float64 pixels in [0, 1], accumulated in chunks."""
    total = np.zeros(int(np.prod(images.shape[1:])), dtype=np.float64)
    for _, chunk in float_pixel_chunks(images):
        total += chunk.sum(axis=0, dtype=np.float64)
    return total / len(images)


def exact_pca(images: np.ndarray, mean: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``dim`` components (dim, P) and their variances (dim,), from the P x P covariance built chunk by chunk."""
    size = len(mean)
    scatter = np.zeros((size, size), dtype=np.float64)
    for _, chunk in float_pixel_chunks(images):
        centred = chunk.astype(np.float64) - mean
        scatter += centred.T @ centred
    eigenvalues, eigenvectors = np.linalg.eigh(scatter / max(len(images) - 1, 1))
    top = np.argsort(eigenvalues)[::-1][:dim]
    return eigenvectors[:, top].T, np.maximum(eigenvalues[top], 0.0)


def randomized_pca(images: np.ndarray, mean: np.ndarray, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``dim`` components (dim, P) and variances (dim,) by randomized SVD of the centred (N, P) pixels.

    Memory: the (N, l) and (P, l) sketches (l = dim + OVERSAMPLE) and one float chunk of images;
    each of the 2 + 2 * POWER_ITERATIONS passes reads the images once.
    """
    n, size = len(images), len(mean)
    width = min(dim + OVERSAMPLE, n, size)
    mean32 = mean.astype(np.float32)

    def times(right: np.ndarray) -> np.ndarray:  # centred (N, P) @ (P, l) -> (N, l)
        right32 = right.astype(np.float32)
        out = np.empty((n, right.shape[1]), dtype=np.float64)
        for rows, chunk in float_pixel_chunks(images):
            out[rows] = (chunk - mean32) @ right32
        return out

    def transposed_times(left: np.ndarray) -> np.ndarray:  # centred (N, P)^T @ (N, l) -> (P, l)
        out = np.zeros((size, left.shape[1]), dtype=np.float64)
        for rows, chunk in float_pixel_chunks(images):
            out += (chunk - mean32).T @ left[rows].astype(np.float32)
        return out

    sketch = np.random.default_rng(seed).standard_normal((size, width))
    basis, _ = np.linalg.qr(times(sketch))
    for _ in range(POWER_ITERATIONS):
        right, _ = np.linalg.qr(transposed_times(basis))
        basis, _ = np.linalg.qr(times(right))
    small = transposed_times(basis).T  # (l, P) = basis^T @ centred
    _, singular, right_vectors = np.linalg.svd(small, full_matrices=False)
    return right_vectors[:dim], singular[:dim] ** 2 / max(n - 1, 1)


@dataclass(eq=False, kw_only=True)
class PCAEncoder(Encoder):
    """Project flattened pixels on the top ``dim`` principal components.

    ``whiten``: divide each component by its standard deviation (off by default, see the module
    docstring); ``normalize``: scale each embedding to unit length (cosine 1-NN). ``seed`` draws the
    randomized SVD's sketch for images of more than EXACT_MAX_PIXELS pixels (exact PCA below).
    Learned: mean_ (P,), components_ (dim, P), scale_ (dim,) where P = H*W*C.
    """

    name = "pca"
    positive_params = ("dim",)

    dim: int = 64
    seed: int = 0
    whiten: bool = False
    normalize: bool = True

    def fit(self, images: np.ndarray) -> PCAEncoder:
        """Fit on (N, H, W, C) uint8 images, converting them to float one chunk at a time."""
        self.check_params()
        self._remember_input(images)
        size = int(np.prod(images.shape[1:]))
        if self.dim > min(len(images), size):
            raise CactusError(
                f"--dim {self.dim}: PCA can give at most min(images, pixels) = {min(len(images), size)} dimensions"
            )
        mean = pixel_mean(images)
        if size <= EXACT_MAX_PIXELS:
            components, variance = exact_pca(images, mean, self.dim)
        else:
            components, variance = randomized_pca(images, mean, self.dim, self.seed)
        # Fix each component's sign so the same data always gives the same embedding.
        signs = np.sign(components[np.arange(self.dim), np.abs(components).argmax(axis=1)])
        self.components_ = (components * signs[:, None]).astype(np.float32)
        scale = 1.0 / np.sqrt(np.maximum(variance, 1e-12)) if self.whiten else np.ones(self.dim)
        self.scale_ = scale.astype(np.float32)
        self.mean_ = mean.astype(np.float32)
        return self

    def transform(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, C) uint8 -> (N, dim) float32, in chunks; unit rows when ``normalize``."""
        self._check_input(images)
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for rows, chunk in float_pixel_chunks(images):
            out[rows] = ((chunk - self.mean_) @ self.components_.T) * self.scale_
        if self.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

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
