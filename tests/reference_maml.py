"""A plain per-task MAML, to check the batched production one (cactus.learners.maml_step) against.

This is what learn2learn's ``clone()`` / ``adapt()`` does: per task, copy the weights as non-leaf
tensors, take ``steps`` SGD steps on the support loss with ``torch.autograd.grad(create_graph=True)``
through the stock :class:`cactus.nets.ConvNet` (``functional_call``), score the query set, and
back-propagate that task's share of the loss before the next task (one task's graph alive at a
time). bench/maml_speed.py races it as the ``loop`` variant.

Task batch: support_x (B, N*K, C, H, W), support_y (B, N*K), query_x (B, N*Q, C, H, W), query_y (B, N*Q).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

Params = dict[str, torch.Tensor]


def _adapt(net: nn.Module, fast: Params, images: torch.Tensor, labels: torch.Tensor, steps: int,
           inner_lr: float | Params, create_graph: bool) -> Params:
    """One task: ``steps`` SGD steps on its support set (S, C, H, W), labels (S,)."""
    for _ in range(steps):
        loss = F.cross_entropy(functional_call(net, fast, (images,)), labels)
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=create_graph)
        fast = {
            n: w - (inner_lr[n] if isinstance(inner_lr, dict) else inner_lr) * g
            for (n, w), g in zip(fast.items(), grads, strict=True)
        }
    return fast


def maml_reference_meta_gradient(
    net: nn.Module,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    query_y: torch.Tensor,
    inner_steps: int,
    inner_lr: float | Params,
    first_order: bool = False,
) -> tuple[float, Params]:
    """Mean query loss over the task batch and its gradient, one task at a time.

    ``inner_lr`` is a float, or (Meta-SGD) a dict {param name: tensor of that param's shape}.
    Returns (loss, grads): grads maps every parameter name of ``net`` to d loss / d param (its shape),
    and, for a dict ``inner_lr`` whose tensors require grad, ``"inner_lr/<name>"`` to d loss / d lr.
    """
    params = dict(net.named_parameters())
    learned_lrs = isinstance(inner_lr, dict) and any(t.requires_grad for t in inner_lr.values())
    names = list(params)
    leaves = [params[n] for n in names] + ([inner_lr[n] for n in names] if learned_lrs else [])
    totals = [torch.zeros_like(t) for t in leaves]
    batch = support_x.shape[0]
    loss_sum = 0.0
    for task in range(batch):
        fast = _adapt(net, dict(params), support_x[task], support_y[task], inner_steps, inner_lr, not first_order)
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


def reference_predict(
    net: nn.Module, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor, steps: int,
    inner_lr: float | Params,
) -> torch.Tensor:
    """Adapt on each task's support set alone, then label its queries: (B, N*Q) int64."""
    params = {n: p.detach().requires_grad_() for n, p in net.named_parameters()}
    lrs = {n: t.detach() for n, t in inner_lr.items()} if isinstance(inner_lr, dict) else inner_lr
    labels = []
    for task in range(support_x.shape[0]):
        fast = _adapt(net, params, support_x[task], support_y[task], steps, lrs, create_graph=False)
        labels.append(functional_call(net, fast, (query_x[task],)).argmax(-1))
    return torch.stack(labels)
