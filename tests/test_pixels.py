"""The pixels encoder: the raw-pixel floor, unit rows around the training mean (or plain pixels), in chunks."""

from __future__ import annotations

import numpy as np
import pytest

from cactus.core.errors import CactusError
from embeddings import encoder_class
from embeddings.pixels import PixelsEncoder


def test_registered_as_pixels():
    assert encoder_class("pixels") is PixelsEncoder


def test_unit_rows_around_the_training_mean():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (50, 6, 5, 3), dtype=np.uint8)
    test = rng.integers(0, 256, (7, 6, 5, 3), dtype=np.uint8)
    out = PixelsEncoder().fit(train).transform(test)
    expected = test.reshape(7, -1) / 255.0 - train.reshape(50, -1).mean(axis=0) / 255.0
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert out.shape == (7, 90) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_plain_pixels_without_normalize():
    images = np.random.default_rng(1).integers(0, 256, (9, 4, 4, 1), dtype=np.uint8)
    out = PixelsEncoder(normalize=False).fit(images).transform(images)
    np.testing.assert_allclose(out, images.reshape(9, -1) / 255.0, rtol=1e-6)


def test_chunks_give_the_same_embedding(monkeypatch):
    images = np.random.default_rng(2).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    whole = PixelsEncoder().fit(images).transform(images)
    monkeypatch.setattr("embeddings.base.CHUNK_BYTES", 3 * 192 * 4)  # 3 images a chunk
    np.testing.assert_allclose(PixelsEncoder().fit(images).transform(images), whole, rtol=1e-5, atol=1e-6)


def test_stored_mean_must_match_the_input_shape():
    encoder = PixelsEncoder()
    with pytest.raises(CactusError, match="stored mean does not match"):
        encoder.set_state({"mean": np.zeros(5, np.float32), "input_shape": np.asarray([2, 2, 1])})
    with pytest.raises(CactusError, match="lack 'mean'"):
        encoder.set_state({"input_shape": np.asarray([2, 2, 1])})
