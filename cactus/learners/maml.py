"""MAML (Finn et al., 2017) as a meta-learner: the conv net, its Adam, and the calls the training loop makes.

The update itself is :mod:`cactus.learners.maml_step` (every task of the batch at once, on the folded
net of :mod:`cactus.learners.folded_net`). Batch norm keeps no running statistics, so it normalises
with the statistics of the batch it sees (a task's support set while adapting, its query set when
scoring), the same in training and at test. A task batch: support_x (B, N*K, C, H, W) float,
support_y (B, N*K) int64 in [0, N), query_x (B, N*Q, C, H, W) float, query_y (B, N*Q) int64.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from cactus.learners import maml_step
from cactus.learners.folded_net import Params, folded_forward
from cactus.learners.maml_per_task import per_task_meta_backward, per_task_predict
from cactus.learners.maml_step import InnerLoop, TaskBatch
from cactus.nets import ConvNet, forward_flops

LR_PREFIX = "inner_lr/"

CPU_QUERY_CHUNK = 2
"""Query sets scored per pass on a CPU by default (smaller query batches were both faster and smaller
on a 2-core CPU; measure with ``python bench/maml_speed.py --variants folded,folded_qall,folded_q1``)."""

# Support-image pixel positions adapted at once in predict: 800 images at 28x28. At 84x84 the former fixed 800
# images held 5 GB of activations.
PREDICT_POSITIONS = 800 * 28 * 28


#: Support-set FLOPs per task (forward, support images x the net's FLOPs per image) from which a CPU runs MAML's
#: tasks one at a time (:mod:`cactus.learners.maml_per_task`) rather than all at once on the folded net, in
#: training and in prediction. Per-task speed / folded on 2 cores (bench/maml_per_task.py, BENCHMARKS.md):
#: training 0.52-0.72 at 7-28 MFLOP (conv4-32, 28x28), 0.61-0.63 at 67 (conv4-32 pool 42x42x3, 5-way 1-shot),
#: 0.82-1.02 at 98 (conv4-64 pool 28x28, 5-way 1-shot, with 30-45% less memory), 1.58-1.66 at 337 (42x42x3,
#: 5-shot); prediction 0.31-0.33 at 7, 0.83-1.35 at 67, 1.69-1.76 at 337.
PER_TASK_SUPPORT_FLOPS = 90e6


class MAML:
    """Meta-learner: conv4 with an N-way head, meta-trained with MAML (Adam on the mean query loss).

    Memory knobs, each with the same meta-gradient (:func:`~cactus.learners.maml_step.meta_backward`):
    ``task_chunk`` runs the meta-batch that many tasks at a time (one Adam step); ``query_chunk``
    scores the query sets that many tasks at a time after running every inner loop together (None:
    :data:`CPU_QUERY_CHUNK` on a CPU, all at once on a GPU); ``recompute`` (second order) keeps one
    inner step's graph at a time and rebuilds each in the backward pass. ``predict_chunk``: tasks
    adapted at a time in :meth:`predict`. ``per_task``: run each task alone on the net itself,
    channels-last (:mod:`~cactus.learners.maml_per_task`; one task's graph at a time, same meta-gradient),
    in meta-training and prediction; None: decided per task batch (:meth:`run_per_task`).
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
        task_chunk: int | None = None,
        query_chunk: int | None = None,
        recompute: bool = False,
        per_task: bool | None = None,
    ) -> None:
        torch.manual_seed(seed)
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
        self.net = ConvNet(in_channels, image_size, filters, ways, downsample).to(self.device)
        self.per_task = per_task  # None: decided per task batch (run_per_task)
        # Forward FLOPs of one image; on a GPU the batch always pays, so it is not counted there.
        self.image_flops = forward_flops(self.net, in_channels, image_size) if self.device.type == "cpu" else 0
        self.inner_lrs: float | dict[str, nn.Parameter] = inner_lr
        trained = list(self.net.parameters())
        if learn_inner_lr:
            self.inner_lrs = {
                n: nn.Parameter(torch.full_like(p, inner_lr)) for n, p in self.net.named_parameters()
            }
            trained += list(self.inner_lrs.values())
        self.optimiser = torch.optim.Adam(trained, lr=meta_lr)

    def run_per_task(self, support_x: torch.Tensor, predicting: bool = False) -> bool:
        """Whether a task batch (support_x (B, N*K, C, H, W)) runs task by task: as ``per_task`` says, else on a
        CPU when its support sets reach ``PER_TASK_SUPPORT_FLOPS`` and no folded-path knob was given."""
        if self.per_task is not None:
            return self.per_task
        knobs = self.predict_chunk if predicting else (self.task_chunk or self.query_chunk or self.recompute)
        return not knobs and support_x.shape[1] * self.image_flops >= PER_TASK_SUPPORT_FLOPS

    def _params(self) -> Params:
        return dict(self.net.named_parameters())

    def _check(self, support_y: torch.Tensor) -> None:
        ways = int(support_y.max()) + 1
        if ways > self.ways:
            raise ValueError(f"tasks have {ways} classes but this MAML head has {self.ways} outputs")

    def meta_step(self, support_x, support_y, query_x, query_y) -> dict[str, float]:
        """One Adam step on the mean query loss of a task batch; returns {"loss", "accuracy" (%)}."""
        self._check(support_y)
        tensors = [t.to(self.device) for t in (support_x, support_y, query_x, query_y)]
        batch = tensors[0].shape[0]
        chunk = self.task_chunk or batch
        query_chunk = self.query_chunk or (CPU_QUERY_CHUNK if self.device.type == "cpu" else None)
        inner = InnerLoop(self.inner_steps, self.inner_lrs, self.first_order)
        per_task = self.run_per_task(tensors[0])
        self.optimiser.zero_grad()
        loss_sum, correct = 0.0, 0.0
        for start in range(0, batch, chunk):  # gradients of the chunks add up to the batch's
            part = TaskBatch(*(t[start : start + chunk] for t in tensors))
            if per_task:
                losses, logits = per_task_meta_backward(self.net, self._params(), inner, part, batch)
            else:
                losses, logits = maml_step.meta_backward(self.net, self._params(), inner, part, batch, query_chunk,
                                                         self.recompute)
            loss_sum += losses.sum().item()
            correct += (logits.argmax(-1) == part.query_y).float().mean(1).sum().item()
        self.optimiser.step()
        return {"loss": loss_sum / batch, "accuracy": correct / batch * 100}

    @torch.no_grad()
    def predict(self, support_x, support_y, query_x) -> torch.Tensor:
        """Adapt ``test_inner_steps`` on each support set (first order); labels (B, N*Q) int64 for the queries.

        Tasks run ``predict_chunk`` at a time to bound memory; by default as many as make about
        :data:`PREDICT_POSITIONS` support pixel positions (800 images at 28x28, 89 at 84x84; the
        activations grow with each image's area) and at most 32 tasks.
        """
        self._check(support_y)
        inner = InnerLoop(self.test_inner_steps, self.inner_lrs, first_order=True)
        if self.run_per_task(support_x, predicting=True):
            return per_task_predict(self.net, self._params(), inner, *(t.to(self.device) for t in
                                                                       (support_x, support_y, query_x)))
        out = []
        positions = support_x.shape[1] * support_x.shape[-2] * support_x.shape[-1]  # one task's support images
        step = self.predict_chunk or max(1, min(32, PREDICT_POSITIONS // positions))
        for start in range(0, support_x.shape[0], step):
            chunk = slice(start, start + step)
            sx, sy, qx = (t[chunk].to(self.device) for t in (support_x, support_y, query_x))
            adapted = maml_step.detached_adapt(self.net, self._params(), inner, sx, sy)
            out.append(folded_forward(self.net, adapted, qx).argmax(-1))
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
        """Net weights, plus ``inner_lr/<param>`` arrays (each of its parameter's shape) with ``learn_inner_lr``."""
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
