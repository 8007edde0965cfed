"""Data-parallel meta-training under ``torchrun`` or ``srun``, with torch.distributed.

Each of the W processes (ranks) takes B / W of the B tasks of every meta-batch; gradients are
averaged over the ranks (all-reduce) just before the optimiser step, as DistributedDataParallel
does, so W processes follow the trajectory of one process with the same global batch and seed (to
float tolerance). The learners need no change: the hook is an optimiser step pre-hook. gloo on
CPU, nccl on GPU. Only rank 0 takes locks, writes artifacts and checkpoints.

The world comes from the environment: ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (torchrun), or
``SLURM_PROCID`` / ``SLURM_NTASKS`` / ``SLURM_LOCALID`` under ``srun`` (then ``MASTER_ADDR`` and
``MASTER_PORT`` must be exported by the batch script).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from cactus.core.errors import CactusError


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a job: rank in [0, size), local_rank on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env(environ: Mapping[str, str] | None = None) -> World:
    """The World described by torchrun's or SLURM's variables; World() (one process) when neither is set."""
    env = os.environ if environ is None else environ
    try:
        if "WORLD_SIZE" in env and "RANK" in env:
            world = World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))
        elif int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
            world = World(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", "0")))
        else:
            return World()
    except ValueError:
        raise CactusError("RANK / WORLD_SIZE (or SLURM_PROCID / SLURM_NTASKS) are not integers") from None
    if world.size < 1 or not 0 <= world.rank < world.size:
        raise CactusError(f"rank {world.rank} of a world of {world.size} processes: inconsistent environment")
    return world


def current() -> World:
    """The World of the running process group (World() when none is initialised)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), world_from_env().local_rank)
    return World()


def setup(device, world: World | None = None):
    """Join the process group (gloo on CPU, nccl on CUDA); returns (World, the device of this rank).

    A no-op returning (World(), device) for a single process.
    """
    import torch
    import torch.distributed as dist

    world = world or world_from_env()
    if not world.distributed:
        return world, device
    if dist.is_initialized():
        return current(), device
    if "MASTER_ADDR" not in os.environ:
        raise CactusError("distributed run (SLURM_NTASKS > 1) without MASTER_ADDR / MASTER_PORT: export them in "
                          "the batch script (see examples/slurm/meta_srun.sbatch) or use torchrun")
    os.environ.setdefault("MASTER_PORT", "29500")
    os.environ["RANK"], os.environ["WORLD_SIZE"] = str(world.rank), str(world.size)
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, init_method="env://", rank=world.rank, world_size=world.size)
    return world, device


def teardown(wait: bool = False) -> None:
    """Leave the process group. ``wait`` (after a stage succeeded on every rank): first a barrier, so that no
    rank destroys its gloo connections while another still uses them (a peer sometimes aborted with
    "terminate called without an active exception" as the ranks left). Not after an error: the other ranks
    may be gone, and a barrier would wait for them until gloo's timeout."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def split_batch(meta_batch: int, world: World) -> slice:
    """This rank's share of the meta-batch: tasks [rank * B/W, (rank + 1) * B/W)."""
    if meta_batch % world.size:
        raise CactusError(f"--meta-batch {meta_batch}: not divisible by the {world.size} processes of this "
                          "distributed run; use a multiple of the world size")
    share = meta_batch // world.size
    return slice(world.rank * share, (world.rank + 1) * share)


def average_gradients(parameters) -> None:
    """All-reduce the gradients of ``parameters`` in place to their mean over the ranks (one flat buffer)."""
    import torch
    import torch.distributed as dist

    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def reduce_gradients_before_step(optimiser):
    """Register the all-reduce on ``optimiser`` (a torch optimiser): runs before every ``step()``."""

    def hook(opt, _args, _kwargs) -> None:
        average_gradients([p for group in opt.param_groups for p in group["params"]])

    return optimiser.register_step_pre_hook(hook)


def broadcast_module_state(tensors) -> None:
    """Make every rank start from rank 0's tensors (parameters and buffers), as DDP does."""
    import torch.distributed as dist

    for tensor in tensors:
        dist.broadcast(tensor.data, src=0)


def mean_over_ranks(values: list[float]) -> list[float]:
    """Average a few numbers (a loss, an accuracy) over the ranks."""
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return (tensor / dist.get_world_size()).cpu().tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (a stop request that must stop all ranks together)."""
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([1 if flag else 0], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank."""
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([1 if flag else 0], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())
