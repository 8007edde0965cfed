"""The conv4 of few-shot learning: pooling before the ReLU is the textbook block's function and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cactus.nets import ConvNet


def _textbook(net: ConvNet) -> nn.Sequential:
    """The same weights in the textbook order: conv -> batch norm -> ReLU -> max pool in every block."""
    blocks = []
    for block in net.features:
        conv, norm, *rest = block
        pool = [m for m in rest if isinstance(m, nn.MaxPool2d)]
        blocks.append(nn.Sequential(conv, norm, nn.ReLU(), *pool))
    return nn.Sequential(*blocks)


@pytest.mark.parametrize("downsample", ["pool", "stride"])
def test_the_block_order_gives_the_textbook_outputs_and_second_derivatives(downsample):
    torch.manual_seed(0)
    net = ConvNet(1, 28, 8, None, downsample).double()
    if downsample == "pool":
        assert [type(m) for m in net.features[0]] == [nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.ReLU]
    textbook = _textbook(net)
    images = torch.randn(6, 1, 28, 28, dtype=torch.float64)
    images[0, 0, :4, :4] = 0.0  # flat windows: ties in the pools
    ours, theirs = net(images), textbook(images).mean(dim=(2, 3))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    params = list(net.parameters())
    grads = [torch.autograd.grad(out.pow(2).sum(), params, create_graph=True) for out in (ours, theirs)]
    for g_ours, g_theirs in zip(*grads, strict=True):
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-10, atol=1e-12)
    second = [torch.autograd.grad(sum(g.pow(2).sum() for g in gs), params) for gs in grads]
    for s_ours, s_theirs in zip(*second, strict=True):
        torch.testing.assert_close(s_ours, s_theirs, rtol=1e-10, atol=1e-12)
