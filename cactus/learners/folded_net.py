"""The conv net of :mod:`cactus.nets` run with one set of weights per task, every task at once.

MAML adapts a copy of the weights to each task, so a task batch runs B different nets. Here the task
axis is folded into the channel axis by hand: every task's activations sit in one (S, B*C, H, W)
tensor, each conv is a grouped conv (``groups=B``), batch norm with per-task statistics is the
ordinary fused batch norm over B*C channels, and the first conv is a batched matmul on the images'
patches. Tasks share nothing, so d(sum of the task losses)/d(task weights) is each task's own
gradient: one ``torch.autograd.grad`` gives every task's inner gradient. (This is the batching that
``torch.func.vmap`` does for per-task weights, written out: no per-op transform overhead, and the
fused batch norm, whose second derivative is wrong under ``vmap`` in torch 2.13.)

Per-task weights are a dict name -> (B, *shape of that parameter of the net), the names being the
net's own parameter names.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

Params = dict[str, torch.Tensor]
Columns = tuple[torch.Tensor, int, int]


def image_columns(net: nn.Module, images: torch.Tensor) -> Columns:
    """The first conv's input patches of images (B, S, C, H, W): ((S, B, C*k*k, L), H', W'), L = H'*W'.

    The images are constants, so their patches are computed once and reused by every inner step.
    """
    layer = net.features[0][0]
    if not isinstance(layer, nn.Conv2d):
        raise TypeError("folded_forward expects the net to start with a conv")
    batch, shots, channels, height, width = images.shape
    h = images.transpose(0, 1).reshape(shots, batch * channels, height, width)
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
    if layer.dilation != (1, 1):
        cols = F.unfold(h, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # (S, B*C*k*k, L)
        out_h = (height + 2 * ph - layer.dilation[0] * (kh - 1) - 1) // sh + 1
        return cols.view(shots, batch, -1, cols.shape[-1]), out_h, cols.shape[-1] // out_h
    # F.unfold's CPU im2col took ~10% of a conv4-64 meta-step at (75, 2, 28, 28); strided views + one copy
    # give the same columns (tested equal) in well under a millisecond.
    windows = F.pad(h, (pw, pw, ph, ph)).unfold(2, kh, sh).unfold(3, kw, sw)  # (S, B*C, H', W', kh, kw)
    out_h, out_w = windows.shape[2:4]
    cols = windows.permute(0, 1, 4, 5, 2, 3).reshape(shots, batch, channels * kh * kw, out_h * out_w)
    return cols, out_h, out_w


def _data_conv(columns: Columns, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The first conv as patches @ weights: weight (B, O, C, k, k), bias (B, O) -> (S, B*O, H', W').

    Every derivative of this conv (the inner gradient and its own derivative) is then a batched
    matmul; a grouped conv with one input channel per group has a much slower double backward.
    """
    cols, out_h, out_w = columns
    shots, batch = cols.shape[:2]
    out = torch.matmul(weight.reshape(batch, weight.shape[1], -1), cols) + bias[..., None]  # (S, B, O, L)
    return out.view(shots, -1, out_h, out_w)


def folded_forward(
    net: nn.Module, params: Params, images: torch.Tensor, columns: Columns | None = None
) -> torch.Tensor:
    """Per-task weights through a :class:`cactus.nets.ConvNet` with a head.

    params: name -> (B, *shape of that parameter), one set of weights per task.
    images: (B, S, C, H, W); columns: :func:`image_columns` of them, if already computed.
    Returns logits (B, S, n_way).
    """
    batch, shots = images.shape[:2]
    h = _data_conv(columns or image_columns(net, images), params["features.0.0.weight"], params["features.0.0.bias"])
    for i, block in enumerate(net.features):
        for j, layer in enumerate(block):
            if i == 0 and j == 0:
                continue  # the first conv, done above on the images' patches
            weight, bias = params.get(f"features.{i}.{j}.weight"), params.get(f"features.{i}.{j}.bias")
            if isinstance(layer, nn.Conv2d):
                h = F.conv2d(
                    h, weight.reshape(-1, *weight.shape[2:]), bias.reshape(-1), layer.stride, layer.padding,
                    groups=batch,
                )
            elif isinstance(layer, nn.ReLU):
                h = F.relu(h)
            elif isinstance(layer, nn.MaxPool2d):
                h = F.max_pool2d(h, layer.kernel_size, layer.stride, layer.padding)
            elif isinstance(layer, nn.BatchNorm2d) and not layer.track_running_stats:  # the batch's own statistics
                h = F.batch_norm(h, None, None, weight.reshape(-1), bias.reshape(-1), True, 0.0, layer.eps)
            else:
                raise TypeError(f"folded_forward does not know layer {type(layer).__name__}")
    features = h.mean((2, 3)).view(shots, batch, -1).transpose(0, 1)  # (B, S, filters)
    return torch.baddbmm(params["head.bias"].unsqueeze(1), features, params["head.weight"].transpose(1, 2))


def task_losses(
    net: nn.Module, params: Params, images: torch.Tensor, labels: torch.Tensor, columns: Columns | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """images (B, S, C, H, W), labels (B, S) -> per-task mean cross-entropy (B,), logits (B, S, N)."""
    logits = folded_forward(net, params, images, columns)
    batch, shots, ways = logits.shape
    losses = F.cross_entropy(logits.reshape(-1, ways), labels.reshape(-1), reduction="none")
    return losses.view(batch, shots).mean(1), logits
