"""MAML (Finn et al., 2017) with ``torch.func``, vmapped over the task batch.

One pure per-task function adapts the weights to the support set (``inner_steps`` SGD steps,
gradients from ``torch.func.grad`` through ``functional_call``) and scores the query set; ``vmap``
maps it over the leading task axis. The outer gradient is ordinary autograd through the whole
thing: second order by default, first order when the inner gradients are detached. With
``learn_inner_lr`` every parameter gets its own learnable inner learning rate of its shape
(Meta-SGD, Li et al., 2017). Batch norm keeps no running statistics, so it normalises with the
statistics of the batch it sees (the support set while adapting, the query set when scoring),
the same in training and at test.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from cactus.learners.maml_folded import (
    folded_batch_query_loss,
    folded_forward,
    folded_meta_backward,
    folded_task_losses,
    image_columns,
)
from cactus.nets import ConvNet

LR_PREFIX = "inner_lr/"
Params = dict[str, torch.Tensor]


class BatchStatNorm2d(nn.Module):
    """Batch norm from the batch's own statistics, written with plain tensor ops.

    Same maths as ``nn.BatchNorm2d(track_running_stats=False)`` (biased variance, ``eps``), and the
    same parameter names, so state dicts are interchangeable. It exists because in torch 2.13 the
    second derivative of the fused ``native_batch_norm`` is wrong under ``vmap`` (the vmapped MAML
    meta-gradient then disagrees with the per-task loop); the composite form is exact.
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


def adapt(
    net: nn.Module,
    params: Params,
    inner_lrs: float | Params,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    steps: int,
    first_order: bool = False,
) -> Params:
    """One task: ``steps`` SGD steps on the support loss. support_x (S, C, H, W), support_y (S,)."""

    def support_loss(weights: Params) -> torch.Tensor:
        return F.cross_entropy(functional_call(net, weights, (support_x,)), support_y)

    for _ in range(steps):
        grads = grad(support_loss)(params)
        if first_order:
            grads = {n: g.detach() for n, g in grads.items()}
        params = {
            n: w - (inner_lrs[n] if isinstance(inner_lrs, dict) else inner_lrs) * grads[n]
            for n, w in params.items()
        }
    return params


def task_query_loss(
    net: nn.Module,
    params: Params,
    inner_lrs: float | Params,
    steps: int,
    first_order: bool,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    query_y: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One task: adapt on the support set, then (query loss (), query logits (N*Q, N))."""
    adapted = adapt(net, params, inner_lrs, support_x, support_y, steps, first_order)
    logits = functional_call(net, adapted, (query_x,))
    return F.cross_entropy(logits, query_y), logits


def batch_query_loss(
    net: nn.Module,
    params: Params,
    inner_lrs: float | Params,
    steps: int,
    first_order: bool,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    query_y: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``task_query_loss`` vmapped over tasks: inputs (B, ...) -> losses (B,), logits (B, N*Q, N).

    The weights and learning rates are shared (not mapped); differentiate ``losses.mean()`` with
    ordinary autograd to get the meta-gradient.
    """

    def one_task(sx, sy, qx, qy):
        return task_query_loss(net, params, inner_lrs, steps, first_order, sx, sy, qx, qy)

    return vmap(one_task)(support_x, support_y, query_x, query_y)


BATCHING = {"folded": folded_batch_query_loss, "vmap": batch_query_loss}


CPU_QUERY_CHUNK = 2
"""Query sets scored per pass on a CPU by default: 2 tasks at a time ran 1.1-1.2x faster than all 8
at once (meta-batch 8, 5- and 20-way 1-shot, 2 cores), with a lower peak (bench/maml_speed.py)."""


class MAML:
    """Meta-learner: conv4 with an N-way head, meta-trained with MAML (Adam on the mean query loss).

    ``batching`` picks how the task batch runs: ``"vmap"`` maps the pure per-task function with
    ``torch.func.vmap`` (1.25x / 1.1x the per-task loop's tasks/s at 5-way / 20-way 1-shot on a
    2-core CPU); ``"folded"`` (default; 2.25x / 1.5x: see bench/maml_speed.py) runs the same maths
    with the task axis folded into the conv channels by hand (:mod:`cactus.learners.maml_folded`).
    Both equal the per-task loop's meta-gradient, and both keep every task's unrolled graph alive
    at once. ``query_chunk`` (folded only) scores the query sets that many tasks at a time after
    running every inner loop together (:func:`~cactus.learners.maml_folded.folded_meta_backward`); None
    means :data:`CPU_QUERY_CHUNK` on a CPU, where smaller query batches are both faster and smaller,
    and all at once on a GPU. Two more knobs trade speed for memory, with the same gradient:
    ``task_chunk`` runs the meta-batch that many tasks at a time (one Adam step); ``recompute``
    (folded, second order) keeps one inner step's graph at a time and rebuilds each in the backward
    pass.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        ways: int,
        filters: int = 32,
        downsample: str = "stride",
        inner_steps: int = 5,
        test_inner_steps: int = 50,
        inner_lr: float = 0.05,
        first_order: bool = False,
        learn_inner_lr: bool = False,
        meta_lr: float = 1e-3,
        device: torch.device | str = "cpu",
        seed: int = 0,
        predict_chunk: int | None = None,
        batching: str = "folded",
        task_chunk: int | None = None,
        query_chunk: int | None = None,
        recompute: bool = False,
    ) -> None:
        if batching not in BATCHING:
            raise ValueError(f"batching must be one of {sorted(BATCHING)}, not {batching!r}")
        torch.manual_seed(seed)
        self.batching = batching
        self.ways = ways
        self.inner_steps = inner_steps
        self.test_inner_steps = test_inner_steps
        self.first_order = first_order
        self.learn_inner_lr = learn_inner_lr
        self.predict_chunk = predict_chunk
        self.task_chunk = task_chunk
        self.query_chunk = query_chunk
        self.recompute = recompute
        self.device = torch.device(device)
        self.net = vmap_safe(ConvNet(in_channels, image_size, filters, ways, downsample)).to(self.device)
        self.inner_lrs: float | dict[str, nn.Parameter] = inner_lr
        trained = list(self.net.parameters())
        if learn_inner_lr:
            self.inner_lrs = {
                n: nn.Parameter(torch.full_like(p, inner_lr)) for n, p in self.net.named_parameters()
            }
            trained += list(self.inner_lrs.values())
        self.optimiser = torch.optim.Adam(trained, lr=meta_lr)

    def _params(self) -> Params:
        return dict(self.net.named_parameters())

    def _check(self, support_y: torch.Tensor) -> None:
        ways = int(support_y.max()) + 1
        if ways > self.ways:
            raise ValueError(f"tasks have {ways} classes but this MAML head has {self.ways} outputs")

    def meta_step(self, support_x, support_y, query_x, query_y) -> dict[str, float]:
        """One Adam step on the mean query loss of the task batch (shapes as in :mod:`cactus.learners.base`)."""
        self._check(support_y)
        tensors = [t.to(self.device) for t in (support_x, support_y, query_x, query_y)]
        batch = tensors[0].shape[0]
        chunk = self.task_chunk or batch
        self.optimiser.zero_grad()
        query_chunk = self.query_chunk or (CPU_QUERY_CHUNK if self.device.type == "cpu" else None)
        loss_sum, correct = 0.0, 0.0
        for start in range(0, batch, chunk):  # gradients of the chunks add up to the batch's
            part = [t[start : start + chunk] for t in tensors]
            how = (self.net, self._params(), self.inner_lrs, self.inner_steps, self.first_order, *part)
            if self.batching == "folded" and (query_chunk or self.recompute):
                losses, logits = folded_meta_backward(*how, 1 / batch, query_chunk or len(part[0]), self.recompute)
            else:
                losses, logits = BATCHING[self.batching](*how)
                (losses.sum() / batch).backward()
            loss_sum += losses.sum().item()
            correct += (logits.argmax(-1) == part[3]).float().mean(1).sum().item()
        self.optimiser.step()
        return {"loss": loss_sum / batch, "accuracy": correct / batch * 100}

    def predict(self, support_x, support_y, query_x) -> torch.Tensor:
        """Adapt ``test_inner_steps`` on each support set; labels (B, N*Q) int64 for the queries.

        Tasks are processed ``predict_chunk`` at a time to bound memory; by default as many as make
        about 800 support images (at most 32 tasks), which was fastest on a 2-core CPU (20-way 5-shot:
        8 tasks at a time ran 1.6x faster than 32).
        """
        self._check(support_y)
        params = {n: p.detach() for n, p in self._params().items()}
        lrs = self.inner_lrs
        if isinstance(lrs, dict):
            lrs = {n: t.detach() for n, t in lrs.items()}

        def one_task(sx, sy, qx):
            adapted = adapt(self.net, params, lrs, sx, sy, self.test_inner_steps, first_order=True)
            return functional_call(self.net, adapted, (qx,)).argmax(-1)

        def folded(sx, sy, qx):
            fast = {n: w.expand(sx.shape[0], *w.shape) for n, w in params.items()}
            columns = image_columns(self.net, sx)
            for _ in range(self.test_inner_steps):  # first order: no graph is kept between steps
                fast = {n: w.detach().requires_grad_() for n, w in fast.items()}
                with torch.enable_grad():
                    losses, _ = folded_task_losses(self.net, fast, sx, sy, columns)
                    grads = torch.autograd.grad(losses.sum(), list(fast.values()))
                fast = {
                    n: w - (lrs[n] if isinstance(lrs, dict) else lrs) * g
                    for (n, w), g in zip(fast.items(), grads, strict=True)
                }
            return folded_forward(self.net, fast, qx).argmax(-1)

        out = []
        with torch.no_grad():  # torch.func.grad still differentiates the inner loop
            step = self.predict_chunk or max(1, min(32, 800 // support_x.shape[1]))
            for start in range(0, support_x.shape[0], step):
                chunk = slice(start, start + step)
                sx, sy, qx = (t[chunk].to(self.device) for t in (support_x, support_y, query_x))
                out.append(vmap(one_task)(sx, sy, qx) if self.batching == "vmap" else folded(sx, sy, qx))
        return torch.cat(out).to(torch.int64)

    def state_dict(self) -> dict[str, Any]:
        """A deep copy (the optimiser's own state_dict shares its live moment tensors)."""
        state: dict[str, Any] = {"net": self.net.state_dict(), "optimiser": self.optimiser.state_dict()}
        if isinstance(self.inner_lrs, dict):
            state["inner_lrs"] = {n: t.detach() for n, t in self.inner_lrs.items()}
        return copy.deepcopy(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        if isinstance(self.inner_lrs, dict):
            with torch.no_grad():
                for n, t in self.inner_lrs.items():
                    t.copy_(state["inner_lrs"][n])
        self.optimiser.load_state_dict(state["optimiser"])

    def weights(self) -> dict[str, np.ndarray]:
        """Net weights, plus ``inner_lr/<param>`` arrays with ``learn_inner_lr``."""
        out = {k: v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}
        if isinstance(self.inner_lrs, dict):
            out.update({LR_PREFIX + n: t.detach().cpu().numpy() for n, t in self.inner_lrs.items()})
        return out

    def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        net = {k: torch.as_tensor(np.asarray(v)) for k, v in weights.items() if not k.startswith(LR_PREFIX)}
        self.net.load_state_dict(net)
        if isinstance(self.inner_lrs, dict):
            with torch.no_grad():
                for n, t in self.inner_lrs.items():
                    t.copy_(torch.as_tensor(np.asarray(weights[LR_PREFIX + n])))
