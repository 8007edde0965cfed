"""Options of ``cactus rule meta-train`` that change the result (what the artifact key hashes)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cactus.core.errors import CactusError


@dataclass(frozen=True)
class RuleConfig:
    """Meta-training options.

    An inner run trains a fresh base MLP (width and depth drawn from the ranges) for ``length``
    unsupervised steps, where ``length`` grows from ``unroll_min`` to ``unroll`` over the first
    ``curriculum`` fraction of the outer steps. Each outer step unrolls ``window`` steps of the
    current inner run, scores the meta-objective and updates theta (truncated backpropagation).
    """

    width_range: tuple[int, int] = (64, 128)
    depth_range: tuple[int, int] = (2, 3)
    unroll: int = 200
    unroll_min: int = 20
    window: int = 10
    outer_steps: int = 2000
    meta_lr: float = 1e-3
    clip: float = 1.0
    seed: int = 0
    batch_size: int = 64
    pool_classes: int = 100
    ways: int = 10
    shots: int = 5
    queries: int = 5
    hidden: int = 16
    blocks: int = 2
    curriculum: float = 0.5

    def __post_init__(self) -> None:
        for name in ("width_range", "depth_range"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise CactusError(f"--{name.replace('_', '-')} {lo},{hi}: expected 1 <= low <= high")
        positive = ("unroll", "unroll_min", "window", "outer_steps", "meta_lr", "clip", "batch_size",
                    "pool_classes", "ways", "shots", "queries", "hidden", "blocks")
        for name in positive:
            if not getattr(self, name) > 0:
                raise CactusError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be positive")
        if self.window > self.unroll_min or self.unroll_min > self.unroll:
            raise CactusError(f"--window {self.window}: expected window <= unroll-min ({self.unroll_min}) "
                              f"<= unroll ({self.unroll})")
        if self.pool_classes < self.ways:
            raise CactusError(f"--pool-classes {self.pool_classes}: must be at least --ways {self.ways}")

    def run_length(self, outer_step: int) -> int:
        """Inner-run length (a multiple of the window) for a run starting at ``outer_step``."""
        ramp = max(1.0, self.curriculum * self.outer_steps)
        length = self.unroll_min + (self.unroll - self.unroll_min) * min(1.0, outer_step / ramp)
        return max(self.window, int(round(length / self.window)) * self.window)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["width_range"], data["depth_range"] = list(self.width_range), list(self.depth_range)
        return data
