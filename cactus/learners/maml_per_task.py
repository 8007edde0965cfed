"""MAML's meta-gradient one task at a time, on the net's own modules with channels-last activations.

The folded path (:mod:`cactus.learners.maml_step`) runs every task of a batch at once as grouped
convolutions. On a net whose convolutions keep the cores busy one task at a time (conv4-64 with max
pooling at 28x28) that batching buys no speed and costs memory: every task's unrolled graph stays
alive until one backward pass. Here each task runs through the net itself with its adapted weights
(``torch.func.functional_call``), its images and conv weights channels-last (oneDNN's faster layout
for convolution, batch norm and max pooling on a CPU), and is back-propagated before the next task
runs, so one task's graph is alive at a time, as in learn2learn's loop. The maths is that of
:func:`~cactus.learners.maml_step.meta_backward` (tests/test_maml.py holds both to the reference loop).

Task batch and weights as in :mod:`cactus.learners.maml_step`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from cactus.learners.folded_net import Params
from cactus.learners.maml_step import InnerLoop, TaskBatch


def _channels_last(weights: Params) -> Params:
    """Conv weights (4-D) as channels-last copies (differentiable); the others as they are."""
    return {n: w.contiguous(memory_format=torch.channels_last) if w.dim() == 4 else w for n, w in weights.items()}


def adapt_one(net: nn.Module, params: Params, inner: InnerLoop, support_x: torch.Tensor,
              support_y: torch.Tensor, create_graph: bool) -> Params:
    """One task's inner loop: shared weights -> adapted weights (each of the parameter's own shape).

    support_x (S, C, H, W) channels-last, support_y (S,). ``create_graph``: keep the inner gradients in
    the graph (second-order meta-gradient); without it the adapted weights still depend on ``params``
    (and on learnt learning rates) through the update itself, as first-order MAML has it.
    """
    fast = _channels_last(params)
    lrs = inner.lrs
    for _ in range(inner.steps):
        loss = F.cross_entropy(functional_call(net, fast, (support_x,)), support_y)
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=create_graph)
        fast = {n: w - (lrs[n] if isinstance(lrs, dict) else lrs) * g for (n, w), g in zip(fast.items(), grads,
                                                                                            strict=True)}
    return fast


def detached_adapt_one(net: nn.Module, params: Params, inner: InnerLoop, support_x: torch.Tensor,
                       support_y: torch.Tensor) -> Params:
    """One task's adapted weights without a graph (for prediction); support_x (S, C, H, W) channels-last."""
    lrs = inner.detached().lrs
    fast = {n: w.detach() for n, w in _channels_last(params).items()}
    for _ in range(inner.steps):
        leaves = {n: w.requires_grad_() for n, w in fast.items()}
        with torch.enable_grad():
            loss = F.cross_entropy(functional_call(net, leaves, (support_x,)), support_y)
            grads = torch.autograd.grad(loss, list(leaves.values()))
        fast = {n: (w - (lrs[n] if isinstance(lrs, dict) else lrs) * g).detach()
                for (n, w), g in zip(leaves.items(), grads, strict=True)}
    return fast


def per_task_predict(net: nn.Module, params: Params, inner: InnerLoop, support_x: torch.Tensor,
                     support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
    """Adapt to each task alone and label its queries: support_x (B, N*K, C, H, W) -> labels (B, N*Q) int64."""
    labels = []
    for t in range(len(support_x)):
        support = support_x[t].contiguous(memory_format=torch.channels_last)
        adapted = detached_adapt_one(net, params, inner, support, support_y[t])
        with torch.no_grad():
            query = query_x[t].contiguous(memory_format=torch.channels_last)
            labels.append(functional_call(net, adapted, (query,)).argmax(-1))
    return torch.stack(labels)


def per_task_meta_backward(
    net: nn.Module, params: Params, inner: InnerLoop, tasks: TaskBatch, meta_batch: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accumulate d(sum of the query losses / ``meta_batch``)/d(params, learnt lrs) into ``.grad``, task by task.

    Returns the query losses (B,) and logits (B, N*Q, N), detached.
    """
    losses, logits = [], []
    for t in range(len(tasks.support_x)):
        support = tasks.support_x[t].contiguous(memory_format=torch.channels_last)  # (N*K, C, H, W)
        query = tasks.query_x[t].contiguous(memory_format=torch.channels_last)  # (N*Q, C, H, W)
        adapted = adapt_one(net, params, inner, support, tasks.support_y[t], create_graph=not inner.first_order)
        task_logits = functional_call(net, adapted, (query,))  # (N*Q, N)
        loss = F.cross_entropy(task_logits, tasks.query_y[t])
        (loss / meta_batch).backward()
        losses.append(loss.detach())
        logits.append(task_logits.detach())
    return torch.stack(losses), torch.stack(logits)
