"""SimCLR-style contrastive learning (Chen et al. 2020) with augmentations that suit the data.

Two random views of each image (``embeddings.augment``) go through a conv4 backbone and an MLP
projection head; the NT-Xent loss pulls each pair together against the other 2B - 2 views of the
batch. The embedding is the backbone's pooled features (before the head), L2-normalised by
default, with batch-norm statistics re-estimated on the clean training images after training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cactus.core.errors import CactusError
from embeddings.base import Encoder

if TYPE_CHECKING:
    import torch

QUICK_EPOCHS = 3
FULL_EPOCHS = 10


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


class ContrastiveEncoder(Encoder):
    """SimCLR on a conv4 backbone.

    Hyper-parameters: ``dim`` channels of the last conv block (= embedding size), ``width`` channels
    of the other blocks, ``depth`` blocks, ``proj_dim`` projection size, ``temperature`` of NT-Xent,
    Adam with ``lr`` and a cosine schedule over ``epochs``; ``quick`` picks the short preset
    (``QUICK_EPOCHS``) when ``epochs`` is not given. Learned: ``backbone_`` (torch module),
    ``losses_`` (mean loss per epoch).
    """

    name = "contrastive"
    not_data_parallel = None

    def __init__(
        self,
        dim: int = 128,
        width: int = 64,
        depth: int = 4,
        epochs: int | None = None,
        batch_size: int = 256,
        lr: float = 2e-3,
        temperature: float = 0.2,
        proj_dim: int = 128,
        weight_decay: float = 1e-5,
        normalize: bool = True,
        seed: int = 0,
        quick: bool = False,
        device: str = "auto",
        threads: int | None = None,
    ) -> None:
        from embeddings.train_utils import check_options

        epochs = epochs if epochs is not None else (QUICK_EPOCHS if quick else FULL_EPOCHS)
        check_options(dim=dim, width=width, depth=depth, epochs=epochs, batch_size=batch_size, lr=lr,
                      temperature=temperature, proj_dim=proj_dim)
        super().__init__(dim=dim, seed=seed, width=width, depth=depth, epochs=epochs, batch_size=batch_size,
                         lr=lr, temperature=temperature, proj_dim=proj_dim, weight_decay=weight_decay,
                         normalize=normalize)
        self.width, self.depth, self.epochs, self.batch_size = width, depth, epochs, batch_size
        self.lr, self.temperature, self.proj_dim = lr, temperature, proj_dim
        self.weight_decay, self.normalize = weight_decay, normalize
        self.device, self.threads = device, threads

    def _build(self, channels: int):
        """(backbone, head) freshly initialised from the torch global seed."""
        from torch import nn

        from embeddings.train_utils import conv_backbone

        backbone = conv_backbone(channels, self.width, self.dim, self.depth)
        head = nn.Sequential(
            nn.Linear(self.dim, self.dim), nn.BatchNorm1d(self.dim), nn.ReLU(), nn.Linear(self.dim, self.proj_dim)
        )
        return backbone, head

    def fit(self, images: np.ndarray) -> ContrastiveEncoder:
        """Train on images (N, H, W, C) uint8 with two augmented views per image.

        Under torchrun every rank augments the whole batch (the same views), encodes its share of
        the rows with synced batch norm and computes NT-Xent on the gathered projections.
        """
        import torch

        from embeddings import parallel
        from embeddings.checkpointing import TrainingState
        from embeddings.train_utils import recompute_batchnorm, setup_torch, train_epochs

        self._remember_input(images)
        if len(images) < 2:
            raise CactusError("contrastive encoder: needs at least 2 images to contrast")
        device, generator = setup_torch(self.seed, self.device, self.threads)
        rng = np.random.default_rng(self.seed)
        backbone, head = (parallel.sync_batchnorm(net).to(device) for net in self._build(images.shape[-1]))
        params = [*backbone.parameters(), *head.parameters()]
        optimiser = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        batch = min(self.batch_size, len(images))
        total_steps = self.epochs * (len(images) // batch)
        warmup = max(1, min(total_steps // 20, 200))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser,
            lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(s, total_steps) / total_steps)),
        )
        backbone.train()
        head.train()
        step = self._step_function(images, backbone, head, optimiser, schedule, generator, device)
        state = TrainingState({"backbone": backbone, "head": head, "optimiser": optimiser, "schedule": schedule},
                              generator)
        self.losses_ = train_epochs(step, len(images), self.epochs, batch, rng, "contrastive", state=state)
        recompute_batchnorm(backbone, images, device=device)
        self.backbone_ = backbone
        self.device_ = device
        return self

    def _step_function(self, images, backbone, head, optimiser, schedule, generator, device):
        """step(indices (B,)) -> NT-Xent loss of the batch's 2B views (this rank's B/W rows trained)."""
        import torch

        from embeddings import parallel
        from embeddings.augment import augment
        from embeddings.train_utils import to_tensor

        def step(indices: np.ndarray) -> float:
            x = to_tensor(images[indices], device)
            first, second = augment(x, generator), augment(x, generator)  # (B, C, H, W) each, on every rank
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

    def transform(self, images: np.ndarray) -> np.ndarray:
        """Embed images (N, H, W, C) uint8 -> (N, dim) float32 (unit rows when ``normalize``)."""
        from embeddings.train_utils import embed_in_batches

        self._check_input(images)
        self.backbone_.eval()
        out = embed_in_batches(self.backbone_, images, device=getattr(self, "device_", None))
        if self.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out.astype(np.float32, copy=False)

    def get_state(self) -> dict[str, np.ndarray]:
        from embeddings.train_utils import module_state

        state = module_state(self.backbone_, "backbone/")
        state["input_shape"] = np.asarray(self.input_shape_, dtype=np.int64)
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        from embeddings.train_utils import load_module_state, setup_torch

        if "input_shape" not in state:
            raise CactusError("contrastive encoder: stored weights lack 'input_shape'")
        self.input_shape_ = tuple(int(s) for s in state["input_shape"])
        self.device_, _ = setup_torch(self.seed, self.device, self.threads)
        backbone, _ = self._build(self.input_shape_[-1])
        load_module_state(backbone, state, "backbone/", what="contrastive encoder")
        self.backbone_ = backbone.to(self.device_).eval()
