"""MAML's update as pure functions of the weights: inner loops and the meta-gradient of a task batch.

Every task of the batch adapts at once on the folded net of :mod:`cactus.learners.folded_net`:
``steps`` SGD steps on the support loss, from the shared meta-weights to per-task weights. The
meta-gradient is ordinary autograd through those unrolled steps: second order by default, first
order when the inner gradients are not differentiated. With a dict of learning rates every parameter
has its own learnable inner learning rate of its shape (Meta-SGD, Li et al., 2017).

Task batch, class-major as in :mod:`cactus.task_sampling`: support_x (B, N*K, C, H, W) float,
support_y (B, N*K) int64 in [0, N), query_x (B, N*Q, C, H, W) float, query_y (B, N*Q) int64.
Shared weights: name -> tensor of that parameter's shape; per-task weights: name -> (B, *shape).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from cactus.learners.folded_net import Columns, Params, image_columns, task_losses


class TaskBatch(NamedTuple):
    """A batch of B tasks (shapes in the module docstring)."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor


@dataclass(frozen=True)
class InnerLoop:
    """How each task adapts: ``steps`` SGD steps at ``lrs``, a float or (Meta-SGD) name -> tensor of the
    parameter's shape; ``first_order`` leaves the inner gradients out of the meta-gradient."""

    steps: int
    lrs: float | Params
    first_order: bool = False

    def detached(self) -> InnerLoop:
        """The same loop with the learning rates cut from the graph (adapting without a meta-gradient)."""
        lrs = {n: t.detach() for n, t in self.lrs.items()} if isinstance(self.lrs, dict) else self.lrs
        return InnerLoop(self.steps, lrs, self.first_order)


def inner_step(
    net: nn.Module, fast: Params, lrs: float | Params, support_x: torch.Tensor, support_y: torch.Tensor,
    columns: Columns, create_graph: bool,
) -> Params:
    """One SGD step of every task on its support loss: per-task weights (B, *shape) -> (B, *shape)."""
    losses, _ = task_losses(net, fast, support_x, support_y, columns)
    grads = torch.autograd.grad(losses.sum(), list(fast.values()), create_graph=create_graph)
    return {
        n: w - (lrs[n] if isinstance(lrs, dict) else lrs) * g
        for (n, w), g in zip(fast.items(), grads, strict=True)
    }


def adapt(net: nn.Module, params: Params, inner: InnerLoop, support_x: torch.Tensor, support_y: torch.Tensor) -> Params:
    """Every task's inner loop, differentiable: shared weights -> adapted per-task weights (B, *shape)."""
    batch = support_x.shape[0]
    fast = {n: w.expand(batch, *w.shape) for n, w in params.items()}
    columns = image_columns(net, support_x)
    for _ in range(inner.steps):
        fast = inner_step(net, fast, inner.lrs, support_x, support_y, columns, create_graph=not inner.first_order)
    return fast


def detached_trajectory(
    net: nn.Module, params: Params, inner: InnerLoop, support_x: torch.Tensor, support_y: torch.Tensor,
    columns: Columns | None = None,
) -> Iterator[Params]:
    """Every task's weights (B, *shape) after 0, 1, ..., ``inner.steps`` inner steps, keeping no graph.

    Works under ``torch.no_grad`` too (each step's gradient is taken with grad enabled). ``columns``:
    :func:`~cactus.learners.folded_net.image_columns` of ``support_x``, if already computed.
    """
    batch = support_x.shape[0]
    columns = columns or image_columns(net, support_x)
    lrs = inner.detached().lrs
    fast = {n: w.detach().expand(batch, *w.shape) for n, w in params.items()}
    yield fast
    for _ in range(inner.steps):
        leaves = {n: w.detach().requires_grad_() for n, w in fast.items()}
        with torch.enable_grad():
            fast = inner_step(net, leaves, lrs, support_x, support_y, columns, create_graph=False)
        fast = {n: w.detach() for n, w in fast.items()}
        yield fast


def detached_adapt(
    net: nn.Module, params: Params, inner: InnerLoop, support_x: torch.Tensor, support_y: torch.Tensor,
) -> Params:
    """Every task's adapted weights (B, *shape), without a graph (for prediction)."""
    return deque(detached_trajectory(net, params, inner, support_x, support_y), maxlen=1)[0]


def meta_backward(
    net: nn.Module, params: Params, inner: InnerLoop, tasks: TaskBatch, meta_batch: int,
    query_chunk: int | None = None, recompute: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accumulate d(sum of the query losses / ``meta_batch``)/d(params, learnt lrs) into ``.grad``.

    Returns the query losses (B,) and logits (B, N*Q, N), detached. ``meta_batch`` is the whole
    meta-batch's size, so that the gradients of several calls on its parts add up to the batch's.
    With neither ``query_chunk`` nor ``recompute``, one backward pass through the whole unrolled graph.
    Otherwise two phases that bound memory: every inner loop runs at once (support sets are small),
    then the query sets, which hold most of the activations, are scored ``query_chunk`` tasks at a
    time (default: all), each chunk's graph freed once it has given the gradient with respect to its
    adapted weights; one backward pass carries those through the inner loop. ``recompute`` (second
    order only) keeps one inner step's graph at a time (:func:`_recomputing_meta_backward`).
    All give the same meta-gradient.
    """
    if query_chunk is None and not recompute:
        adapted = adapt(net, params, inner, tasks.support_x, tasks.support_y)
        losses, logits = task_losses(net, adapted, tasks.query_x, tasks.query_y)
        (losses.sum() / meta_batch).backward()
        return losses.detach(), logits.detach()
    query_chunk = query_chunk or len(tasks.query_x)
    if recompute and not inner.first_order:
        return _recomputing_meta_backward(net, params, inner, tasks, 1 / meta_batch, query_chunk)
    adapted = adapt(net, params, inner, tasks.support_x, tasks.support_y)
    losses, logits, query_grads = query_gradients(net, adapted, tasks.query_x, tasks.query_y, 1 / meta_batch,
                                                  query_chunk)
    names = list(adapted)
    torch.autograd.backward([adapted[n] for n in names], [query_grads[n] for n in names])
    return losses, logits


def query_gradients(
    net: nn.Module, adapted: Params, query_x: torch.Tensor, query_y: torch.Tensor, scale: float, query_chunk: int,
) -> tuple[torch.Tensor, torch.Tensor, Params]:
    """Query losses (B,), logits (B, N*Q, N) and ``scale * d(sum of losses)/d(adapted)`` (name -> (B, *shape)),
    scored ``query_chunk`` tasks at a time, each chunk's graph freed before the next."""
    names = list(adapted)
    batch = query_x.shape[0]
    chunk_grads: list[tuple[torch.Tensor, ...]] = []
    losses, logits = [], []
    for start in range(0, batch, query_chunk):
        part = slice(start, start + query_chunk)
        leaves = {n: adapted[n][part].detach().requires_grad_() for n in names}
        chunk_losses, chunk_logits = task_losses(net, leaves, query_x[part], query_y[part])
        chunk_grads.append(torch.autograd.grad(chunk_losses.sum() * scale, [leaves[n] for n in names]))
        losses.append(chunk_losses.detach())
        logits.append(chunk_logits.detach())
    grads = {n: torch.cat([g[i] for g in chunk_grads]) for i, n in enumerate(names)}
    return torch.cat(losses), torch.cat(logits), grads


def _recomputing_meta_backward(
    net: nn.Module, params: Params, inner: InnerLoop, tasks: TaskBatch, scale: float, query_chunk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`meta_backward` (second order) holding one inner step's graph at a time.

    The inner loop first runs without a graph, keeping only each step's weights (B, *shape); the
    query gradient g_K at the adapted weights is then carried back one step at a time, each step's
    graph rebuilt from its stored weights and differentiated once (g_k = g_{k+1} (I - lr H_k), plus
    the learnt learning rates' share) and freed. The same meta-gradient as the unrolled graph, for
    the price of running the inner loop's forward and backward twice.
    """
    support_x, support_y = tasks.support_x, tasks.support_y
    batch, steps = support_x.shape[0], inner.steps
    columns = image_columns(net, support_x)
    trajectory: list[Params | None] = list(detached_trajectory(net, params, inner, support_x, support_y, columns))
    losses, logits, grads = query_gradients(net, trajectory[-1], tasks.query_x, tasks.query_y, scale, query_chunk)
    names = list(params)
    learnt_lrs = list(inner.lrs.values()) if isinstance(inner.lrs, dict) else []
    for k in reversed(range(1, steps)):
        start = {n: trajectory[k][n].requires_grad_() for n in names}
        stepped = inner_step(net, start, inner.lrs, support_x, support_y, columns, create_graph=True)
        torch.autograd.backward([stepped[n] for n in names], [grads[n] for n in names],
                                inputs=[start[n] for n in names] + learnt_lrs)
        grads = {n: start[n].grad for n in names}
        del stepped, start
        trajectory[k] = None  # this step's weights are no longer needed
    if steps:
        start = {n: w.expand(batch, *w.shape) for n, w in params.items()}  # step 0 starts at the meta-params
        stepped = inner_step(net, start, inner.lrs, support_x, support_y, columns, create_graph=True)
        torch.autograd.backward([stepped[n] for n in names], [grads[n] for n in names])
    else:
        for n, w in params.items():
            w.backward(grads[n].sum(0))
    return losses, logits
