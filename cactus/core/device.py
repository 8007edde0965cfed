"""``--device auto|cpu|cuda`` and ``--threads`` for every torch stage."""

from __future__ import annotations

from cactus.core.errors import CactusError


def resolve_device(name: str = "auto", threads: int | None = None):
    """Return a torch.device; ``auto`` picks CUDA when available. Sets the CPU thread count if given."""
    import torch

    if threads is not None:
        if threads < 1:
            raise CactusError(f"--threads {threads}: must be at least 1")
        torch.set_num_threads(threads)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CactusError(f"--device {name}: no CUDA GPU is available on this machine")
        return torch.device(name)
    raise CactusError(f"--device {name!r}: expected auto, cpu or cuda")


def allocated_threads(environ: dict[str, str] | None = None) -> tuple[int, str]:
    """(CPU threads this process may use, where that number came from), first found of:
    ``OMP_NUM_THREADS``, ``SLURM_CPUS_PER_TASK``, the CPU affinity mask (``os.sched_getaffinity``,
    which cgroup / taskset / SLURM allocations narrow), ``os.cpu_count()``.
    """
    import os

    env = os.environ if environ is None else environ
    for name in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        value = env.get(name, "").strip()
        if value.isdigit() and int(value) >= 1:
            return int(value), name
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0))), "affinity"
    return max(1, os.cpu_count() or 1), "cpu_count"


def auto_device_name() -> str:
    """``cuda`` when a CUDA GPU is available, else ``cpu`` (what ``--device auto`` resolves to)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
