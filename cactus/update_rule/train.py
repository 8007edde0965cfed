"""Meta-training theta by truncated backpropagation through unrolled unsupervised training.

One outer step = unroll ``window`` unsupervised steps of the current inner run (gradients kept),
score the ridge meta-objective on a few-shot task from the run's classes, backpropagate to theta,
clip, update with Adam, then detach the base model and go on. Guards: a non-finite loss or
gradient skips the update and restarts the inner run; an inner run whose features collapse (units
almost perfectly correlated) is restarted; updates inside the rule are normalised (see
``embeddings/learned_rule.py``); the unroll length follows a curriculum.

Checkpoints (:mod:`cactus.core.training`: every N seconds and on SIGTERM / SIGINT) hold theta, the
Adam state, the base model, the counters and the curve. Every random draw is keyed by those
counters (``cactus/update_rule/sampling.py``), so ``--resume`` continues to the same result as an
uninterrupted run of the same seed.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from cactus.core import log
from cactus.core.errors import CactusError
from cactus.core.training import CheckpointPolicy, checkpoint_path
from cactus.update_rule.config import RuleConfig
from cactus.update_rule.sampling import InnerRun, draw_batches, draw_run, draw_task

COLLAPSE_CORRELATION = 0.95
COUNTERS = ("outer", "run_index", "run_step", "run_length", "skipped", "resets")


def checkpoint_key(config: RuleConfig, inputs: list[str]) -> str:
    """sha256 of the options and inputs a checkpoint must share to be resumed (``outer_steps`` may change)."""
    options = {k: v for k, v in config.as_dict().items() if k != "outer_steps"}
    return hashlib.sha256(json.dumps([options, inputs], sort_keys=True).encode()).hexdigest()


class MetaTrainer:
    """Meta-train an update network on labelled meta-train images.

    pixels: (N, P) float32 in [0, 1], the flattened meta-train images; labels: (N,) their class ids.
    """

    def __init__(self, config: RuleConfig, pixels: np.ndarray, labels: np.ndarray) -> None:
        import torch

        from embeddings.learned_rule import make_update_network

        self.config = config
        self.pixels = torch.as_tensor(np.ascontiguousarray(pixels, dtype=np.float32))
        self.labels = np.asarray(labels)
        if len(np.unique(self.labels)) < config.ways:
            raise CactusError(f"--ways {config.ways}: the meta-train split has only "
                              f"{len(np.unique(self.labels))} classes")
        per_class = np.bincount(np.unique(self.labels, return_inverse=True)[1]).min()
        if per_class < config.shots + config.queries:
            raise CactusError(f"--shots/--queries: some meta-train class has only {per_class} images")
        torch.manual_seed(config.seed)
        self.theta = make_update_network(config.hidden, config.blocks)
        self.optimiser = torch.optim.Adam(self.theta.parameters(), lr=config.meta_lr)
        self.counters = {name: 0 for name in COUNTERS}
        self.counters["run_index"] = -1
        self.base = None
        self.curve: dict[str, list] = {"step": [], "meta_objective": [], "inner_step": [], "grad_norm": []}
        self._session_start = time.monotonic()
        self.seconds = 0.0  # meta-training wall time, summed over resumed sessions

    # -- the loop -----------------------------------------------------------------------------
    def train(self, checkpoints: CheckpointPolicy | None = None) -> None:
        """Run to ``outer_steps``, checkpointing as ``checkpoints`` says (default: never).

        On SIGTERM / SIGINT the checkpoint is saved and :class:`cactus.core.training.Stopped` raised.
        """
        from cactus.core.progress import Progress

        remaining = range(self.counters["outer"], self.config.outer_steps)
        progress = Progress(remaining, total=len(remaining), description="meta-train")
        with (checkpoints or CheckpointPolicy()).running(self.checkpoint_state) as loop:
            for _ in progress:
                loss = self.outer_step()
                progress.set(meta_objective=float(np.mean(self.curve["meta_objective"][-50:])), last=loss)
                loop.after_step(self.counters["outer"])

    def _current_run(self) -> InnerRun:
        c, cfg = self.counters, self.config
        return draw_run(cfg.seed, c["run_index"], self.labels, cfg.width_range, cfg.depth_range,
                        cfg.pool_classes, c["run_length"])

    def _start_run(self) -> None:
        import torch

        from embeddings.learned_rule import init_base

        c, cfg = self.counters, self.config
        c["run_index"] += 1
        c["run_step"] = 0
        c["run_length"] = cfg.run_length(c["outer"])
        run = self._current_run()
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + c["run_index"])
        sizes = [self.pixels.shape[1]] + [run.width] * run.depth
        self.base = init_base(sizes, cfg.hidden, generator)

    def outer_step(self) -> float:
        """Unroll one truncation window, update theta; returns the meta-objective."""
        import torch

        from embeddings.learned_rule import meta_objective, unsupervised_step

        c, cfg = self.counters, self.config
        if self.base is None or c["run_step"] >= c["run_length"]:
            self._start_run()
        run = self._current_run()
        rows = draw_batches(cfg.seed, run, c["run_step"], cfg.window, min(cfg.batch_size, len(run.pool)))
        state = self.base
        for k in range(cfg.window):
            state = unsupervised_step(self.theta, state, self.pixels[rows[k]])
        support, s_labels, query, q_labels = draw_task(cfg.seed, run, c["run_step"], cfg.ways, cfg.shots,
                                                       cfg.queries)
        loss = meta_objective(state.weights, self.pixels[support], torch.as_tensor(s_labels),
                              self.pixels[query], torch.as_tensor(q_labels), cfg.ways)
        self.optimiser.zero_grad()
        value = float(loss.detach())
        grad_norm = float("nan")
        if np.isfinite(value):
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.theta.parameters(), cfg.clip))
        if np.isfinite(grad_norm):
            self.optimiser.step()
        else:
            c["skipped"] += 1
        self.base = state.detach()
        if not np.isfinite(value) or self._collapsed(support, query):
            self.base = None
            c["resets"] += 1
        self.curve["step"].append(c["outer"])
        self.curve["meta_objective"].append(value)
        self.curve["inner_step"].append(c["run_step"] + cfg.window)
        self.curve["grad_norm"].append(grad_norm)
        c["run_step"] += cfg.window
        c["outer"] += 1
        return value

    def _collapsed(self, support: np.ndarray, query: np.ndarray) -> bool:
        """True when the base model is non-finite or its final units are almost all alike."""
        import torch

        from embeddings.learned_rule import forward

        if not all(bool(torch.isfinite(t).all()) for t in self.base.tensors()):
            return True
        with torch.no_grad():
            _, xs = forward(self.base.weights, self.pixels[np.concatenate([support, query])])
            features = xs[-1] - xs[-1].mean(dim=0)
            features = features / (features.norm(dim=0, keepdim=True) + 1e-8)
            correlation = (features.T @ features).abs()
            off = correlation.sum() - correlation.diagonal().sum()
            n = correlation.shape[0]
        return bool(off / max(n * (n - 1), 1) > COLLAPSE_CORRELATION)

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint holds: theta, the Adam state, the counters, the base model and the curve."""
        return {
            "outer_steps": self.config.outer_steps,
            "theta": self.theta.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "counters": dict(self.counters),
            "base": None if self.base is None else {
                "weights": self.base.weights, "feedback": self.base.feedback, "memory": self.base.memory},
            "curve": {k: list(map(float, v)) for k, v in self.curve.items()},
            "seconds": self.seconds + time.monotonic() - self._session_start,
        }

    def restore(self, checkpoints: CheckpointPolicy) -> bool:
        """With ``checkpoints.resume``: continue from its checkpoint; False when there is none."""
        saved = checkpoints.restore("update-rule trainer", self.config.outer_steps,
                                    lambda s: int(s["counters"]["outer"]), self._load)
        return saved is not None

    def _load(self, saved: dict[str, Any]) -> None:
        from embeddings.learned_rule import BaseState

        written_for = int(saved["outer_steps"])
        self.theta.load_state_dict(saved["theta"])
        self.optimiser.load_state_dict(saved["optimiser"])
        self.counters = {name: int(saved["counters"][name]) for name in COUNTERS}
        base = saved["base"]
        self.base = None if base is None else BaseState(list(base["weights"]), list(base["feedback"]),
                                                        list(base["memory"]))
        curve = {k: list(saved["curve"][k]) for k in self.curve}
        curve["step"] = [int(x) for x in curve["step"]]
        curve["inner_step"] = [int(x) for x in curve["inner_step"]]
        self.curve = curve
        self.seconds = float(saved["seconds"])
        self._session_start = time.monotonic()
        if written_for != self.config.outer_steps:
            # Lengthening or shortening a run is allowed; the curriculum then differs from a fresh run's.
            log.warn(f"--resume: checkpoint was written for --outer-steps {written_for}, "
                     f"continuing to {self.config.outer_steps}")

    # -- the artifact ---------------------------------------------------------------------------
    def write(self, out: Path, inputs: list[str], attrs: dict) -> str:
        """The rule artifact: theta/<name>, curve/step, curve/meta_objective (+ inner step, grad norm)."""
        from cactus.core.store import write_artifact
        from embeddings.learned_rule import theta_state

        arrays = {f"theta/{k}": v for k, v in theta_state(self.theta).items()}
        arrays["curve/step"] = np.asarray(self.curve["step"], dtype=np.int64)
        arrays["curve/meta_objective"] = np.asarray(self.curve["meta_objective"], dtype=np.float64)
        arrays["curve/inner_step"] = np.asarray(self.curve["inner_step"], dtype=np.int64)
        arrays["curve/grad_norm"] = np.asarray(self.curve["grad_norm"], dtype=np.float64)
        extra = {"wall_seconds": round(self.seconds + time.monotonic() - self._session_start, 1),
                 "skipped_updates": self.counters["skipped"], "inner_runs": self.counters["run_index"] + 1,
                 "collapse_resets": self.counters["resets"], **attrs}
        return write_artifact(out, stage="rule", config=self.config.as_dict(), inputs=inputs, arrays=arrays,
                              attrs=extra)


def meta_train(config: RuleConfig, pixels: np.ndarray, labels: np.ndarray, out: Path, inputs: list[str],
               attrs: dict, checkpoint: Path | None = None, checkpoint_every_s: float = 300.0,
               resume: bool = False) -> dict:
    """Meta-train and write the rule artifact; returns a summary.

    Checkpoints go to ``checkpoint`` (default ``OUT.ckpt``) every ``checkpoint_every_s`` seconds and on
    SIGTERM / SIGINT (then :class:`cactus.core.training.Stopped` is raised); ``resume`` continues from
    it. The checkpoint is removed once the artifact is written.
    """
    checkpoint = Path(checkpoint) if checkpoint is not None else checkpoint_path(out)
    checkpoints = CheckpointPolicy(checkpoint, checkpoint_key(config, inputs), resume, checkpoint_every_s)
    trainer = MetaTrainer(config, pixels, labels)
    if trainer.restore(checkpoints):
        log.info(f"meta-train: resuming from {checkpoint} at outer step {trainer.counters['outer']}")
    trainer.train(checkpoints)
    seconds = trainer.seconds + time.monotonic() - trainer._session_start
    key = trainer.write(out, inputs, attrs)
    checkpoint.unlink(missing_ok=True)
    curve = np.asarray(trainer.curve["meta_objective"])
    tenth = max(1, len(curve) // 10)
    return {"out": str(out), "key": key, "outer_steps": config.outer_steps, "seconds": round(seconds, 1),
            "meta_objective_first": float(np.nanmean(curve[:tenth])),
            "meta_objective_last": float(np.nanmean(curve[-tenth:])),
            "inner_runs": trainer.counters["run_index"] + 1, "skipped_updates": trainer.counters["skipped"],
            "collapse_resets": trainer.counters["resets"]}
