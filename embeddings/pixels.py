"""Raw pixels as the embedding: the floor every encoder's 1-NN is compared with (``--method pixels``).

Nothing is learned but the mean image. With ``normalize`` (the default) each image's pixels are
centred on the training images' mean and scaled to unit length, so 1-NN is cosine similarity
around the mean -- the same centring and metric as the PCA embedding, which then differs from this
floor only by its projection (on 8x8 digits, where PCA-64 keeps every pixel, they are equal). It
is also the strongest of the simple pixel floors measured: Omniglot 5-way 1-shot 53.6% against
43.8% for plain Euclidean pixels and 49.0% for per-image standardised ones (BENCHMARKS.md,
"Embedding floors"). ``normalize=False`` gives plain [0, 1] pixels (Euclidean 1-NN).

The embedding has H*W*C dimensions: at 84x84 RGB that is 21,168 floats (85 KB) per image, so
embed photos at a smaller ``--image-size`` for this floor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cactus.core.errors import CactusError
from embeddings.base import Encoder, float_pixel_chunks


@dataclass(eq=False, kw_only=True)
class PixelsEncoder(Encoder):
    """Flattened pixels, (N, H, W, C) uint8 -> (N, H*W*C) float32.

    ``normalize``: centre on the training mean and scale each row to unit length (else raw pixels
    in [0, 1]); ``seed`` is accepted like every encoder's but nothing is drawn at random.
    Learned: mean_ (P,) float32, the training images' mean pixels (zeros without ``normalize``).
    """

    name = "pixels"

    seed: int = 0
    normalize: bool = True

    def fit(self, images: np.ndarray) -> PixelsEncoder:
        """Record the input shape and, with ``normalize``, the mean of (N, H, W, C) uint8 images (in chunks)."""
        from embeddings.pca import pixel_mean

        self.check_params()
        self._remember_input(images)
        size = int(np.prod(images.shape[1:]))
        self.mean_ = pixel_mean(images).astype(np.float32) if self.normalize else np.zeros(size, np.float32)
        return self

    def transform(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, C) uint8 -> (N, H*W*C) float32; unit rows around the mean when ``normalize``."""
        self._check_input(images)
        out = np.empty((len(images), self.mean_.shape[0]), dtype=np.float32)
        for rows, chunk in float_pixel_chunks(images):
            out[rows] = chunk - self.mean_
        if self.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def get_state(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean_, "input_shape": np.asarray(self.input_shape_, dtype=np.int64)}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        if "mean" not in state:
            raise CactusError("pixels encoder: stored weights lack 'mean'")
        self.mean_ = np.asarray(state["mean"], dtype=np.float32)
        self._restore_input_shape(state)
        if self.mean_.shape != (int(np.prod(self.input_shape_)),):
            raise CactusError("pixels encoder: stored mean does not match the input shape")
