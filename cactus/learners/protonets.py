"""Prototypical Networks (Snell et al., 2017) on the conv4 backbone.

Class prototypes are the mean support embedding; queries are scored by negative squared
Euclidean distance to each prototype. A task batch: support_x (B, N*K, C, H, W) float,
support_y (B, N*K) int64 in [0, N), query_x (B, N*Q, C, H, W) float, query_y (B, N*Q) int64.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from cactus.learners.readout import logistic_labels, uses_logistic
from cactus.nets import ConvNet, resize_images


def prototype_logits(
    support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor, ways: int
) -> torch.Tensor:
    """support (B, S, D), support_y (B, S), query (B, Q, D) -> logits (B, Q, ways)."""
    one_hot = F.one_hot(support_y, ways).to(support.dtype)  # (B, S, ways)
    prototypes = one_hot.transpose(1, 2) @ support / one_hot.sum(1).unsqueeze(-1)  # (B, ways, D)
    return -torch.cdist(query, prototypes).pow(2)


class ProtoNets:
    """Meta-learner: a conv4 embedding trained with the prototypical loss, Adam."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        ways: int,
        filters: int = 64,
        downsample: str = "pool",
        meta_lr: float = 1e-3,
        device: torch.device | str = "cpu",
        seed: int = 0,
        encoder=None,
        readout: str = "auto",
        train_size: int | None = None,
    ) -> None:
        """``encoder``: a trained image encoder (with a ``backbone_`` module) to start from instead of
        a fresh conv net; its backbone is fine-tuned and its batch norm keeps running statistics.
        ``readout``: how :meth:`predict` labels queries (:data:`cactus.learners.readout.READOUTS`).
        ``train_size``: :meth:`meta_step` sees the task images resized to this side (the net averages its
        features over the grid, so it embeds any size); :meth:`predict` sees them as given."""
        torch.manual_seed(seed)
        self.ways = ways
        self.readout = readout
        self.train_size = train_size
        self.device = torch.device(device)
        self.encoder = encoder
        if encoder is not None:
            self.net = encoder.backbone_.to(self.device)
        else:
            self.net = ConvNet(in_channels, train_size or image_size, filters, None, downsample).to(self.device)
        # NHWC: oneDNN's convolutions, batch norm and max pooling are faster channels-last on a CPU (1.5x
        # a 5-way conv4-64 meta-step, BENCHMARKS.md); the maths is the same.
        self.net = self.net.to(memory_format=torch.channels_last)
        self.optimiser = torch.optim.Adam(self.net.parameters(), lr=meta_lr)

    def _features(self, support_x, query_x) -> tuple[torch.Tensor, torch.Tensor]:
        """A task batch -> support features (B, N*K, D) and query features (B, N*Q, D), one pass of the net."""
        batch, n_support = support_x.shape[:2]
        images = torch.cat([support_x.flatten(0, 1), query_x.flatten(0, 1)]).contiguous(
            memory_format=torch.channels_last
        )
        features = self.net(images)
        support = features[: batch * n_support].view(batch, n_support, -1)
        query = features[batch * n_support :].view(batch, query_x.shape[1], -1)
        return support, query

    def _logits(self, support_x, support_y, query_x) -> torch.Tensor:
        """A task batch -> query logits (B, N*Q, N)."""
        support, query = self._features(support_x, query_x)
        return prototype_logits(support, support_y, query, int(support_y.max()) + 1)

    def meta_step(self, support_x, support_y, query_x, query_y) -> dict[str, float]:
        """One Adam step on the mean query loss of a task batch; returns {"loss", "accuracy" (%)}.

        Task by task, as in predict: batch norm sees one task, so splitting the meta-batch across
        processes (cactus.core.distributed) gives the same gradients as one process. Each task's loss
        (its mean query cross-entropy / B) is back-propagated before the next task runs, so only one
        task's graph is alive at a time; the accumulated gradient is that of the mean over every query
        of the batch (every task has N*Q queries), as one backward pass of all tasks would give. This
        is what holds peak memory to one task's activations: all 8 graphs held to one backward took
        2.5 GB at 20-way 1-shot 15 queries (bench/side_by_side.py).
        """
        self.net.train()
        self.optimiser.zero_grad()
        batch = len(support_x)
        loss_sum, correct = 0.0, 0.0
        if self.train_size is not None:
            support_x, query_x = (resize_images(x.flatten(0, 1), self.train_size).unflatten(0, x.shape[:2])
                                  for x in (support_x, query_x))
        for t in range(batch):
            logits = self._logits(support_x[t : t + 1], support_y[t : t + 1], query_x[t : t + 1])[0]  # (N*Q, N)
            loss = F.cross_entropy(logits, query_y[t])
            (loss / batch).backward()
            loss_sum += loss.item()
            correct += (logits.argmax(-1) == query_y[t]).float().mean().item()
        self.optimiser.step()
        return {"loss": loss_sum / batch, "accuracy": correct / batch * 100}

    @torch.no_grad()
    def predict(self, support_x, support_y, query_x) -> torch.Tensor:
        """Labels (B, N*Q) int64 for the queries, by ``self.readout`` (:mod:`cactus.learners.readout`):
        the nearest prototype of each task's support set, or a logistic regression fitted on it."""
        if self.encoder is not None:
            self.net.eval()  # running statistics, as the encoder embeds
        # One task at a time: batch norm then normalises over each task's own images, as in training,
        # so a task's prediction does not depend on which other tasks share the batch.
        labels = []
        for t in range(len(support_x)):
            support, query = self._features(support_x[t : t + 1], query_x[t : t + 1])
            ways = int(support_y[t].max()) + 1
            if uses_logistic(self.readout, support_y[t], ways):
                labels.append(logistic_labels(support[0], support_y[t], query[0])[None])
            else:
                labels.append(prototype_logits(support, support_y[t : t + 1], query, ways).argmax(-1))
        return torch.cat(labels)

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "optimiser": self.optimiser.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimiser.load_state_dict(state["optimiser"])

    def weights(self) -> dict[str, np.ndarray]:
        """The learned weights as numpy arrays, for the artifact."""
        if self.encoder is not None:  # the encoder's own format, so the encoder can be rebuilt from it
            return self.encoder.get_state()
        return {k: v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}

    def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        if self.encoder is not None:
            self.encoder.set_state(weights)
            self.net = self.encoder.backbone_.to(self.device)
            return
        self.net.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in weights.items()})
