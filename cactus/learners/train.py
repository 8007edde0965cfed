"""The meta-training loop shared by every meta-learner: batches, curves, checkpoints, resume.

Iteration i trains on tasks ``(i * B + j) mod T`` for j < B, so the task order is a pure
function of the iteration and a resumed run sees exactly the tasks an uninterrupted one does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cactus.core import log
from cactus.core.distributed import World
from cactus.core.errors import CactusError
from cactus.core.progress import Progress
from cactus.core.training import CheckpointPolicy, set_torch_rng_states, torch_rng_states
from cactus.task_sampling import TaskSet


@dataclass
class Curves:
    """Training curve (per logged iteration) and validation curve, stored in the artifact."""

    iteration: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    val_iteration: list[int] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "curve/iteration": np.asarray(self.iteration, dtype=np.int64),
            "curve/loss": np.asarray(self.loss, dtype=np.float32),
            "curve/accuracy": np.asarray(self.accuracy, dtype=np.float32),
            "validation/iteration": np.asarray(self.val_iteration, dtype=np.int64),
            "validation/accuracy": np.asarray(self.val_accuracy, dtype=np.float32),
        }


class TaskBatches:
    """Turns task index arrays into image tensors on the device."""

    def __init__(self, images: np.ndarray, tasks: TaskSet, device: torch.device) -> None:
        from cactus.nets import images_to_tensor

        self.images = torch.as_tensor(images, device=device)  # (N, H, W, C) uint8
        self.tasks = tasks
        self.device = device
        self._to_float = images_to_tensor
        self.support_y = torch.as_tensor(tasks.support_labels(), device=device)
        self.query_y = torch.as_tensor(tasks.query_labels(), device=device)

    def batch(self, task_ids: np.ndarray) -> tuple[torch.Tensor, ...]:
        """support_x (B, N*K, C, H, W), support_y (B, N*K), query_x (B, N*Q, C, H, W), query_y (B, N*Q)."""
        support = torch.as_tensor(self.tasks.support[task_ids], device=self.device, dtype=torch.long)
        query = torch.as_tensor(self.tasks.query[task_ids], device=self.device, dtype=torch.long)
        b = len(task_ids)
        return (
            self._to_float(self.images[support]),
            self.support_y.expand(b, -1),
            self._to_float(self.images[query]),
            self.query_y.expand(b, -1),
        )


def accuracy_on(learner, batches: TaskBatches, task_ids: np.ndarray, chunk: int = 25) -> np.ndarray:
    """Per-task query accuracy (T,) in % of ``learner.predict`` on the given tasks."""
    scores = []
    for start in range(0, len(task_ids), chunk):
        support_x, support_y, query_x, query_y = batches.batch(task_ids[start : start + chunk])
        predicted = learner.predict(support_x, support_y, query_x)
        scores.append((predicted == query_y).float().mean(dim=1).cpu().numpy() * 100)
    return np.concatenate(scores) if scores else np.zeros(0)


def meta_train(
    learner,
    batches: TaskBatches,
    train_ids: np.ndarray,
    iterations: int,
    meta_batch: int,
    checkpoint: Path,
    key: str,
    resume: bool = False,
    checkpoint_every_s: float = 300.0,
    validate: Callable[[], float] | None = None,
    validate_every: int = 500,
    log_every: int = 10,
    world: World | None = None,
) -> Curves:
    """Run ``iterations`` meta-updates of ``meta_batch`` tasks each, drawn in order from ``train_ids``.

    Checkpoints go to ``checkpoint`` every ``checkpoint_every_s`` seconds and on SIGTERM / SIGINT
    (then :class:`cactus.core.training.Stopped` is raised); ``resume`` continues from it (``key``:
    the artifact's, a checkpoint of another configuration is refused). ``world`` (a
    :class:`cactus.core.distributed.World` of several ranks): this rank trains on its share of each
    meta-batch, gradients are averaged over the ranks before each optimiser step, and only rank 0
    validates and saves checkpoints; the curves are rank 0's (losses averaged).
    """
    from cactus.core import distributed

    world = world or World()
    checkpoints = CheckpointPolicy(checkpoint, key, resume, checkpoint_every_s, world)
    share = distributed.split_batch(meta_batch, world)
    curves = Curves()
    window: list[tuple[float, float]] = []

    def load(saved: dict) -> None:
        nonlocal curves
        learner.load_state_dict(saved["learner"])
        curves = Curves(**saved["curves"])
        window[:] = [(float(loss), float(acc)) for loss, acc in saved["window"]]
        set_torch_rng_states(saved["torch_rng"])

    saved = checkpoints.restore("meta-learner", iterations, lambda s: int(s["iteration"]), load)
    start = int(saved["iteration"]) if saved is not None else 0
    if saved is not None:
        log.info(f"meta: resuming from {checkpoints.path} at iteration {start}")
    done = start

    def state() -> dict:
        return {"iteration": done, "learner": learner.state_dict(), "curves": vars(curves),
                "window": [list(p) for p in window], "torch_rng": torch_rng_states()}

    hook = None
    if world.distributed:
        parameters = [p for group in learner.optimiser.param_groups for p in group["params"]]
        distributed.broadcast_module_state(parameters)
        hook = distributed.reduce_gradients_before_step(learner.optimiser)
    progress = Progress(range(start, iterations), iterations - start, "meta")
    with checkpoints.running(state) as loop:
        for iteration in progress:
            ids = train_ids[(iteration * meta_batch + np.arange(meta_batch)) % len(train_ids)][share]
            figures = learner.meta_step(*batches.batch(ids))
            if world.distributed:
                figures["loss"], figures["accuracy"] = distributed.mean_over_ranks(
                    [figures["loss"], figures["accuracy"]])
            if not np.isfinite(figures["loss"]):
                raise CactusError(f"meta: training diverged at iteration {iteration + 1} (the loss is "
                                  f"{figures['loss']}); lower --meta-lr (or MAML's --inner-lr); nothing was written")
            window.append((figures["loss"], figures["accuracy"]))
            done = iteration + 1
            if done % log_every == 0 or done == iterations:
                loss, acc = np.mean(window, axis=0)
                curves.iteration.append(done)
                curves.loss.append(float(loss))
                curves.accuracy.append(float(acc))
                progress.set(loss=float(loss), acc=float(acc))
                window.clear()
            if validate is not None and world.is_main and (done % validate_every == 0 or done == iterations):
                curves.val_iteration.append(done)
                curves.val_accuracy.append(float(validate()))
                progress.set(val=curves.val_accuracy[-1])
            loop.after_step(done)
    if hook is not None:
        hook.remove()
    return curves
