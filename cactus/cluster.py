"""k-means partitions of an embedding, as CACTUs builds them (faiss inside).

Partition 0 clusters the raw embedding; partition p > 0 clusters the embedding with each
dimension scaled by a fresh U(0, 1) weight, so the P partitions differ in what they emphasise.
Each partition's randomness comes from the seed sequence (seed, p), so any subset of the
partitions (a shard) can be computed on its own and gives the same labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cactus.errors import CactusError

DROPPED = -1
MAX_REDRAWS = 10


@dataclass
class KMeans:
    """faiss k-means with a scikit-learn-style interface.

    After ``fit(x)`` with x (N, D) float32: ``labels_`` (N,) int64, ``cluster_centers_`` (k, D),
    ``inertia_`` (sum of squared distances to the nearest centre).
    """

    n_clusters: int
    n_iter: int = 20
    n_init: int = 1
    random_state: int = 0

    def fit(self, x: np.ndarray) -> KMeans:
        import faiss

        x = np.ascontiguousarray(x, dtype=np.float32)
        if len(x) < self.n_clusters:
            raise CactusError(f"--clusters {self.n_clusters}: more clusters than the {len(x)} points to cluster")
        kmeans = faiss.Kmeans(
            x.shape[1], self.n_clusters, niter=self.n_iter, nredo=self.n_init,
            seed=int(self.random_state) % (2**31 - 1), verbose=False,
            max_points_per_centroid=max(256, -(-len(x) // self.n_clusters)), min_points_per_centroid=1,
        )
        kmeans.train(x)
        self.index_ = kmeans.index
        distances, labels = kmeans.index.search(x, 1)
        self.cluster_centers_ = kmeans.centroids
        self.labels_ = labels[:, 0].astype(np.int64)
        self.inertia_ = float(distances.sum())
        return self


def predict(kmeans: KMeans, x: np.ndarray) -> np.ndarray:
    """Nearest centre (N,) int64 of each row of x (N, D) for a fitted KMeans."""
    _, labels = kmeans.index_.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return labels[:, 0].astype(np.int64)


def partition_scales(seed: int, partition: int, dim: int) -> np.ndarray:
    """Per-dimension weights (dim,) float32 of one partition: ones for partition 0, else U(0, 1)."""
    if partition == 0:
        return np.ones(dim, dtype=np.float32)
    return np.random.default_rng([seed, partition]).random(dim).astype(np.float32)


def one_partition(
    embeddings: np.ndarray,
    partition: int,
    n_clusters: int,
    seed: int,
    min_cluster_size: int,
    min_clusters: int,
    n_iter: int = 20,
) -> tuple[np.ndarray, int]:
    """Cluster once; clusters smaller than ``min_cluster_size`` become DROPPED (-1).

    A partition with fewer than ``min_clusters`` surviving clusters is redrawn with new scales
    and a new k-means seed. Returns labels (N,) int32 and the number of draws it took.
    """
    for attempt in range(MAX_REDRAWS):
        draw_seed = int(np.random.default_rng([seed, partition, attempt]).integers(2**31 - 1))
        scales = partition_scales(seed + attempt * 7919, partition, embeddings.shape[1])
        if partition == 0 and attempt > 0:
            scales = partition_scales(seed + attempt * 7919, 1 + attempt, embeddings.shape[1])
        labels = KMeans(n_clusters, n_iter=n_iter, random_state=draw_seed).fit(embeddings * scales).labels_
        sizes = np.bincount(labels, minlength=n_clusters)
        kept = sizes >= min_cluster_size
        if kept.sum() >= min_clusters:
            return np.where(kept[labels], labels, DROPPED).astype(np.int32), attempt + 1
    raise CactusError(
        f"--clusters {n_clusters}: after {MAX_REDRAWS} draws partition {partition} still has fewer than "
        f"{min_clusters} clusters of at least {min_cluster_size} members; use fewer clusters"
    )


def partitions(
    embeddings: np.ndarray,
    which: list[int] | range,
    n_clusters: int,
    seed: int = 0,
    min_cluster_size: int = 2,
    min_clusters: int = 2,
    n_iter: int = 20,
    progress=None,
) -> np.ndarray:
    """Labels (len(which), N) int32 of the requested partitions of ``embeddings`` (N, D) float32."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if not np.isfinite(embeddings).all():
        raise CactusError("embeddings contain NaN or infinite values; cannot cluster them")
    rows = []
    for p in progress(which) if progress else which:
        labels, _ = one_partition(embeddings, p, n_clusters, seed, min_cluster_size, min_clusters, n_iter)
        rows.append(labels)
    return np.stack(rows)


def one_partition_streamed(
    sample: np.ndarray,
    chunks,
    partition: int,
    n_clusters: int,
    seed: int,
    min_cluster_size: int,
    min_clusters: int,
    n_iter: int = 20,
) -> tuple[np.ndarray, int]:
    """:func:`one_partition` for data larger than memory: k-means fitted on ``sample`` (S, D) float32,
    then every point labelled chunk by chunk; ``chunks()`` yields the (n_i, D) float32 blocks in order.

    Same scales, seeds and redraw rule as :func:`one_partition`; labels (N,) int32.
    """
    dim = sample.shape[1]
    for attempt in range(MAX_REDRAWS):
        draw_seed = int(np.random.default_rng([seed, partition, attempt]).integers(2**31 - 1))
        scales = partition_scales(seed + attempt * 7919, partition, dim)
        if partition == 0 and attempt > 0:
            scales = partition_scales(seed + attempt * 7919, 1 + attempt, dim)
        kmeans = KMeans(n_clusters, n_iter=n_iter, random_state=draw_seed).fit(sample * scales)
        labels = np.concatenate([predict(kmeans, block * scales) for block in chunks()])
        sizes = np.bincount(labels, minlength=n_clusters)
        kept = sizes >= min_cluster_size
        if kept.sum() >= min_clusters:
            return np.where(kept[labels], labels, DROPPED).astype(np.int32), attempt + 1
    raise CactusError(
        f"--clusters {n_clusters}: after {MAX_REDRAWS} draws partition {partition} still has fewer than "
        f"{min_clusters} clusters of at least {min_cluster_size} members; use fewer clusters"
    )
