"""MAML's task batch folded into the conv net's channels: the batching ``vmap`` does, written out.

``torch.func.vmap`` runs a conv whose weights differ per task as one grouped conv (task axis folded
into the channel axis, ``groups=B``). Doing that fold by hand for the whole conv4 net keeps every
task's activations in one (S, B*C, H, W) tensor: batch norm with per-task statistics is then the
ordinary fused batch norm over B*C channels, and the per-task inner gradients come from one
``torch.autograd.grad`` of the summed task losses (tasks share nothing, so d(sum)/d(task weights)
is each task's own gradient). Same maths as the per-task function of :mod:`cactus.learners.maml`
mapped with ``vmap``, without the per-op transform overhead and with the fused batch norm, whose
second derivative is wrong under ``vmap`` in torch 2.13.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

Params = dict[str, torch.Tensor]


Columns = tuple[torch.Tensor, int, int]


def image_columns(net: nn.Module, images: torch.Tensor) -> Columns:
    """The first conv's input patches of images (B, S, C, H, W): ((S, B, C*k*k, L), H', W').

    The images are constants, so their patches can be computed once and reused by every inner step
    (unfolding them is a third of the cost of a test-time adaptation step otherwise).
    """
    layer = net.features[0][0]
    if not isinstance(layer, nn.Conv2d):
        raise TypeError("folded_forward expects the net to start with a conv")
    batch, shots, channels, height, width = images.shape
    h = images.transpose(0, 1).reshape(shots, batch * channels, height, width)
    cols = F.unfold(h, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # (S, B*C*k*k, L)
    out_h = (height + 2 * layer.padding[0] - layer.dilation[0] * (layer.kernel_size[0] - 1) - 1) // layer.stride[0] + 1
    return cols.view(shots, batch, -1, cols.shape[-1]), out_h, cols.shape[-1] // out_h


def _data_conv(columns: Columns, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The first conv, on the images' patches: -> (S, B*O, H', W') as patches @ weights.

    Every derivative of this conv (the inner gradient and its own derivative) is then a batched
    matmul; the grouped conv's double backward is several times slower here, with one input
    channel per group.
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
            elif hasattr(layer, "eps") and weight is not None:  # batch norm on the batch's own statistics
                h = F.batch_norm(h, None, None, weight.reshape(-1), bias.reshape(-1), True, 0.0, layer.eps)
            else:
                raise TypeError(f"folded_forward does not know layer {type(layer).__name__}")
    features = h.mean((2, 3)).view(shots, batch, -1).transpose(0, 1)  # (B, S, filters)
    return torch.baddbmm(params["head.bias"].unsqueeze(1), features, params["head.weight"].transpose(1, 2))


def folded_task_losses(
    net: nn.Module, params: Params, images: torch.Tensor, labels: torch.Tensor, columns: Columns | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """images (B, S, C, H, W), labels (B, S) -> per-task mean cross-entropy (B,), logits (B, S, N)."""
    logits = folded_forward(net, params, images, columns)
    batch, shots, ways = logits.shape
    losses = F.cross_entropy(logits.reshape(-1, ways), labels.reshape(-1), reduction="none")
    return losses.view(batch, shots).mean(1), logits


def folded_adapt(
    net: nn.Module,
    params: Params,
    inner_lrs: float | Params,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    steps: int,
    first_order: bool = False,
) -> Params:
    """Every task's inner loop at once: shared params (*shape) -> adapted per-task params (B, *shape)."""
    batch = support_x.shape[0]
    fast = {n: w.expand(batch, *w.shape) for n, w in params.items()}
    columns = image_columns(net, support_x)
    for _ in range(steps):
        fast = inner_step(net, fast, inner_lrs, support_x, support_y, columns, create_graph=not first_order)
    return fast


def inner_step(
    net: nn.Module, fast: Params, inner_lrs: float | Params, support_x: torch.Tensor, support_y: torch.Tensor,
    columns: Columns, create_graph: bool,
) -> Params:
    """One inner SGD step of every task: per-task params (B, *shape) -> (B, *shape)."""
    losses, _ = folded_task_losses(net, fast, support_x, support_y, columns)
    grads = torch.autograd.grad(losses.sum(), list(fast.values()), create_graph=create_graph)
    return {
        n: w - (inner_lrs[n] if isinstance(inner_lrs, dict) else inner_lrs) * g
        for (n, w), g in zip(fast.items(), grads, strict=True)
    }


def folded_batch_query_loss(
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
    """Drop-in for :func:`cactus.learners.maml.batch_query_loss`: losses (B,), logits (B, N*Q, N)."""
    adapted = folded_adapt(net, params, inner_lrs, support_x, support_y, steps, first_order)
    return folded_task_losses(net, adapted, query_x, query_y)


def folded_meta_backward(
    net: nn.Module,
    params: Params,
    inner_lrs: float | Params,
    steps: int,
    first_order: bool,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    query_y: torch.Tensor,
    scale: float,
    query_chunk: int,
    recompute: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accumulate ``scale * d(sum of query losses)/d(params, inner_lrs)`` into ``.grad``; return losses, logits.

    The same meta-gradient as differentiating :func:`folded_batch_query_loss`, computed in two
    phases to bound memory: every task's inner loop runs at once (the support sets are small, so
    its unrolled graph is too), then the query sets, which hold most of the activations, are scored
    ``query_chunk`` tasks at a time, each chunk's graph freed once it has given the gradient with
    respect to its adapted weights; one backward pass carries those gradients through the inner loop.
    ``recompute`` (second order only) keeps one inner step's graph at a time instead of all of them
    (:func:`_recomputing_meta_backward`).
    """
    if recompute and not first_order:
        return _recomputing_meta_backward(net, params, inner_lrs, steps, support_x, support_y, query_x, query_y,
                                          scale, query_chunk)
    adapted = folded_adapt(net, params, inner_lrs, support_x, support_y, steps, first_order)
    losses, logits, query_grads = _query_gradients(net, adapted, query_x, query_y, scale, query_chunk)
    names = list(adapted)
    torch.autograd.backward([adapted[n] for n in names], [query_grads[n] for n in names])
    return losses, logits


def _query_gradients(
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
        chunk_losses, chunk_logits = folded_task_losses(net, leaves, query_x[part], query_y[part])
        chunk_grads.append(torch.autograd.grad(chunk_losses.sum() * scale, [leaves[n] for n in names]))
        losses.append(chunk_losses.detach())
        logits.append(chunk_logits.detach())
    grads = {n: torch.cat([g[i] for g in chunk_grads]) for i, n in enumerate(names)}
    return torch.cat(losses), torch.cat(logits), grads


def _recomputing_meta_backward(
    net: nn.Module,
    params: Params,
    inner_lrs: float | Params,
    steps: int,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    query_y: torch.Tensor,
    scale: float,
    query_chunk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`folded_meta_backward` (second order) holding one inner step's graph at a time.

    The inner loop first runs without a graph, keeping only each step's weights (B, *shape); the
    query gradient g_K at the adapted weights is then carried back one step at a time, each step's
    graph rebuilt from its stored weights and differentiated once (g_k = g_{k+1} (I - lr H_k), plus
    the learnt learning rates' share) and freed. The same meta-gradient as the unrolled graph, for
    the price of running the inner loop's forward and backward twice.
    """
    batch = support_x.shape[0]
    columns = image_columns(net, support_x)
    detached_lrs = {n: t.detach() for n, t in inner_lrs.items()} if isinstance(inner_lrs, dict) else inner_lrs
    fast = {n: w.detach().expand(batch, *w.shape) for n, w in params.items()}
    trajectory = [fast]
    for _ in range(steps):
        leaves = {n: w.detach().requires_grad_() for n, w in fast.items()}
        with torch.enable_grad():
            fast = inner_step(net, leaves, detached_lrs, support_x, support_y, columns, create_graph=False)
        fast = {n: w.detach() for n, w in fast.items()}
        trajectory.append(fast)
    losses, logits, grads = _query_gradients(net, trajectory[-1], query_x, query_y, scale, query_chunk)
    names = list(params)
    learnt_lrs = list(inner_lrs.values()) if isinstance(inner_lrs, dict) else []
    for k in reversed(range(1, steps)):
        start = {n: trajectory[k][n].requires_grad_() for n in names}
        stepped = inner_step(net, start, inner_lrs, support_x, support_y, columns, create_graph=True)
        torch.autograd.backward([stepped[n] for n in names], [grads[n] for n in names],
                                inputs=[start[n] for n in names] + learnt_lrs)
        grads = {n: start[n].grad for n in names}
        del stepped, start
        trajectory[k] = None  # type: ignore[call-overload]  # this step's weights are no longer needed
    if steps:
        start = {n: w.expand(batch, *w.shape) for n, w in params.items()}  # step 0 starts at the meta-params
        stepped = inner_step(net, start, inner_lrs, support_x, support_y, columns, create_graph=True)
        torch.autograd.backward([stepped[n] for n in names], [grads[n] for n in names])
    else:
        for n, w in params.items():
            w.backward(grads[n].sum(0))
    return losses, logits
