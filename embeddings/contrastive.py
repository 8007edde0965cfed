"""SimCLR-style contrastive learning (Chen et al. 2020) with augmentations that suit the data.

Two random views of each image (``embeddings.augment``) go through a conv4 backbone and an MLP
projection head; the NT-Xent loss pulls each pair together against the other 2B - 2 views of the
batch. The embedding is the backbone's pooled features (before the head), L2-normalised by
default, with batch-norm statistics re-estimated on the clean training images after training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cactus.core.errors import CactusError
from embeddings.torch_encoder import TorchEncoder

if TYPE_CHECKING:
    import torch


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent loss of (2B, D) projections where rows i and i + B are two views of one image."""
    import torch
    import torch.nn.functional as F

    z = F.normalize(z, dim=1)
    n = len(z) // 2
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


@dataclass(eq=False, kw_only=True)
class ContrastiveEncoder(TorchEncoder):
    """SimCLR on a conv4 backbone.

    Hyper-parameters: ``dim`` channels of the last conv block (= embedding size), ``width`` channels
    of the other blocks, ``depth`` blocks, ``proj_dim`` projection size, ``temperature`` of NT-Xent,
    AdamW with ``lr``, ``weight_decay`` and a cosine schedule over ``epochs`` (``quick``: 3 epochs
    instead of 10 when ``epochs`` is not given); ``normalize``: unit-length embeddings;
    ``train_size``: the side of the square views it trains on, each resampled from the full image
    (default: the images' own size). The backbone averages its features over the grid, so it embeds
    images of any size with the channels it was trained on: trained on 42x42 views of 84x84
    miniImageNet, it embeds the 84x84 images 3.3 points better at 5-way 1-shot than 42x42 ones
    (BENCHMARKS.md); its batch norm statistics are re-estimated on the clean images at ``train_size``.
    Learned: ``backbone_`` (torch module), ``head_`` (the projection head, used only in training),
    ``losses_`` (mean loss per epoch).
    """

    name = "contrastive"
    not_data_parallel = None
    any_resolution = True
    learned_modules = {"backbone_": "backbone/"}
    quick_epochs, full_epochs = 3, 10
    positive_params = ("dim", "width", "depth", "epochs", "batch_size", "lr", "temperature", "proj_dim", "train_size")

    dim: int = 128
    width: int = 64
    depth: int = 4
    batch_size: int = 256
    lr: float = 2e-3
    temperature: float = 0.2
    proj_dim: int = 128
    weight_decay: float = 1e-5
    normalize: bool = True
    train_size: int | None = None

    def _build(self, image_shape: tuple[int, int, int]) -> None:
        """backbone_ and head_, freshly initialised from the torch global seed (batch norm synced under torchrun)."""
        from torch import nn

        from embeddings import parallel
        from embeddings.train_utils import conv_backbone

        backbone = conv_backbone(image_shape[-1], self.width, self.dim, self.depth)
        head = nn.Sequential(
            nn.Linear(self.dim, self.dim), nn.BatchNorm1d(self.dim), nn.ReLU(), nn.Linear(self.dim, self.proj_dim)
        )
        self.backbone_, self.head_ = parallel.sync_batchnorm(backbone), parallel.sync_batchnorm(head)

    def _check_fit_images(self, images: np.ndarray) -> None:
        if len(images) < 2:
            raise CactusError("contrastive encoder: needs at least 2 images to contrast")
        height, width = images.shape[1:3]
        if self.train_size is not None and self.train_size > min(height, width):
            raise CactusError(f"--train-size {self.train_size}: larger than the {height}x{width} images")

    def _view_side(self) -> int | None:
        """The side of the training views; None: the images' own grid."""
        height, width = self.input_shape_[:2]
        return None if self.train_size is None or (height, width) == (self.train_size,) * 2 else self.train_size

    def fit(self, images: np.ndarray) -> ContrastiveEncoder:
        """Train on images (N, H, W, C) uint8 with two augmented views per image.

        Under torchrun every rank augments the whole batch (the same views), encodes its share of
        the rows with synced batch norm and computes NT-Xent on the gathered projections.
        """
        import torch

        from embeddings import train_utils
        from embeddings.train_utils import recompute_batchnorm

        generator = self._start_fit(images)
        backbone, head = self.backbone_, self.head_.to(self.device_).train()
        params = [*backbone.parameters(), *head.parameters()]
        optimiser = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        batch = min(self.batch_size, len(images))
        total_steps = self.epochs_to_run() * (len(images) // batch)
        warmup = max(1, min(total_steps // 20, 200))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser,
            lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(s, total_steps) / total_steps)),
        )
        config = train_utils.augmentations_for(images, "contrastive")
        step = self._step_function(images, backbone, head, optimiser, schedule, generator, self.device_, config)
        self._train(step, len(images), generator, {"head": head, "optimiser": optimiser, "schedule": schedule})
        recompute_batchnorm(backbone, images, device=self.device_, side=self._view_side())
        return self

    def _step_function(self, images, backbone, head, optimiser, schedule, generator, device, config):
        """step(indices (B,)) -> NT-Xent loss of the batch's 2B views (this rank's B/W rows trained)."""
        import torch

        from embeddings import parallel
        from embeddings.augment import augment
        from embeddings.train_utils import to_tensor

        def step(indices: np.ndarray) -> float:
            x = to_tensor(images[indices], device)
            side = self._view_side()
            first, second = augment(x, generator, config, side), augment(x, generator, config, side)  # (B, C, S, S)
            rows = parallel.share(len(x))
            local = len(first[rows])
            z = head(backbone(torch.cat([first[rows], second[rows]])))  # (2B/W, proj_dim)
            z = torch.cat([parallel.gather_rows(z[:local]), parallel.gather_rows(z[local:])])  # (2B, proj_dim)
            loss = nt_xent(z, self.temperature)
            optimiser.zero_grad(set_to_none=True)
            (loss * parallel.world_size()).backward()  # each rank's gradient reaches only its own rows
            optimiser.step()
            schedule.step()
            return loss.item()

        return step

    def _embed(self, batch: torch.Tensor) -> torch.Tensor:
        return self.backbone_(batch)

    def transform(self, images: np.ndarray) -> np.ndarray:
        """Embed images (N, H, W, C) uint8 -> (N, dim) float32 (unit rows when ``normalize``)."""
        out = self._embed_images(images)
        if self.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out.astype(np.float32, copy=False)
