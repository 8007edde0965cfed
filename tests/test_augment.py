"""Augmentations follow the pixels: photos (colour or grey) get SimCLR's set, line drawings keep theirs, both seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from embeddings.augment import (
    AugmentConfig,
    NaturalAugmentConfig,
    augment,
    config_for,
    stroke_augment,
)

ONLY_GEOMETRY = dict(p_jitter=0.0, p_grey=0.0)
NO_GEOMETRY = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), p_flip=0.0)


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _photos(batch: int = 8, size: int = 24) -> torch.Tensor:
    """(B, 3, size, size) smooth colourful images in [0, 1]."""
    return torch.rand(batch, 3, size, size, generator=_seeded(5)).clamp(0.05, 0.95)


MINIIMAGENET_TEST = Path.home() / ".cache" / "cactus" / "data" / "miniimagenet" / "test"


def _as_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) float in [0, 1] -> (B, H, W, C) uint8."""
    return (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def test_line_drawings_get_the_stroke_set_in_grey_and_in_colour(omniglot):
    from cactus.datasets.dataset import load_dataset

    strokes = omniglot.images[:3000]
    assert isinstance(config_for(strokes), AugmentConfig)
    assert isinstance(config_for(load_dataset("digits").images), AugmentConfig)
    assert isinstance(config_for(np.repeat(strokes, 3, axis=-1)), AugmentConfig)  # drawn in colour: still strokes


def test_photos_get_the_photo_set_in_colour_and_in_grey():
    x = _photos()
    assert isinstance(config_for(_as_uint8(x)), NaturalAugmentConfig)
    grey = x.mean(dim=1, keepdim=True)
    assert isinstance(config_for(_as_uint8(grey)), NaturalAugmentConfig)
    chosen = augment(grey, _seeded(0))  # without a config, the batch's own pixels decide
    assert torch.equal(chosen, augment(grey, _seeded(0), NaturalAugmentConfig()))
    assert not torch.allclose(chosen, stroke_augment(grey, _seeded(0), AugmentConfig()))


@pytest.mark.skipif(not MINIIMAGENET_TEST.is_dir(), reason=f"miniImageNet is not built at {MINIIMAGENET_TEST.parent}")
def test_real_photos_get_the_photo_set_in_colour_and_in_grey():
    from PIL import Image

    files = sorted(MINIIMAGENET_TEST.glob("*/*.jpg"))[::120][:100]
    colour = np.stack([np.asarray(Image.open(f).convert("RGB").resize((28, 28))) for f in files])
    grey = np.stack([np.asarray(Image.open(f).convert("L").resize((28, 28))) for f in files])[..., None]
    assert isinstance(config_for(colour), NaturalAugmentConfig)
    assert isinstance(config_for(grey), NaturalAugmentConfig)


def test_photo_views_keep_shape_and_range_and_follow_the_generator():
    x = _photos()
    a, b, c = augment(x, _seeded(3)), augment(x, _seeded(3)), augment(x, _seeded(4))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    # a fixed number of draws per batch: the next batch's views do not depend on which branches ran
    first, second = _seeded(9), _seeded(9)
    augment(x, first, NaturalAugmentConfig(p_jitter=0.0, p_grey=0.0, p_flip=0.0))
    augment(x, second, NaturalAugmentConfig(p_jitter=1.0, p_grey=1.0, p_flip=1.0))
    assert torch.equal(torch.rand(4, generator=first), torch.rand(4, generator=second))


def test_flip_alone_is_an_exact_horizontal_mirror():
    x = _photos()
    flipped = augment(x, _seeded(0), NaturalAugmentConfig(p_flip=1.0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                                                          **ONLY_GEOMETRY))
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)
    kept = augment(x, _seeded(0), NaturalAugmentConfig(**NO_GEOMETRY, **ONLY_GEOMETRY))
    assert torch.allclose(kept, x, atol=1e-5)


def test_random_resized_crop_zooms_into_a_random_part():
    size = 32
    ramp = torch.linspace(0, 1, size).view(1, 1, 1, size).expand(16, 3, size, size).contiguous()
    config = NaturalAugmentConfig(crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0), p_flip=0.0, **ONLY_GEOMETRY)
    crops = augment(ramp, _seeded(1), config)
    spans = crops.amax(dim=(1, 2, 3)) - crops.amin(dim=(1, 2, 3))
    # a quarter of the area at aspect 1 is half the width: each view sees half of the ramp ...
    assert torch.allclose(spans, torch.full_like(spans, 0.5), atol=0.05)
    # ... at a different place in each image, always inside the picture
    assert crops.mean(dim=(1, 2, 3)).std() > 0.05
    assert crops.min() >= 0 and crops.max() <= 1
    # rows stay rows: a horizontal ramp is still constant down each column
    assert torch.allclose(crops, crops[:, :, :1].expand_as(crops), atol=1e-5)


def test_colour_jitter_changes_each_image_colour_and_nothing_else():
    colour = torch.tensor([0.6, 0.35, 0.2]).view(1, 3, 1, 1)
    flat = colour.expand(32, 3, 8, 8).contiguous()
    jittered = augment(flat, _seeded(2), NaturalAugmentConfig(**NO_GEOMETRY, p_jitter=1.0, p_grey=0.0))
    per_image = jittered.mean(dim=(2, 3))  # (32, 3)
    assert torch.allclose(jittered, per_image[:, :, None, None].expand_as(jittered), atol=1e-5)  # still flat
    assert per_image.std(dim=0).min() > 0.02  # every channel moves across the batch
    chroma = per_image - per_image.mean(dim=1, keepdim=True)
    assert chroma.std(dim=0).max() > 0.02  # hue / saturation change, not only brightness
    assert (per_image - colour.view(1, 3)).abs().amax(dim=1).min() > 1e-3  # every image changed
    still = augment(flat, _seeded(2), NaturalAugmentConfig(**NO_GEOMETRY, p_jitter=1.0, p_grey=0.0, brightness=0.0,
                                                           contrast=0.0, saturation=0.0, hue=0.0))
    assert torch.allclose(still, flat, atol=1e-5)


def test_random_greyscale_puts_the_luma_in_every_channel():
    x = _photos()
    grey = augment(x, _seeded(0), NaturalAugmentConfig(**NO_GEOMETRY, p_jitter=0.0, p_grey=1.0))
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for channel in range(3):
        assert torch.allclose(grey[:, channel], luma, atol=1e-5)
    some = augment(_photos(200), _seeded(0), NaturalAugmentConfig(**NO_GEOMETRY, p_jitter=0.0))
    is_grey = (some[:, 0] - some[:, 1]).abs().amax(dim=(1, 2)) < 1e-6
    assert 20 <= int(is_grey.sum()) <= 60  # p_grey = 0.2 of 200


def test_the_stroke_set_is_unchanged_for_one_channel():
    """The values the stroke set gave before the photo set existed (seeded input and generator)."""
    x = torch.rand(5, 1, 20, 20, generator=_seeded(11))
    y = augment(x, _seeded(7), AugmentConfig())
    assert torch.equal(y, stroke_augment(x, _seeded(7), AugmentConfig()))
    assert float(y.sum()) == pytest.approx(1120.5108642578125, rel=1e-5)
    weighted = (y * torch.arange(400, dtype=torch.float32).view(1, 1, 20, 20)).sum()
    assert float(weighted) == pytest.approx(212713.109375, rel=1e-5)
    assert float(y[2, 0, 5, 5]) == pytest.approx(0.5284140110015869, abs=1e-5)
    assert float(y[4, 0, 10, 3]) == pytest.approx(0.8110470771789551, abs=1e-5)
