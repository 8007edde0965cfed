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
