"""``cactus cluster``: P k-means partitions of the meta-train embeddings."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from cactus.core import log
from cactus.core.errors import CactusError
from cactus.core.progress import Progress
from cactus.core.store import read_artifact, write_artifact
from cactus.stages.common import StageResult, up_to_date
from cactus.stages.configs import ClusterConfig
from cactus.stages.options import configure, key_config

STAGE = "cluster"
SHARD_STAGE = "cluster-shard"


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


STREAM_ABOVE_BYTES = int(float(os.environ.get("CACTUS_STREAM_ABOVE_MB", "1024")) * (1 << 20))
POINTS_PER_CENTROID = 256  # k-means trains on at most this many sampled points per centre (as faiss does)
CHUNK_ROWS = 65536


class StreamedEmbeddings:
    """The meta-train rows of an embed artifact too large for memory, read chunk by chunk with h5py.

    ``rows`` (M,) dataset indices; ``chunks()`` yields their embeddings (n_i, D) float32 in order,
    each checked for NaN; ``sample(size, seed)`` (size, D) float32, rows drawn without replacement.
    """

    def __init__(self, path: Path) -> None:
        import h5py

        self.header = read_artifact(path, stage="embed", arrays=False)
        self.path = path
        try:
            with h5py.File(path, "r") as source:
                data, split = source["embeddings"], source["split"][()]
                self.shape, kind = data.shape, data.dtype.kind
        except (OSError, KeyError, ValueError) as error:
            raise CactusError(f"{path}: corrupt or unreadable artifact ({error})") from None
        if len(self.shape) != 2 or kind != "f" or split.shape != (self.shape[0],):
            raise CactusError(f"{path}: malformed embeddings {self.shape} / split {split.shape}")
        self.train = split == 0
        self.rows = np.flatnonzero(self.train)
        if len(self.rows) == 0:
            raise CactusError(f"{path}: no meta-train rows to cluster")

    def _blocks(self):
        import h5py

        with h5py.File(self.path, "r") as source:
            data = source["embeddings"]
            for start in range(0, self.shape[0], CHUNK_ROWS):
                block = data[start : start + CHUNK_ROWS][self.train[start : start + CHUNK_ROWS]]
                if not np.isfinite(block).all():
                    raise CactusError(f"{self.path}: embeddings contain NaN or infinite values")
                yield np.ascontiguousarray(block, dtype=np.float32)

    def chunks(self):
        return self._blocks()

    def sample(self, size: int, seed: int) -> np.ndarray:
        chosen = np.zeros(len(self.rows), dtype=bool)
        chosen[np.random.default_rng([seed, 2**20]).choice(len(self.rows), size, replace=False)] = True
        parts, offset = [], 0
        for block in self._blocks():
            parts.append(block[chosen[offset : offset + len(block)]])
            offset += len(block)
        return np.concatenate(parts)


def embeddings_nbytes(path: Path) -> int:
    """Size in bytes of /embeddings without reading it (0 when unreadable: the full read reports why)."""
    import h5py

    try:
        with h5py.File(path, "r") as source:
            data = source["embeddings"]
            return int(np.prod(data.shape)) * data.dtype.itemsize
    except Exception:  # noqa: BLE001 - any failure here is reported by the checked full read
        return 0


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> (I, N) with 0 <= I < N; None stays None."""
    if text is None:
        return None
    try:
        index, count = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise CactusError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise CactusError(f"--shard {text}: expected 0 <= I < N")
    return index, count


def run_cluster(out: Path, embed_file: Path, options: ClusterConfig | None = None, *, force: bool = False,
                shard: tuple[int, int] | None = None, **fields) -> StageResult:
    """Write /labels (P, M) int32 (-1 = dropped small cluster) and /rows (M,) dataset indices.

    options: the stage's settings (or give its fields by name: ``clusters=30, partitions=3``). The
    key hashes those declared ``key``, with ``clusters``, ``min_clusters`` and ``iterations``
    resolved (None: :func:`default_clusters`, k / 10, the engine's
    :data:`cactus.clustering.partitions.DEFAULT_ITERATIONS`); ``threads`` (default:
    ``OMP_NUM_THREADS``, else every available CPU) changes only the speed, never the labels.
    With ``shard`` = (I, N) only the partitions p with p % N == I are computed, into a
    ``cluster-shard`` artifact (/labels (P_I, M), /partitions (P_I,)); :func:`merge_shards`
    joins the N shards into the artifact an unsharded run writes.
    """
    from cactus.clustering.partitions import partitions as make_partitions
    from cactus.clustering.partitions import resolved_iterations

    options = configure(ClusterConfig, options, fields)
    started = time.monotonic()
    streamed = None
    if embed_file.is_file() and embeddings_nbytes(embed_file) > STREAM_ABOVE_BYTES:
        streamed = StreamedEmbeddings(embed_file)
        embedded, rows, train = streamed.header, streamed.rows, None
    else:
        embedded, rows, train = load_train_embeddings(embed_file)
    k = options.clusters or default_clusters(len(rows))
    options = replace(options, clusters=k, iterations=resolved_iterations(options.engine, options.iterations),
                      min_clusters=options.min_clusters if options.min_clusters is not None else max(2, k // 10))
    if options.min_clusters > k:
        raise CactusError(f"--min-clusters {options.min_clusters}: more than the {k} clusters of a partition "
                          "(cactus run: --ways); use fewer ways or more clusters (--clusters)")
    partitions, seed, engine, threads = options.partitions, options.seed, options.engine, options.threads
    min_cluster_size, min_clusters, iterations = options.min_cluster_size, options.min_clusters, options.iterations
    config = key_config(options)
    sample_size = None
    if streamed is not None and len(rows) > k * POINTS_PER_CENTROID:
        sample_size = k * POINTS_PER_CENTROID  # k-means fitted on a sample, every row then labelled
        config["train_sample"] = sample_size
    stage, which = STAGE, list(range(partitions))
    if shard is not None:
        index, count = shard
        if count > partitions:
            raise CactusError(f"--shard {index}/{count}: more shards than the {partitions} partitions")
        stage, which = SHARD_STAGE, which[index::count]
        config = {**config, "shard": [index, count]}
    key, skipped = up_to_date(stage, out, config, [embedded.key], force)
    if skipped:
        return StageResult(stage, out, key, True)
    listed = ", ".join(map(str, which[:4])) + (", ..." if len(which) > 4 else "")
    of = f" (shard {shard[0]}/{shard[1]}: partitions {listed})" if shard else ""
    dim = streamed.shape[1] if streamed is not None else train.shape[1]
    how = f", streamed from HDF5 (k-means on {sample_size or len(rows)} sampled rows)" if streamed else ""
    log.info(f"cluster: {len(which)} partitions of {k} clusters over {len(rows)} x {dim} embeddings{of}{how}")
    if streamed is None:
        labels = make_partitions(
            train, which, k, seed, min_cluster_size, min_clusters, iterations,
            progress=lambda it: Progress(it, len(which), "cluster"), engine=engine, threads=threads,
        )
    else:
        from cactus.clustering.partitions import one_partition_streamed

        sample = streamed.sample(sample_size, seed) if sample_size else np.concatenate(list(streamed.chunks()))
        labels = np.stack([
            one_partition_streamed(sample, streamed.chunks, p, k, seed, min_cluster_size, min_clusters, iterations,
                                   engine)[0]
            for p in Progress(which, len(which), "cluster")
        ])
    attrs = {key_: embedded.attrs[key_] for key_ in ("data", "data_fingerprint") if key_ in embedded.attrs}
    arrays = {"labels": labels, "rows": rows.astype(np.int64)}
    if shard is not None:
        arrays["partitions"] = np.asarray(which, dtype=np.int32)
    key = write_artifact(out, stage, config, [embedded.key], arrays, attrs)
    kept = (labels >= 0).mean() * 100
    summary = {"clusters": k, "partitions": len(which), "rows": int(len(rows)), "kept_percent": round(kept, 2)}
    if shard is not None:
        summary["shard"] = f"{shard[0]}/{shard[1]}"
    return StageResult(stage, out, key, False, time.monotonic() - started, summary)


def merge_shards(out: Path, shard_files: list[Path], force: bool = False) -> StageResult:
    """Join the N ``cluster-shard`` artifacts of one configuration into the unsharded ``cluster`` artifact.

    The shards must share the embedding and the configuration and be exactly shards 0..N-1 of N;
    the result (config, key, labels) is the one ``cactus cluster`` without ``--shard`` writes.
    """
    started = time.monotonic()
    if not shard_files:
        raise CactusError("cactus cluster merge: give the shard artifacts to merge")
    shards = [read_artifact(path, stage=SHARD_STAGE) for path in shard_files]
    first = shards[0]
    base = {k: v for k, v in first.config.items() if k != "shard"}
    try:
        partitions = int(base["partitions"])
        count = int(first.config["shard"][1])
    except (KeyError, TypeError, ValueError, IndexError):
        raise CactusError(f"{first.path}: shard artifact without partitions / shard in its config") from None
    seen: dict[int, Path] = {}
    for shard in shards:
        if shard.inputs != first.inputs:
            raise CactusError(f"{shard.path}: made from another embedding than {first.path}")
        if {k: v for k, v in shard.config.items() if k != "shard"} != base:
            raise CactusError(f"{shard.path}: made with another configuration than {first.path}")
        index, of = _shard_of(shard)
        if of != count:
            raise CactusError(f"{shard.path}: shard {index}/{of}, but {first.path} is one of {count}")
        if index in seen:
            raise CactusError(f"{shard.path}: shard {index}/{count} given twice (also {seen[index]})")
        seen[index] = shard.path
    missing = sorted(set(range(count)) - set(seen))
    if missing:
        raise CactusError(f"cactus cluster merge: shards {', '.join(f'{i}/{count}' for i in missing)} are missing")
    key, skipped = up_to_date(STAGE, out, base, list(first.inputs), force)
    if skipped:
        return StageResult(STAGE, out, key, True)
    rows = first.array("rows")
    if rows.ndim != 1 or rows.dtype.kind not in "iu" or (rows.size and rows.min() < 0):
        raise CactusError(f"{first.path}: malformed /rows {rows.shape} {rows.dtype}")
    labels = np.zeros((partitions, len(rows)), dtype=np.int32)
    for shard in shards:
        index, _ = _shard_of(shard)
        which, part = shard.array("partitions"), shard.array("labels")
        expected = np.arange(partitions)[index::count]
        if which.shape != expected.shape or not np.array_equal(which, expected):
            raise CactusError(f"{shard.path}: holds partitions {which.tolist()[:6]}, expected {expected.tolist()[:6]}")
        if not np.array_equal(shard.array("rows"), rows):
            raise CactusError(f"{shard.path}: clustered other rows than {first.path}")
        k = int(base["clusters"])
        if part.shape != (len(which), len(rows)) or part.dtype.kind not in "iu" or (
                part.size and (part.min() < -1 or part.max() >= k)):
            raise CactusError(f"{shard.path}: malformed labels {part.shape} {part.dtype} for {len(rows)} rows")
        labels[which] = part
    attrs = {name: first.attrs[name] for name in ("data", "data_fingerprint") if name in first.attrs}
    key = write_artifact(out, STAGE, base, list(first.inputs), {"labels": labels, "rows": rows}, attrs)
    log.info(f"cluster: merged {count} shards into {out}")
    kept = (labels >= 0).mean() * 100
    summary = {"clusters": int(base["clusters"]), "partitions": partitions, "rows": int(len(rows)),
               "kept_percent": round(kept, 2), "shards": count}
    return StageResult(STAGE, out, key, False, time.monotonic() - started, summary)


def _shard_of(artifact) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in artifact.config["shard"])
    except (KeyError, TypeError, ValueError):
        raise CactusError(f"{artifact.path}: shard artifact without a valid shard in its config") from None
    if count < 1 or not 0 <= index < count:
        raise CactusError(f"{artifact.path}: invalid shard {index}/{count}")
    return index, count
