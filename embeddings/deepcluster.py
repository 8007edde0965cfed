"""DeepCluster (Caron et al. 2018): k-means pseudo-labels and classification training, alternated.

Each epoch: embed every image with the current conv net, PCA-whiten and L2-normalise the
features, cluster them with k-means (``cactus.cluster.KMeans``, faiss), then train the conv net
with a freshly initialised linear classifier on the cluster ids for one pass over images drawn
uniformly over the pseudo-classes (so large clusters do not dominate), with light augmentation.
The embedding is the final features, PCA-whitened to ``dim`` and L2-normalised.
"""

from __future__ import annotations

import numpy as np

from cactus.errors import CactusError
from embeddings.base import Encoder

QUICK_EPOCHS = 3
FULL_EPOCHS = 10


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


def uniform_over_clusters(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` image indices drawn so that every non-empty cluster is equally likely (Caron et al. 2018)."""
    clusters = np.unique(labels)
    chosen = rng.choice(clusters, size=n)
    members = {c: np.flatnonzero(labels == c) for c in clusters}
    return np.array([members[c][rng.integers(len(members[c]))] for c in chosen], dtype=np.int64)


class DeepClusterEncoder(Encoder):
    """DeepCluster on a conv4 backbone.

    Hyper-parameters: ``dim`` PCA dimensions of the embedding, ``features`` channels of the last conv
    block (>= dim), ``width`` / ``depth`` of the other blocks, ``clusters`` k of k-means, SGD with
    momentum at ``lr``, ``epochs`` cluster-then-train rounds (``quick`` picks ``QUICK_EPOCHS`` when
    ``epochs`` is not given). Learned: ``backbone_``, ``pca_mean_`` (F,), ``pca_components_``
    (dim, F), ``pca_scale_`` (dim,), ``losses_`` (mean classification loss per epoch).
    """

    name = "deepcluster"

    def __init__(
        self,
        dim: int = 64,
        features: int = 128,
        width: int = 64,
        depth: int = 4,
        clusters: int = 500,
        epochs: int | None = None,
        batch_size: int = 64,
        lr: float = 0.05,
        weight_decay: float = 1e-5,
        augment: bool = True,
        seed: int = 0,
        quick: bool = False,
        device: str = "auto",
        threads: int | None = None,
    ) -> None:
        from embeddings.train_utils import check_options

        epochs = epochs if epochs is not None else (QUICK_EPOCHS if quick else FULL_EPOCHS)
        check_options(dim=dim, features=features, width=width, depth=depth, clusters=clusters, epochs=epochs,
                      batch_size=batch_size, lr=lr)
        if dim > features:
            raise CactusError(f"--dim {dim}: DeepCluster's PCA keeps at most the {features} conv features")
        if clusters < 2:
            raise CactusError(f"--clusters {clusters}: DeepCluster needs at least 2 clusters")
        super().__init__(dim=dim, seed=seed, features=features, width=width, depth=depth, clusters=clusters,
                         epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, augment=augment)
        self.features, self.width, self.depth, self.clusters = features, width, depth, clusters
        self.epochs, self.batch_size, self.lr, self.weight_decay = epochs, batch_size, lr, weight_decay
        self.augment = augment
        self.device, self.threads = device, threads

    def _build(self, channels: int):
        from embeddings.train_utils import conv_backbone

        return conv_backbone(channels, self.width, self.features, self.depth)

    def _raw_features(self, images: np.ndarray) -> np.ndarray:
        from embeddings.train_utils import embed_in_batches

        self.backbone_.eval()
        return embed_in_batches(self.backbone_, images, device=self.device_)

    def fit(self, images: np.ndarray) -> DeepClusterEncoder:
        """Alternate clustering and classification on images (N, H, W, C) uint8."""
        import torch
        import torch.nn.functional as F
        from torch import nn

        from cactus.cluster import KMeans
        from embeddings.augment import AugmentConfig, augment
        from embeddings.train_utils import recompute_batchnorm, setup_torch, to_tensor, train_epochs

        self._remember_input(images)
        if len(images) < self.clusters:
            raise CactusError(f"--clusters {self.clusters}: more clusters than the {len(images)} training images")
        self.device_, generator = setup_torch(self.seed, self.device, self.threads)
        rng = np.random.default_rng(self.seed)
        self.backbone_ = self._build(images.shape[-1]).to(self.device_)
        optimiser = torch.optim.SGD(self.backbone_.parameters(), lr=self.lr, momentum=0.9,
                                    weight_decay=self.weight_decay)
        light = AugmentConfig(rotation_deg=10, scale=(0.85, 1.15), shear=0.15, translate=0.1, elastic=0.03,
                              p_dilate=0.15, p_erode=0.05, p_cutout=0.0)
        self.losses_: list[float] = []
        for epoch in range(self.epochs):
            # 1. pseudo-labels from the current features
            features = self._raw_features(images)
            mean, components, scale = pca_whitening(features, self.dim)
            labels = KMeans(self.clusters, n_iter=20, random_state=self.seed * 1000 + epoch).fit(
                whiten(features, mean, components, scale)).labels_
            # 2. a new classifier head, one epoch of classification on cluster-uniform samples
            head = nn.Linear(self.features, self.clusters).to(self.device_)
            head_optimiser = torch.optim.SGD(head.parameters(), lr=self.lr, momentum=0.9)
            order = uniform_over_clusters(labels, len(images), rng)
            targets = torch.as_tensor(labels, device=self.device_)
            self.backbone_.train()

            def step(positions: np.ndarray, order=order, head=head, head_optimiser=head_optimiser,
                     targets=targets) -> float:
                rows = order[positions]
                x = to_tensor(images[rows], self.device_)
                if self.augment:
                    x = augment(x, generator, light)
                loss = F.cross_entropy(head(self.backbone_(x)), targets[torch.as_tensor(rows, device=self.device_)])
                optimiser.zero_grad(set_to_none=True)
                head_optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                head_optimiser.step()
                return loss.item()

            self.losses_ += train_epochs(step, len(order), 1, self.batch_size, rng,
                                         f"deepcluster {epoch + 1}/{self.epochs}")
        recompute_batchnorm(self.backbone_, images, device=self.device_)
        features = self._raw_features(images)
        self.pca_mean_, self.pca_components_, self.pca_scale_ = pca_whitening(features, self.dim)
        return self

    def transform(self, images: np.ndarray) -> np.ndarray:
        """Embed images (N, H, W, C) uint8 -> (N, dim) float32, PCA-whitened and L2-normalised."""
        self._check_input(images)
        return whiten(self._raw_features(images), self.pca_mean_, self.pca_components_, self.pca_scale_)

    def get_state(self) -> dict[str, np.ndarray]:
        from embeddings.train_utils import module_state

        state = module_state(self.backbone_, "backbone/")
        state.update(pca_mean=self.pca_mean_, pca_components=self.pca_components_, pca_scale=self.pca_scale_,
                     input_shape=np.asarray(self.input_shape_, dtype=np.int64))
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        from embeddings.train_utils import load_module_state, setup_torch

        missing = [k for k in ("input_shape", "pca_mean", "pca_components", "pca_scale") if k not in state]
        if missing:
            raise CactusError(f"deepcluster encoder: stored weights lack {', '.join(missing)}")
        self.input_shape_ = tuple(int(s) for s in state["input_shape"])
        self.device_, _ = setup_torch(self.seed, self.device, self.threads)
        backbone = self._build(self.input_shape_[-1])
        load_module_state(backbone, state, "backbone/", what="deepcluster encoder")
        self.backbone_ = backbone.to(self.device_).eval()
        self.pca_mean_ = np.asarray(state["pca_mean"], dtype=np.float32)
        self.pca_components_ = np.asarray(state["pca_components"], dtype=np.float32)
        self.pca_scale_ = np.asarray(state["pca_scale"], dtype=np.float32)
        if self.pca_components_.shape != (self.dim, self.features):
            raise CactusError("deepcluster encoder: stored PCA does not match --dim")
