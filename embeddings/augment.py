"""Random image augmentations in plain torch (no torchvision), for contrastive learning.

All randomness comes from the ``torch.Generator`` passed in, so a seed fixes every view. For
grey character images: one-pixel stroke-width changes (max-pool dilation / min-pool erosion), one random
affine warp per image that also does the random resized crop (rotation, anisotropic scale,
shear, translation), a smooth elastic displacement, and small cutouts. Colour jitter (brightness,
contrast, saturation) is applied only to 3-channel images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


def augment(x: torch.Tensor, generator: torch.Generator, config: AugmentConfig | None = None) -> torch.Tensor:
    """One random view of each image: (B, C, H, W) float in [0, 1] -> same shape, on x's device.

    Random numbers are drawn on the CPU from ``generator`` and then moved, so CPU and GPU runs
    with one seed see the same views.
    """
    config = config or AugmentConfig()
    device = x.device
    batch, channels, height, width = x.shape
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
