"""``cactus cluster``: P k-means partitions of the meta-train embeddings."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from cactus import log
from cactus.errors import CactusError
from cactus.progress import Progress
from cactus.stages.common import StageResult, up_to_date
from cactus.store import read_artifact, write_artifact

STAGE = "cluster"


def default_clusters(n_rows: int) -> int:
    """The paper's k = 500, or fewer for small datasets (about 20 images a cluster)."""
    return int(min(500, max(2, n_rows // 20)))


def load_train_embeddings(embed_file: Path):
    """The embed artifact, its meta-train rows (M,) and their embeddings (M, D) float32, checked."""
    embedded = read_artifact(embed_file, stage="embed")
    embeddings = embedded.array("embeddings")
    split = embedded.array("split")
    if embeddings.ndim != 2 or split.shape != (len(embeddings),) or embeddings.dtype.kind != "f":
        raise CactusError(f"{embed_file}: malformed embeddings {embeddings.shape} / split {split.shape}")
    if not np.isfinite(embeddings).all():
        raise CactusError(f"{embed_file}: embeddings contain NaN or infinite values")
    rows = np.flatnonzero(split == 0)
    if len(rows) == 0:
        raise CactusError(f"{embed_file}: no meta-train rows to cluster")
    return embedded, rows, np.ascontiguousarray(embeddings[rows], dtype=np.float32)


def run_cluster(
    out: Path,
    embed_file: Path,
    clusters: int | None = None,
    partitions: int = 100,
    seed: int = 0,
    min_cluster_size: int = 2,
    min_clusters: int | None = None,
    iterations: int = 20,
    force: bool = False,
) -> StageResult:
    """Write /labels (P, M) int32 (-1 = dropped small cluster) and /rows (M,) dataset indices."""
    from cactus.cluster import partitions as make_partitions

    started = time.monotonic()
    embedded, rows, train = load_train_embeddings(embed_file)
    k = clusters or default_clusters(len(rows))
    if partitions < 1:
        raise CactusError(f"--partitions {partitions}: must be at least 1")
    if k < 2:
        raise CactusError(f"--clusters {k}: must be at least 2")
    min_clusters = min_clusters if min_clusters is not None else max(2, k // 10)
    config = {"clusters": k, "partitions": partitions, "seed": seed, "min_cluster_size": min_cluster_size,
              "min_clusters": min_clusters, "iterations": iterations}
    key, skipped = up_to_date(STAGE, out, config, [embedded.key], force)
    if skipped:
        return StageResult(STAGE, out, key, True)
    log.info(f"cluster: {partitions} partitions of {k} clusters over {len(rows)} x {train.shape[1]} embeddings")
    labels = make_partitions(
        train, range(partitions), k, seed, min_cluster_size, min_clusters, iterations,
        progress=lambda it: Progress(it, partitions, "cluster"),
    )
    attrs = {key_: embedded.attrs[key_] for key_ in ("data", "data_fingerprint") if key_ in embedded.attrs}
    key = write_artifact(out, STAGE, config, [embedded.key], {"labels": labels, "rows": rows.astype(np.int64)}, attrs)
    kept = (labels >= 0).mean() * 100
    summary = {"clusters": k, "partitions": partitions, "rows": int(len(rows)), "kept_percent": round(kept, 2)}
    return StageResult(STAGE, out, key, False, time.monotonic() - started, summary)
