"""k-means partitions of an embedding, as CACTUs builds them.

Partition 0 clusters the raw embedding; partition p > 0 clusters the embedding with each
dimension scaled by a fresh U(0, 1) weight, so the P partitions differ in what they emphasise.
Each partition's randomness comes from the seed sequence (seed, p), so any subset of the
partitions (a shard) can be computed on its own and gives the same labels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from cactus.core.errors import CactusError

DROPPED = -1
MAX_REDRAWS = 10


ENGINES = ("relaxed", "faiss")
DEFAULT_ITERATIONS = {"relaxed": 8, "faiss": 20}


def import_faiss() -> ModuleType:
    """``import faiss`` with its bundled OpenMP runtime set to wait passively, unless the user chose.

    faiss's threads that spin while they wait make k-means on a shared CPU several times slower
    (500 clusters of 22,000 x 64 with two busy processes on the two cores: 2.76 s spinning, 0.86 s
    passive). The runtime reads ``OMP_WAIT_POLICY`` once, when it loads, so the variable is set just
    for the import: torch's own runtime keeps its default (short spin), which many small ops need
    (MAML meta-training ran 1.6-2.9x slower with passive waits). Call it before starting threads or
    subprocesses that should not see the variable.
    """
    if "OMP_WAIT_POLICY" in os.environ:
        import faiss

        return faiss
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        import faiss
    finally:
        os.environ.pop("OMP_WAIT_POLICY", None)
    return faiss


def resolved_iterations(engine: str, n_iter: int | None) -> int:
    """The iteration count ``engine`` runs for ``n_iter`` (None: its default), both checked."""
    if engine not in ENGINES:
        raise CactusError(f"--engine {engine!r}: expected one of {', '.join(ENGINES)}")
    n_iter = DEFAULT_ITERATIONS[engine] if n_iter is None else n_iter
    if n_iter < 1:
        raise CactusError(f"--iterations {n_iter}: must be at least 1")
    return n_iter


@dataclass
class KMeans:
    """k-means with a scikit-learn-style interface: ``engine="relaxed"`` (over-relaxed Lloyd,
    :mod:`cactus.clustering.kmeans`, the default) or ``"faiss"`` (faiss's Lloyd, random init, one run).

    After ``fit(x)`` with x (N, D) float32: ``labels_`` (N,) int64, ``cluster_centers_`` (k, D),
    ``inertia_`` (sum of squared distances to the nearest centre).
    """

    n_clusters: int
    n_iter: int | None = None  # None: DEFAULT_ITERATIONS[engine]
    random_state: int = 0
    engine: str = "relaxed"

    def fit(self, x: np.ndarray) -> KMeans:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if len(x) < self.n_clusters:
            raise CactusError(f"--clusters {self.n_clusters}: more clusters than the {len(x)} points to cluster")
        n_iter = resolved_iterations(self.engine, self.n_iter)
        if self.engine == "relaxed":
            from cactus.clustering.kmeans import Lloyd

            solver = Lloyd(self.n_clusters, n_iter, random_state=self.random_state).fit(x)
            self.labels_, self.cluster_centers_ = solver.labels_, solver.cluster_centers_
            self.inertia_, self._predict = solver.inertia_, solver.predict
            return self
        faiss = import_faiss()
        kmeans = faiss.Kmeans(
            x.shape[1], self.n_clusters, niter=n_iter, seed=int(self.random_state) % (2**31 - 1), verbose=False,
            max_points_per_centroid=max(256, -(-len(x) // self.n_clusters)), min_points_per_centroid=1,
        )
        kmeans.train(x)
        distances, labels = kmeans.index.search(x, 1)
        self.cluster_centers_ = kmeans.centroids
        self.labels_ = labels[:, 0].astype(np.int64)
        self.inertia_ = float(distances.sum())
        self._predict = lambda rows: kmeans.index.search(rows, 1)[1][:, 0].astype(np.int64)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Nearest centre (N,) int64 of each row of x (N, D) for a fitted KMeans."""
        return self._predict(np.ascontiguousarray(x, dtype=np.float32))


def partition_scales(seed: int, partition: int, dim: int) -> np.ndarray:
    """Per-dimension weights (dim,) float32 of one partition: ones for partition 0, else U(0, 1)."""
    if partition == 0:
        return np.ones(dim, dtype=np.float32)
    return np.random.default_rng([seed, partition]).random(dim).astype(np.float32)


def _draws(seed: int, partition: int, dim: int):
    """The (k-means seed, scales (dim,) float32) of each successive draw of one partition."""
    for attempt in range(MAX_REDRAWS):
        draw_seed = int(np.random.default_rng([seed, partition, attempt]).integers(2**31 - 1))
        scales = partition_scales(seed + attempt * 7919, partition, dim)
        if partition == 0 and attempt > 0:
            scales = partition_scales(seed + attempt * 7919, 1 + attempt, dim)
        yield draw_seed, scales


def _kept(labels: np.ndarray, n_clusters: int, min_cluster_size: int, min_clusters: int) -> np.ndarray | None:
    """Labels (N,) int32 with clusters under ``min_cluster_size`` set to DROPPED, or None when fewer
    than ``min_clusters`` survive."""
    kept = np.bincount(labels, minlength=n_clusters) >= min_cluster_size
    if kept.sum() < min_clusters:
        return None
    return np.where(kept[labels], labels, DROPPED).astype(np.int32)


def _hopeless(partition: int, n_clusters: int, min_cluster_size: int, min_clusters: int) -> CactusError:
    return CactusError(
        f"--clusters {n_clusters}: after {MAX_REDRAWS} draws partition {partition} still has fewer than "
        f"{min_clusters} clusters of at least {min_cluster_size} members; use fewer clusters"
    )


def one_partition(
    embeddings: np.ndarray,
    partition: int,
    n_clusters: int,
    seed: int,
    min_cluster_size: int,
    min_clusters: int,
    n_iter: int | None = None,
    engine: str = "relaxed",
) -> tuple[np.ndarray, int]:
    """Cluster once; clusters smaller than ``min_cluster_size`` become DROPPED (-1).

    A partition with fewer than ``min_clusters`` surviving clusters is redrawn with new scales
    and a new k-means seed. Returns labels (N,) int32 and the number of draws it took.
    """
    for attempt, (draw_seed, scales) in enumerate(_draws(seed, partition, embeddings.shape[1])):
        kmeans = KMeans(n_clusters, n_iter=n_iter, random_state=draw_seed, engine=engine)
        labels = _kept(kmeans.fit(embeddings * scales).labels_, n_clusters, min_cluster_size, min_clusters)
        if labels is not None:
            return labels, attempt + 1
    raise _hopeless(partition, n_clusters, min_cluster_size, min_clusters)


def available_cpus() -> int:
    """CPUs this process may run on (a batch scheduler's allocation, not the whole node)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when the user set it to a positive number, else :func:`available_cpus`."""
    import os

    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else available_cpus()


PARALLEL_COPIES_BYTES = 4 << 30  # each partition in flight holds its own rescaled copy of the embeddings


def parallel_partitions(threads: int, partitions: int, embedding_bytes: int) -> int:
    """How many partitions to cluster at once: one per thread, while their copies fit in 4 GiB."""
    return max(1, min(threads, partitions, PARALLEL_COPIES_BYTES // max(1, 2 * embedding_bytes)))


def partitions(
    embeddings: np.ndarray,
    which: list[int] | range,
    n_clusters: int,
    seed: int = 0,
    min_cluster_size: int = 2,
    min_clusters: int = 2,
    n_iter: int | None = None,
    progress=None,
    engine: str = "relaxed",
    threads: int | None = None,
) -> np.ndarray:
    """Labels (len(which), N) int32 of the requested partitions of ``embeddings`` (N, D) float32.

    The relaxed engine clusters ``threads`` partitions at a time (default: ``OMP_NUM_THREADS`` if
    set, else every available CPU; fewer when their copies of the embeddings would pass 4 GiB, the
    spare threads then going to BLAS); the labels do not depend on the thread count. faiss runs the
    partitions one after another on its own OpenMP threads.
    """
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if not np.isfinite(embeddings).all():
        raise CactusError("embeddings contain NaN or infinite values; cannot cluster them")
    threads = threads or default_threads()
    workers = 1 if engine == "faiss" else parallel_partitions(threads, len(which), embeddings.nbytes)
    if engine == "faiss":
        faiss = import_faiss()
        faiss.omp_set_num_threads(threads)  # its bundled OpenMP runtime is not one threadpoolctl limits

    def labels_of(p: int) -> np.ndarray:
        return one_partition(embeddings, p, n_clusters, seed, min_cluster_size, min_clusters, n_iter, engine)[0]

    with threadpool_limits(max(1, threads // workers)), ThreadPoolExecutor(workers) as pool:
        results = pool.map(labels_of, which)
        return np.stack(list(progress(results) if progress else results))


def one_partition_streamed(
    sample: np.ndarray,
    chunks,
    partition: int,
    n_clusters: int,
    seed: int,
    min_cluster_size: int,
    min_clusters: int,
    n_iter: int | None = None,
    engine: str = "relaxed",
) -> tuple[np.ndarray, int]:
    """:func:`one_partition` for data larger than memory: k-means fitted on ``sample`` (S, D) float32,
    then every point labelled chunk by chunk; ``chunks()`` yields the (n_i, D) float32 blocks in order.

    Same scales, seeds and redraw rule as :func:`one_partition`; labels (N,) int32.
    """
    for attempt, (draw_seed, scales) in enumerate(_draws(seed, partition, sample.shape[1])):
        kmeans = KMeans(n_clusters, n_iter=n_iter, random_state=draw_seed, engine=engine).fit(sample * scales)
        full = np.concatenate([kmeans.predict(block * scales) for block in chunks()])
        labels = _kept(full, n_clusters, min_cluster_size, min_clusters)
        if labels is not None:
            return labels, attempt + 1
    raise _hopeless(partition, n_clusters, min_cluster_size, min_clusters)
