"""A plain MAML meta-gradient: loop over tasks, differentiate through the unrolled inner loop.

This is what learn2learn's ``clone()`` / ``adapt()`` does: per task, copy the weights as non-leaf
tensors, take ``steps`` SGD steps on the support loss with ``torch.autograd.grad(create_graph=True)``,
score the query set, and back-propagate that task's share of the loss before the next task (so one
task's graph is alive at a time). It exists to check the vmapped :mod:`cactus.learners.maml` and to
benchmark against; training uses the vmapped version.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F


def maml_reference_meta_gradient(
    net: nn.Module,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    query_y: torch.Tensor,
    inner_steps: int,
    inner_lr: float | dict[str, torch.Tensor],
    first_order: bool = False,
) -> tuple[float, dict[str, torch.Tensor]]:
    """Mean query loss over the task batch and its gradient, one task at a time.

    support_x (B, N*K, C, H, W), support_y (B, N*K), query_x (B, N*Q, C, H, W), query_y (B, N*Q).
    ``inner_lr`` is a float, or (Meta-SGD) a dict {param name: tensor of that param's shape}.
    Returns (loss, grads): grads maps every parameter name of ``net`` to d loss / d param, and,
    for a dict ``inner_lr`` whose tensors require grad, ``"inner_lr/<name>"`` to d loss / d lr.
    """
    params = dict(net.named_parameters())
    learned_lrs = isinstance(inner_lr, dict) and any(t.requires_grad for t in inner_lr.values())
    names = list(params)
    leaves = [params[n] for n in names] + ([inner_lr[n] for n in names] if learned_lrs else [])
    totals = [torch.zeros_like(t) for t in leaves]
    batch = support_x.shape[0]
    loss_sum = 0.0
    for task in range(batch):
        fast = dict(params)
        for _ in range(inner_steps):
            loss = F.cross_entropy(functional_call(net, fast, (support_x[task],)), support_y[task])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {
                n: w - (inner_lr[n] if isinstance(inner_lr, dict) else inner_lr) * g
                for (n, w), g in zip(fast.items(), grads, strict=True)
            }
        query_loss = F.cross_entropy(functional_call(net, fast, (query_x[task],)), query_y[task]) / batch
        task_grads = torch.autograd.grad(query_loss, leaves, allow_unused=True)
        for total, g in zip(totals, task_grads, strict=True):
            if g is not None:
                total += g
        loss_sum += query_loss.item()
    result = dict(zip(names, totals[: len(names)], strict=True))
    if learned_lrs:
        result.update({f"inner_lr/{n}": t for n, t in zip(names, totals[len(names) :], strict=True)})
    return loss_sum, result
