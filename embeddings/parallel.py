"""Data-parallel training of the neural encoders under ``torchrun`` (gloo on CPU, nccl on GPU).

Each of the W ranks takes B / W rows of every mini-batch of B (:func:`share`); gradients are
averaged over the ranks before each optimiser step (``cactus.core.distributed``), as
DistributedDataParallel does. That equals one process with the same batch only when nothing
couples the rows of a batch except the loss mean, so an encoder that takes part must:

- draw every random number for the whole batch on every rank, then keep its share (the ranks
  hold the same generator state, so they draw the same numbers);
- normalise with statistics of the whole batch: :func:`sync_batchnorm` swaps batch norm for
  :class:`SyncedBatchNorm` (all-reduced mean and variance, differentiable);
- compute a loss that mixes rows (NT-Xent) on the rows of every rank (:func:`gather_rows`) and
  scale it by W (:func:`world_size`) before ``backward``, since each rank's gradient then only
  reaches its own rows.

With one process every helper here is the identity, so a single-process fit is unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cactus.core.distributed import World
from embeddings.fit_state import TrainingState, current_session

if TYPE_CHECKING:
    import torch


def world() -> World:
    """The world of the running fit (World() outside a distributed ``cactus embed``)."""
    return current_session().world


def world_size() -> int:
    return world().size


def share(batch: int) -> slice:
    """This rank's rows [rank * B/W, (rank + 1) * B/W) of a batch of ``batch`` rows."""
    from cactus.core.distributed import split_batch

    return split_batch(batch, world())


def gather_rows(local: torch.Tensor) -> torch.Tensor:
    """(b, ...) rows of this rank -> (W * b, ...) rows of every rank in rank order.

    Only this rank's rows carry gradients; the others are copies (see the module notes on scaling).
    """
    import torch
    import torch.distributed as dist

    if not world().distributed:
        return local
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local.detach().contiguous())
    parts[dist.get_rank()] = local
    return torch.cat(parts)


def average(values: list[float]) -> list[float]:
    """The mean of each value over the ranks (the values themselves with one process)."""
    from cactus.core.distributed import mean_over_ranks

    return mean_over_ranks(values) if world().distributed else list(values)


def start(state: TrainingState) -> list[Any]:
    """Make every rank start from rank 0's modules and average gradients before each optimiser step.

    Returns the hook handles (remove them when training ends); nothing with one process.
    """
    import torch
    from torch import nn

    from cactus.core import distributed

    if not world().distributed:
        return []
    handles = []
    for obj in state.objects.values():
        if isinstance(obj, nn.Module):
            distributed.broadcast_module_state([*obj.parameters(), *obj.buffers()])
        elif isinstance(obj, torch.optim.Optimizer):
            handles.append(distributed.reduce_gradients_before_step(obj))
    return handles


def _synced_batchnorm_class():
    import torch
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_fn
    from torch import nn

    class SyncedBatchNorm(nn.modules.batchnorm._BatchNorm):
        """Batch norm whose training statistics are those of the whole batch over every rank.

        Input (B/W, C) or (B/W, C, H, W). Used in training mode with gradients enabled inside a
        distributed run; otherwise exactly ``nn.BatchNorm1d`` / ``2d`` (same state-dict keys). The
        mean and variance are all-reduced with ``torch.distributed.nn`` so gradients flow through
        them to every rank's rows.
        """

        def _check_input_dim(self, input: torch.Tensor) -> None:
            if input.dim() not in (2, 4):
                raise ValueError(f"expected 2D or 4D input (got {input.dim()}D input)")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            active = self.training and torch.is_grad_enabled() and dist.is_initialized()
            if not active or dist.get_world_size() == 1:
                return super().forward(x)
            self._check_input_dim(x)
            dims = [0, *range(2, x.dim())]
            shape = (1, -1) + (1,) * (x.dim() - 2)
            count = x.numel() // x.shape[1] * dist.get_world_size()
            mean = dist_fn.all_reduce(x.sum(dims)) / count
            centred = x - mean.view(shape)
            var = dist_fn.all_reduce(centred.pow(2).sum(dims)) / count
            out = centred * torch.rsqrt(var + self.eps).view(shape)
            if self.affine:
                out = out * self.weight.view(shape) + self.bias.view(shape)
            if self.track_running_stats:
                self._update_running_stats(mean.detach(), var.detach(), count)
            return out

        @torch.no_grad()
        def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
            self.num_batches_tracked.add_(1)
            momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            self.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
            self.running_var.mul_(1 - momentum).add_(var * count / max(count - 1, 1), alpha=momentum)

    return SyncedBatchNorm


def sync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """In a distributed run, replace every BatchNorm1d / 2d of ``module`` by a SyncedBatchNorm (same state).

    Call it before moving ``module`` to its device and building the optimiser (the parameters are new
    objects). One process: ``module`` unchanged.
    """
    from torch import nn

    if not world().distributed:
        return module
    synced = _synced_batchnorm_class()
    for name, child in module.named_children():
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
            replacement = synced(child.num_features, child.eps, child.momentum, child.affine,
                                 child.track_running_stats)
            replacement.load_state_dict(child.state_dict())
            setattr(module, name, replacement)
        else:
            sync_batchnorm(child)
    return module
