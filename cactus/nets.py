"""The standard 4-layer conv net of few-shot learning (Vinyals et al. 2016; Finn et al. 2017).

Each block: 3x3 conv -> batch norm (no running statistics: it normalises with the statistics of the
batch it sees, the same in training and at test) -> ReLU -> 2x2 max pool, or a stride-2 conv instead
of pooling. With pooling the ReLU runs after the pool: the same function (max and ReLU commute, ties
and zero gradients included) on a quarter of the elements. Features are averaged over what is left
of the spatial grid, so any image size works (Omniglot 28x28 ends at 1x1 with pooling, 2x2 with
strides).
"""

from __future__ import annotations

import torch
from torch import nn


def _block(in_channels: int, out_channels: int, downsample: str, spatial: int) -> tuple[nn.Sequential, int]:
    """One conv block for inputs of side ``spatial``, and the side of its output."""
    shrink = spatial >= 2
    stride = 2 if downsample == "stride" and shrink else 1
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
        nn.BatchNorm2d(out_channels, track_running_stats=False),
    ]
    if downsample == "pool" and shrink:  # pool, then ReLU: relu(max(x)) == max(relu(x)), 4x fewer elements
        layers += [nn.MaxPool2d(2), nn.ReLU()]
        return nn.Sequential(*layers), spatial // 2
    layers.append(nn.ReLU())
    return nn.Sequential(*layers), (spatial + 1) // 2 if stride == 2 else spatial


class ConvNet(nn.Module):
    """Conv4 backbone with an optional linear head.

    Input (B, C, H, W) float; output (B, filters) features, or (B, n_way) logits with a head.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        filters: int = 64,
        n_way: int | None = None,
        downsample: str = "pool",
        depth: int = 4,
    ) -> None:
        super().__init__()
        if downsample not in ("pool", "stride"):
            raise ValueError(f"downsample must be 'pool' or 'stride', not {downsample!r}")
        blocks = []
        spatial = image_size
        channels = in_channels
        for _ in range(depth):
            block, spatial = _block(channels, filters, downsample, spatial)
            blocks.append(block)
            channels = filters
        self.features = nn.Sequential(*blocks)
        self.feature_dim = filters
        self.head = nn.Linear(filters, n_way) if n_way is not None else None

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, filters)."""
        return self.features(images).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> logits (B, n_way) with a head, else features (B, filters)."""
        features = self.embed(images)
        return self.head(features) if self.head is not None else features


def images_to_tensor(images, device=None) -> torch.Tensor:
    """(..., H, W, C) uint8 numpy -> (..., C, H, W) float32 tensor in [0, 1]."""
    tensor = torch.as_tensor(images, device=device)
    return tensor.movedim(-1, -3).float().div_(255.0)


def forward_flops(net: nn.Module, in_channels: int, image_size: int) -> int:
    """FLOPs (2 per multiply-add) of the convolutions and linear layers for one image through ``net``.

    Counted from the layers' output shapes in one forward pass of two blank (C, S, S) images (two: batch
    norm needs more than one value per channel).
    """
    total = 0

    def count(layer: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            per_output = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
            total += per_output * output.numel()
        elif isinstance(layer, nn.Linear):
            total += layer.in_features * output.numel()

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        with torch.no_grad():
            param = next(net.parameters())
            net(torch.zeros(2, in_channels, image_size, image_size, dtype=param.dtype, device=param.device))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def resize_images(images: torch.Tensor, side: int) -> torch.Tensor:
    """(B, C, H, W) float -> (B, C, side, side): bilinear, antialiased when shrinking (PIL's filter).

    The training stages' ``train_size``: a net whose features are averaged over the grid trains on
    smaller images than it embeds. Images already ``side`` x ``side`` come back unchanged.
    """
    import torch.nn.functional as F

    if images.shape[-2:] == (side, side):
        return images
    resized = F.interpolate(images, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return resized.clamp_(0.0, 1.0)
