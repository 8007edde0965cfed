"""DeepCluster (Caron et al. 2018): k-means pseudo-labels and classification training, alternated.

Each epoch: embed every image with the current conv net, PCA-whiten and L2-normalise the
features, cluster them with k-means (``cactus.clustering.partitions.KMeans``, faiss), then train the conv net
with a freshly initialised linear classifier on the cluster ids for one pass over images drawn
uniformly over the pseudo-classes (so large clusters do not dominate), with augmentation.
The embedding is the final features, PCA-whitened to ``dim`` and L2-normalised.

Chosen by the images' channels, as in the paper for colour photos: 3-channel images go through a
fixed grey + Sobel filter (:class:`Sobel`, two gradient channels) before the conv net, so the
clusters cannot form on colour alone. The augmentations follow the pixels
(:func:`embeddings.augment.config_for`): photos get random resized crop, flip, colour jitter and
grey; line drawings a light version of the stroke set. k is capped by the data
(:meth:`DeepClusterEncoder.clusters_for`): at most one cluster per 10 training images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cactus.core.errors import CactusError
from embeddings.torch_encoder import TorchEncoder


def pca_whitening(features: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit PCA whitening on (N, F) features: returns mean (F,), components (dim, F), scale (dim,)."""
    x = features.astype(np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / max(len(x) - 1, 1))
    top = np.argsort(eigenvalues)[::-1][:dim]
    components = eigenvectors[:, top].T
    signs = np.sign(components[np.arange(len(top)), np.abs(components).argmax(axis=1)])
    components = components * signs[:, None]
    scale = 1.0 / np.sqrt(np.maximum(eigenvalues[top], 0.0) + 1e-5)
    return mean.astype(np.float32), components.astype(np.float32), scale.astype(np.float32)


def whiten(features: np.ndarray, mean: np.ndarray, components: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(N, F) features -> (N, dim) PCA-whitened, L2-normalised float32."""
    out = ((features - mean) @ components.T) * scale
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out.astype(np.float32, copy=False)


def sobel_module():
    """A fixed (not learned) torch module: (B, 3, H, W) RGB in [0, 1] -> (B, 2, H, W) Sobel gradients of the grey image.

    Caron et al. (2018) feed the conv net these two channels instead of colour: grey (the mean of
    R, G, B as in their code) then the horizontal and vertical 3x3 Sobel filters, zero-padded.
    Its weights are non-persistent buffers: nothing of it is stored in an artifact.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Sobel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            gx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
            self.register_buffer("kernels", torch.stack([gx, gx.T])[:, None], persistent=False)  # (2, 1, 3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            grey = x.mean(dim=1, keepdim=True)
            return F.conv2d(grey, self.kernels, padding=1)

    return Sobel()


def uniform_over_clusters(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` image indices drawn so that every non-empty cluster is equally likely (Caron et al. 2018)."""
    clusters = np.unique(labels)
    chosen = rng.choice(clusters, size=n)
    members = {c: np.flatnonzero(labels == c) for c in clusters}
    return np.array([members[c][rng.integers(len(members[c]))] for c in chosen], dtype=np.int64)


@dataclass(eq=False, kw_only=True)
class DeepClusterEncoder(TorchEncoder):
    """DeepCluster on a conv4 backbone.

    Hyper-parameters: ``dim`` PCA dimensions of the embedding, ``features`` channels of the last conv
    block (>= dim; by default twice ``dim`` and at least 128, so the PCA reduces as in the paper),
    ``width`` / ``depth`` of the other blocks, ``clusters`` k of k-means (the paper's 500; capped at
    one cluster per 10 training images, see :meth:`clusters_for`), SGD with momentum at ``lr`` and
    ``weight_decay``, ``epochs`` cluster-then-train rounds (``quick``: 3 instead of 10 when
    ``epochs`` is not given), ``augment``: augmentation of the training images (the photo set for
    photos, a light stroke set for line drawings: :func:`augment_config`). Learned: ``backbone_``
    (Sobel front for 3 channels, then the conv net), ``clusters_`` (the k used), ``pca_mean_`` (F,),
    ``pca_components_`` (dim, F), ``pca_scale_`` (dim,), ``losses_`` (mean classification loss per epoch).
    """

    name = "deepcluster"
    not_data_parallel = ("its pseudo-labels are k-means assignments, which features equal only to float tolerance "
                         "can flip, so several processes could train on other labels than one")
    learned_modules = {"backbone_": "backbone/"}
    quick_epochs, full_epochs = 3, 10
    positive_params = ("dim", "features", "width", "depth", "clusters", "epochs", "batch_size", "lr")

    dim: int = 64
    features: int | None = None
    width: int = 64
    depth: int = 4
    clusters: int = 500
    lr: float = 0.05
    weight_decay: float = 1e-5
    augment: bool = True

    def check_params(self) -> None:
        super().check_params()
        if self.dim > self.feature_channels:
            raise CactusError(f"--dim {self.dim}: DeepCluster's PCA keeps at most the {self.feature_channels} conv "
                              "features")
        if self.clusters < 2:
            raise CactusError(f"--clusters {self.clusters}: DeepCluster needs at least 2 clusters")

    @property
    def feature_channels(self) -> int:
        """Channels of the last conv block: ``features``, else max(128, 2 * dim)."""
        return self.features if self.features is not None else max(128, 2 * self.dim)

    def clusters_for(self, n_images: int) -> int:
        """k for ``n_images`` training images: ``clusters``, at most n // 10 (10 images a cluster), at least 2."""
        return max(2, min(self.clusters, n_images // 10))

    @staticmethod
    def uses_sobel(channels: int) -> bool:
        """Whether images with ``channels`` channels go through the grey + Sobel front (colour photos)."""
        return channels == 3

    def _build(self, image_shape: tuple[int, int, int]) -> None:
        from torch import nn

        from embeddings.train_utils import conv_backbone

        channels = image_shape[-1]
        if self.uses_sobel(channels):
            self.backbone_ = nn.Sequential(sobel_module(), conv_backbone(2, self.width, self.feature_channels,
                                                                         self.depth))
        else:
            self.backbone_ = conv_backbone(channels, self.width, self.feature_channels, self.depth)

    def _check_fit_images(self, images: np.ndarray) -> None:
        if len(images) < 2:
            raise CactusError(f"deepcluster encoder: needs at least 2 training images, got {len(images)}")

    def _embed(self, batch):
        return self.backbone_(batch)

    def fit(self, images: np.ndarray) -> DeepClusterEncoder:
        """Alternate clustering and classification on images (N, H, W, C) uint8."""
        import torch

        from embeddings.train_utils import recompute_batchnorm

        generator = self._start_fit(images)
        self.clusters_ = self.clusters_for(len(images))
        rng = np.random.default_rng(self.seed)
        optimiser = torch.optim.SGD(self.backbone_.parameters(), lr=self.lr, momentum=0.9,
                                    weight_decay=self.weight_decay)
        rounds = _Rounds(self, images, rng)
        self._train(rounds.step_function(optimiser, generator), len(images), generator, {"optimiser": optimiser},
                    rng=rng, on_epoch_start=rounds.start, extra=(rounds.save, rounds.load))
        recompute_batchnorm(self.backbone_, images, device=self.device_)
        features = self._embed_images(images)
        self.pca_mean_, self.pca_components_, self.pca_scale_ = pca_whitening(features, self.dim)
        return self

    def transform(self, images: np.ndarray) -> np.ndarray:
        """Embed images (N, H, W, C) uint8 -> (N, dim) float32, PCA-whitened and L2-normalised."""
        return whiten(self._embed_images(images), self.pca_mean_, self.pca_components_, self.pca_scale_)

    def _extra_state(self) -> dict[str, np.ndarray]:
        return {"pca_mean": self.pca_mean_, "pca_components": self.pca_components_, "pca_scale": self.pca_scale_}

    def _set_extra_state(self, state: dict[str, np.ndarray]) -> None:
        missing = [k for k in ("pca_mean", "pca_components", "pca_scale") if k not in state]
        if missing:
            raise CactusError(f"deepcluster encoder: stored weights lack {', '.join(missing)}")
        self.pca_mean_ = np.asarray(state["pca_mean"], dtype=np.float32)
        self.pca_components_ = np.asarray(state["pca_components"], dtype=np.float32)
        self.pca_scale_ = np.asarray(state["pca_scale"], dtype=np.float32)
        if self.pca_components_.shape != (self.dim, self.feature_channels):
            raise CactusError("deepcluster encoder: stored PCA does not match --dim")


class _Rounds:
    """DeepCluster's per-epoch state: the pseudo-labels (N,), the cluster-uniform order (N,) and a new head.

    ``start(epoch)`` re-clusters and draws the epoch's order; ``save`` / ``load`` put that state in
    a checkpoint, so a fit resumed mid-epoch trains on the same pseudo-labels with the same head.
    """

    def __init__(self, encoder: DeepClusterEncoder, images: np.ndarray, rng: np.random.Generator) -> None:
        self.encoder, self.images, self.rng = encoder, images, rng
        self.labels = self.order = self.head = self.head_optimiser = None

    def start(self, epoch: int) -> None:
        """1. pseudo-labels from the current features; 2. a new classifier head; the epoch's sample order."""
        from cactus.clustering.partitions import KMeans

        enc = self.encoder
        features = enc._embed_images(self.images)
        mean, components, scale = pca_whitening(features, enc.dim)
        labels = KMeans(enc.clusters_, n_iter=20, random_state=enc.seed * 1000 + epoch).fit(
            whiten(features, mean, components, scale)).labels_
        self._new_head()
        self.labels = np.asarray(labels, dtype=np.int64)
        self.order = uniform_over_clusters(self.labels, len(self.images), self.rng)
        enc.backbone_.train()

    def _new_head(self) -> None:
        """A freshly initialised (features -> clusters) linear head and its SGD (torch's global RNG)."""
        import torch
        from torch import nn

        enc = self.encoder
        self.head = nn.Linear(enc.feature_channels, enc.clusters_).to(enc.device_)
        self.head_optimiser = torch.optim.SGD(self.head.parameters(), lr=enc.lr, momentum=0.9)

    def save(self) -> dict:
        import torch

        return {"labels": torch.as_tensor(self.labels), "order": torch.as_tensor(self.order),
                "head": self.head.state_dict(), "head_optimiser": self.head_optimiser.state_dict()}

    def load(self, saved: dict) -> None:
        self._new_head()
        self.head.load_state_dict(saved["head"])
        self.head_optimiser.load_state_dict(saved["head_optimiser"])
        self.labels, self.order = saved["labels"].numpy(), saved["order"].numpy()
        self.encoder.backbone_.train()

    def step_function(self, optimiser, generator):
        """step(positions (B,) into this epoch's order) -> cross-entropy on the rows' pseudo-labels."""
        import torch
        import torch.nn.functional as F

        from embeddings.augment import augment
        from embeddings.train_utils import to_tensor

        enc = self.encoder
        config = augment_config(self.images)

        def step(positions: np.ndarray) -> float:
            rows = self.order[positions]
            x = to_tensor(self.images[rows], enc.device_)
            if enc.augment:
                x = augment(x, generator, config)
            targets = torch.as_tensor(self.labels[rows], device=enc.device_)
            loss = F.cross_entropy(self.head(enc.backbone_(x)), targets)
            optimiser.zero_grad(set_to_none=True)
            self.head_optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            self.head_optimiser.step()
            return loss.item()

        return step


def augment_config(images: np.ndarray):
    """DeepCluster's augmentations for images (N, H, W, C) uint8: the photo set of
    :func:`embeddings.augment.config_for` for photos, a light version of the stroke set for line
    drawings (no cutout, half the warps)."""
    from dataclasses import replace

    from embeddings.augment import AugmentConfig
    from embeddings.train_utils import augmentations_for

    config = augmentations_for(images, "deepcluster")
    if isinstance(config, AugmentConfig):
        config = replace(config, rotation_deg=10, scale=(0.85, 1.15), shear=0.15, translate=0.1, elastic=0.03,
                         p_dilate=0.15, p_erode=0.05, p_cutout=0.0)
    return config
