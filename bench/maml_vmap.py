"""MAML's meta-gradient with ``torch.func``: a pure per-task function ``vmap``-ped over the task batch.

The ``vmap`` variant of bench/maml_speed.py, raced against the production path (the task axis folded
into the conv channels by hand, cactus.learners.maml_step) and the per-task loop. One task adapts the
weights to its support set (``steps`` SGD steps, gradients from ``torch.func.grad`` through
``functional_call``) and scores its query set; ``vmap`` maps that over the leading task axis, and the
meta-gradient is ordinary autograd through it: second order, or first order with the inner gradients
detached. Task batch: support_x (B, N*K, C, H, W), support_y (B, N*K), query_x (B, N*Q, C, H, W),
query_y (B, N*Q).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F


class BatchStatNorm2d(nn.Module):
    """Batch norm from the batch's own statistics, written with plain tensor ops.

    Same maths as ``nn.BatchNorm2d(track_running_stats=False)`` (biased variance, ``eps``) and the
    same parameter names. It exists because in torch 2.13 the second derivative of the fused
    ``native_batch_norm`` is wrong under ``vmap`` (the vmapped meta-gradient then disagrees with the
    per-task loop); the composite form is exact.
    """

    def __init__(self, norm: nn.BatchNorm2d) -> None:
        super().__init__()
        self.eps = norm.eps
        self.weight = norm.weight
        self.bias = norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> same shape."""
        mean = x.mean((0, 2, 3), keepdim=True)
        var = x.var((0, 2, 3), unbiased=False, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight[:, None, None] + self.bias[:, None, None]


def vmap_safe(net: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d of ``net`` (in place) by :class:`BatchStatNorm2d`, sharing its parameters."""
    for name, child in net.named_children():
        if isinstance(child, nn.BatchNorm2d):
            if child.track_running_stats:
                raise ValueError("MAML needs batch norm without running statistics")
            setattr(net, name, BatchStatNorm2d(child))
        else:
            vmap_safe(child)
    return net


def vmap_meta_gradient(
    net: nn.Module,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    query_y: torch.Tensor,
    steps: int,
    lr: float,
    first_order: bool = False,
) -> tuple[float, dict[str, torch.Tensor]]:
    """Mean query loss over the task batch and its gradient (name -> tensor of that parameter's shape).

    ``net`` must have been through :func:`vmap_safe`.
    """
    params = dict(net.named_parameters())

    def one_task(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor) -> torch.Tensor:
        def support_loss(weights: dict[str, torch.Tensor]) -> torch.Tensor:
            return F.cross_entropy(functional_call(net, weights, (sx,)), sy)

        fast = params
        for _ in range(steps):
            grads = grad(support_loss)(fast)
            if first_order:
                grads = {n: g.detach() for n, g in grads.items()}
            fast = {n: w - lr * grads[n] for n, w in fast.items()}
        return F.cross_entropy(functional_call(net, fast, (qx,)), qy)

    losses = vmap(one_task)(support_x, support_y, query_x, query_y)  # (B,)
    loss = losses.sum() / losses.shape[0]
    return loss.item(), dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))
