"""``cactus tasks``: N-way K-shot pseudo-tasks from the partitions, stored as index arrays."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from cactus.core.errors import CactusError
from cactus.core.store import read_artifact, write_artifact
from cactus.stages.common import StageResult, up_to_date
from cactus.stages.configs import TasksConfig
from cactus.stages.options import configure, key_config
from cactus.task_sampling import TaskSet, sample_tasks

STAGE = "tasks"


def run_tasks(out: Path, cluster_file: Path, options: TasksConfig | None = None, *, force: bool = False,
              **fields) -> StageResult:
    """Write /support (T, N*K), /query (T, N*Q) int32 dataset indices and /partition (T,) int32.

    options: the stage's settings (or give its fields by name: ``ways=5, num_tasks=100``); the key
    hashes every one of them.
    """
    options = configure(TasksConfig, options, fields)
    ways, shots, queries = options.shape.ways, options.shape.shots, options.shape.queries
    num_tasks, seed = options.shape.num_tasks, options.seed
    started = time.monotonic()
    clustered = read_artifact(cluster_file, stage="cluster")
    labels, rows = clustered.array("labels"), clustered.array("rows")
    if labels.ndim != 2 or rows.ndim != 1 or labels.shape[1] != len(rows) or labels.dtype.kind not in "iu":
        raise CactusError(f"{cluster_file}: malformed labels {labels.shape} for {rows.shape} rows")
    most = max((len(np.unique(row[row >= 0])) for row in labels), default=0)
    if most < ways:
        raise CactusError(f"--ways {ways}: the partitions of {cluster_file} have at most {most} clusters; use fewer "
                          "ways or more clusters (--clusters)")
    config = key_config(options)
    key, skipped = up_to_date(STAGE, out, config, [clustered.key], force)
    if skipped:
        return StageResult(STAGE, out, key, True)
    tasks = sample_tasks(labels, rows, ways, shots, queries, num_tasks, seed)
    arrays = {"support": tasks.support, "query": tasks.query, "partition": tasks.partition}
    attrs = {k: clustered.attrs[k] for k in ("data", "data_fingerprint") if k in clustered.attrs}
    key = write_artifact(out, STAGE, config, [clustered.key], arrays, attrs)
    summary = {"ways": ways, "shots": shots, "queries": queries, "tasks": num_tasks}
    return StageResult(STAGE, out, key, False, time.monotonic() - started, summary)


def load_tasks(path: Path, n_images: int):
    """Read a tasks artifact and check its indices against the dataset: (artifact, TaskSet)."""
    artifact = read_artifact(path, stage="tasks")
    cfg = artifact.config
    try:
        ways, shots, queries = int(cfg["ways"]), int(cfg["shots"]), int(cfg["queries"])
    except (KeyError, TypeError, ValueError):
        raise CactusError(f"{path}: tasks artifact without ways / shots / queries in its config") from None
    support, query = artifact.array("support"), artifact.array("query")
    partition = artifact.arrays.get("partition", np.zeros(len(support), dtype=np.int32))
    if support.ndim != 2 or support.shape[1] != ways * shots or query.shape != (len(support), ways * queries):
        raise CactusError(f"{path}: support {support.shape} / query {query.shape} do not fit {ways}-way {shots}-shot")
    for name, index in (("support", support), ("query", query)):
        if index.dtype.kind not in "iu" or (index.size and (index.min() < 0 or index.max() >= n_images)):
            raise CactusError(f"{path}: /{name} holds indices outside the dataset's {n_images} images")
    return artifact, TaskSet(support, query, partition, ways, shots, queries)
