"""Random image augmentations in plain torch (no torchvision), batched, for contrastive learning.

All randomness comes from the ``torch.Generator`` passed in (drawn on the CPU, a fixed number of
draws per batch), so a seed fixes every view on any device. The set is chosen by the images'
pixel statistics, never by a dataset's name or its channel count (:func:`config_for`):

- line drawings (strokes, digits: most pixels are ink or paper; :class:`AugmentConfig`): one-pixel
  stroke-width changes (max-pool dilation / min-pool erosion), one random affine warp per image that
  also does the random resized crop (rotation, anisotropic scale, shear, translation), a smooth
  elastic displacement, small cutouts (and colour jitter for colour drawings).
- photos, colour or grey (:class:`NaturalAugmentConfig`): SimCLR's set -- random resized crop,
  horizontal flip, colour jitter (brightness, contrast; saturation and hue for colour) and random
  greyscale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of each augmentation; ``scale`` ranges are zoom factors (< 1 zooms in = a crop)."""

    rotation_deg: float = 15.0
    scale: tuple[float, float] = (0.75, 1.25)
    aspect: float = 1.25
    shear: float = 0.25
    translate: float = 0.15
    elastic: float = 0.06  # displacement amplitude in normalised [-1, 1] coordinates (~0.8 px at 28)
    elastic_grid: int = 4
    p_dilate: float = 0.25
    p_erode: float = 0.1
    p_cutout: float = 0.25
    cutout_size: float = 0.3  # side as a fraction of the image side
    jitter: float = 0.4  # colour images only


@dataclass(frozen=True)
class NaturalAugmentConfig:
    """SimCLR's augmentations for photos (Chen et al. 2020), as torchvision's transforms define them.

    crop_scale: range of the crop's area as a fraction of the image (MoCo v2's 0.2 rather than
    SimCLR's 0.08: 84x84 images have few pixels to spare); crop_ratio: range of its aspect ratio.
    The jitter strengths are torchvision's ColorJitter arguments (hue as a fraction of a full turn),
    applied with probability ``p_jitter``, in the fixed order brightness, contrast, saturation, hue.
    """

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    p_flip: float = 0.5
    p_jitter: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    p_grey: float = 0.2


# Line drawings put most pixels at black or white (ink and paper): Omniglot 0.91 of its pixel values within
# 10% of either end, sklearn's digits 0.65. Photos spread over the range: miniImageNet 0.16 in colour, 0.12 grey.
STROKES_ABOVE = 0.4
SAMPLE_IMAGES = 4096


def extreme_fraction(images: np.ndarray | torch.Tensor) -> float:
    """Fraction of pixel values within 10% of black or white.

    images: (N, H, W, C) uint8 (every k-th image, at most ``SAMPLE_IMAGES``, is read) or a
    (B, C, H, W) float tensor in [0, 1].
    """
    if isinstance(images, np.ndarray):
        sample = images[:: max(1, len(images) // SAMPLE_IMAGES)]
        return float(((sample <= 25) | (sample >= 230)).mean()) if sample.size else 0.0
    return float(((images <= 0.1) | (images >= 0.9)).float().mean()) if images.numel() else 0.0


def config_for(images: np.ndarray | torch.Tensor) -> AugmentConfig | NaturalAugmentConfig:
    """The augmentation set that suits ``images`` (see :func:`extreme_fraction` for their layout).

    Line drawings (more than ``STROKES_ABOVE`` of the pixel values at black or white) get the
    stroke set, anything else the photo set, whatever the number of channels.
    """
    return config_for_fraction(extreme_fraction(images))


def config_for_fraction(fraction: float) -> AugmentConfig | NaturalAugmentConfig:
    """The set for images whose :func:`extreme_fraction` is ``fraction``."""
    return AugmentConfig() if fraction > STROKES_ABOVE else NaturalAugmentConfig()


def describe(config: AugmentConfig | NaturalAugmentConfig) -> str:
    """``strokes`` or ``photos``: which set a config belongs to (for log lines)."""
    return "photos" if isinstance(config, NaturalAugmentConfig) else "strokes"


def _uniform(shape, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=generator) * (high - low) + low


def affine_matrices(batch: int, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """(B, 2, 3) matrices mapping output to input coordinates for ``F.affine_grid``."""
    angle = _uniform(batch, -config.rotation_deg, config.rotation_deg, generator) * math.pi / 180
    zoom = torch.exp(_uniform(batch, math.log(config.scale[0]), math.log(config.scale[1]), generator))
    aspect = torch.exp(_uniform(batch, -math.log(config.aspect), math.log(config.aspect), generator)).sqrt()
    shear = _uniform(batch, -config.shear, config.shear, generator)
    shift = _uniform((batch, 2), -config.translate, config.translate, generator)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shearing = torch.zeros(batch, 2, 2)
    shearing[:, 0, 0] = 1
    shearing[:, 1, 1] = 1
    shearing[:, 0, 1] = shear
    scaling = torch.diag_embed(torch.stack([zoom * aspect, zoom / aspect], -1))
    linear = rotation @ shearing @ scaling
    return torch.cat([linear, shift[:, :, None]], dim=2)


def _stroke_width(x: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Per image: dilate (2x2 max pool, one pixel thicker), erode (2x2 min pool) or keep."""
    draw = torch.rand(len(x), generator=generator).view(-1, 1, 1, 1).to(x.device)
    padded = F.pad(x, (0, 1, 0, 1))
    dilated = F.max_pool2d(padded, 2, stride=1)
    eroded = -F.max_pool2d(-padded, 2, stride=1)
    out = torch.where(draw < config.p_dilate, dilated, x)
    return torch.where((draw >= config.p_dilate) & (draw < config.p_dilate + config.p_erode), eroded, out)


def _cutout(x: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Zero one random square (side ``cutout_size`` of the image) in a fraction ``p_cutout`` of images."""
    batch, _, height, width = x.shape
    side_h, side_w = max(1, round(config.cutout_size * height)), max(1, round(config.cutout_size * width))
    top = (torch.rand(batch, generator=generator) * (height - side_h + 1)).long()
    left = (torch.rand(batch, generator=generator) * (width - side_w + 1)).long()
    apply = torch.rand(batch, generator=generator) < config.p_cutout
    rows = torch.arange(height).view(1, -1, 1)
    cols = torch.arange(width).view(1, 1, -1)
    inside = (
        (rows >= top.view(-1, 1, 1)) & (rows < (top + side_h).view(-1, 1, 1))
        & (cols >= left.view(-1, 1, 1)) & (cols < (left + side_w).view(-1, 1, 1))
    )
    mask = (inside & apply.view(-1, 1, 1)).unsqueeze(1).to(x.device)
    return x.masked_fill(mask, 0.0)


def _colour_jitter(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation jitter of (B, 3, H, W) images in [0, 1]."""
    batch = len(x)
    brightness = _uniform((batch, 1, 1, 1), 1 - strength, 1 + strength, generator)
    contrast = _uniform((batch, 1, 1, 1), 1 - strength, 1 + strength, generator)
    saturation = _uniform((batch, 1, 1, 1), 1 - strength, 1 + strength, generator)
    brightness, contrast, saturation = (v.to(x.device) for v in (brightness, contrast, saturation))
    x = x * brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - grey) * saturation + grey
    return x.clamp(0.0, 1.0)


def augment(x: torch.Tensor, generator: torch.Generator,
            config: AugmentConfig | NaturalAugmentConfig | None = None, side: int | None = None) -> torch.Tensor:
    """One random view of each image: (B, C, H, W) float in [0, 1] -> (B, C, S, S) with S = ``side``
    (default: the same shape as x), on x's device. The view is resampled once, from the full image.

    Without ``config`` the set follows the batch's pixels (:func:`config_for`; an encoder decides
    once, on its training images, and passes it); a given config picks its own set. Random
    numbers are drawn on the CPU from ``generator`` and then moved, so CPU and GPU runs with one
    seed see the same views.
    """
    config = config or config_for(x)
    if isinstance(config, NaturalAugmentConfig):
        return natural_augment(x, generator, config, side)
    return stroke_augment(x, generator, config, side)


def _out_size(x: torch.Tensor, side: int | None) -> tuple[int, int, int, int]:
    """(B, C, H', W') of the views of x: (side, side), or x's own grid."""
    batch, channels, height, width = x.shape
    return (batch, channels, height, width) if side is None else (batch, channels, side, side)


def stroke_augment(x: torch.Tensor, generator: torch.Generator, config: AugmentConfig,
                   side: int | None = None) -> torch.Tensor:
    """The stroke set: (B, C, H, W) float in [0, 1] -> (B, C, S, S) (colour jitter too when C = 3)."""
    device = x.device
    batch, channels, height, width = _out_size(x, side)
    x = _stroke_width(x, config, generator) if channels == 1 else x
    theta = affine_matrices(batch, config, generator)
    grid = F.affine_grid(theta, [batch, channels, height, width], align_corners=False)
    if config.elastic > 0:
        noise = torch.randn(batch, 2, config.elastic_grid, config.elastic_grid, generator=generator)
        field = F.interpolate(noise * config.elastic, size=(height, width), mode="bicubic", align_corners=False)
        grid = grid + field.permute(0, 2, 3, 1)
    x = F.grid_sample(x, grid.to(device), mode="bilinear", padding_mode="zeros", align_corners=False)
    if channels == 3 and config.jitter > 0:
        x = _colour_jitter(x, config.jitter, generator)
    if config.p_cutout > 0:
        x = _cutout(x, config, generator)
    return x


def _grey(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma with ITU-R 601 weights (torchvision's rgb_to_grayscale)."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


# RGB <-> YIQ (NTSC): a hue shift is a rotation of the (I, Q) chroma plane.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _hue_rotation(turns: torch.Tensor) -> torch.Tensor:
    """(B,) hue shifts in turns -> (B, 3, 3) RGB -> RGB matrices rotating chroma by 2 pi ``turns``."""
    angle = turns * 2 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.zeros(len(turns), 3, 3)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
    rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
    return torch.linalg.inv(_RGB_TO_YIQ) @ rotation @ _RGB_TO_YIQ


def _crop_and_flip(x: torch.Tensor, config: NaturalAugmentConfig, generator: torch.Generator,
                   side: int | None = None) -> torch.Tensor:
    """Random resized crop (area and aspect drawn per image) and horizontal flip, in one resampling,
    to a ``side`` x ``side`` grid (default: x's own)."""
    batch, channels, height, width = _out_size(x, side)
    area = _uniform(batch, config.crop_scale[0], config.crop_scale[1], generator)
    ratio = torch.exp(_uniform(batch, math.log(config.crop_ratio[0]), math.log(config.crop_ratio[1]), generator))
    crop_w = (area * ratio).sqrt().clamp(max=1.0)  # fraction of the width
    crop_h = (area / ratio).sqrt().clamp(max=1.0)
    centre = torch.rand(batch, 2, generator=generator) * 2 - 1  # scaled into the room the crop leaves
    flip = torch.where(torch.rand(batch, generator=generator) < config.p_flip, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = crop_w * flip
    theta[:, 1, 1] = crop_h
    theta[:, 0, 2] = centre[:, 0] * (1 - crop_w)
    theta[:, 1, 2] = centre[:, 1] * (1 - crop_h)
    grid = F.affine_grid(theta, [batch, channels, height, width], align_corners=False).to(x.device)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _jitter_colours(x: torch.Tensor, config: NaturalAugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """torchvision's ColorJitter on (B, C, H, W) in [0, 1], for a fraction ``p_jitter`` of the images.

    Brightness scales, contrast blends with the image's mean grey, saturation with its grey image,
    hue rotates chroma in YIQ space; each result is clipped to [0, 1]. Saturation and hue need C = 3.
    """
    batch, channels = x.shape[:2]
    apply = torch.rand(batch, generator=generator) < config.p_jitter
    factors = [_uniform(batch, max(0.0, 1 - s), 1 + s, generator)
               for s in (config.brightness, config.contrast, config.saturation)]
    turns = _uniform(batch, -config.hue, config.hue, generator)
    brightness, contrast, saturation = (f.view(-1, 1, 1, 1).to(x.device) for f in factors)
    out = (x * brightness).clamp(0.0, 1.0)
    grey = _grey(out) if channels == 3 else out
    mean = grey.mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean) * contrast + mean).clamp(0.0, 1.0)
    if channels == 3:
        grey = _grey(out)
        out = ((out - grey) * saturation + grey).clamp(0.0, 1.0)
        matrices = _hue_rotation(turns).to(x.device)
        out = torch.einsum("bij,bjhw->bihw", matrices, out).clamp(0.0, 1.0)
    return torch.where(apply.view(-1, 1, 1, 1).to(x.device), out, x)


def natural_augment(x: torch.Tensor, generator: torch.Generator, config: NaturalAugmentConfig,
                    side: int | None = None) -> torch.Tensor:
    """The photo set: (B, C, H, W) float in [0, 1] -> (B, C, S, S) (S = ``side``, default H = W), on x's device.

    Random resized crop + horizontal flip, colour jitter, then random greyscale (the grey image in
    all three channels, for a fraction ``p_grey``). Every random number is drawn whether or not it is
    used, so a batch always takes the same number of draws from ``generator``.
    """
    x = _crop_and_flip(x, config, generator, side)
    x = _jitter_colours(x, config, generator)
    to_grey = torch.rand(len(x), generator=generator) < config.p_grey
    if x.shape[1] == 3:
        x = torch.where(to_grey.view(-1, 1, 1, 1).to(x.device), _grey(x).expand_as(x), x)
    return x
