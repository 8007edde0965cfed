"""N-way K-shot task sampling, as index arrays, from pseudo-label partitions or true labels.

A task is stored class-major: ``support[t, c * K + j]`` is shot j of class c and
``query[t, c * Q + j]`` query j of class c, so the labels are implicit
(``np.repeat(np.arange(N), K)``). Entries are indices into the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cactus.core.errors import CactusError

CHUNK = 512


@dataclass
class TaskSet:
    """support (T, N*K) int32, query (T, N*Q) int32 dataset indices; partition (T,) int32."""

    support: np.ndarray
    query: np.ndarray
    partition: np.ndarray
    ways: int
    shots: int
    queries: int

    def __len__(self) -> int:
        return len(self.support)

    def support_labels(self) -> np.ndarray:
        """(N*K,) int64 labels of every task's support set."""
        return np.repeat(np.arange(self.ways), self.shots)

    def query_labels(self) -> np.ndarray:
        """(N*Q,) int64 labels of every task's query set."""
        return np.repeat(np.arange(self.ways), self.queries)


def _members_table(labels: np.ndarray, min_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of each usable cluster, padded: members (C, S) int64 with -1, sizes (C,)."""
    valid = labels >= 0
    clusters, counts = np.unique(labels[valid], return_counts=True)
    usable = clusters[counts >= min_size]
    if len(usable) == 0:
        return np.zeros((0, 0), dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, usable, side="left")
    ends = np.searchsorted(sorted_labels, usable, side="right")
    sizes = ends - starts
    members = np.full((len(usable), int(sizes.max())), -1, dtype=np.int64)
    for c, (start, end) in enumerate(zip(starts, ends, strict=False)):
        members[c, : end - start] = order[start:end]
    return members, sizes


def sample_tasks(
    labels: np.ndarray,
    rows: np.ndarray,
    ways: int,
    shots: int,
    queries: int,
    n_tasks: int,
    seed: int = 0,
    what: str = "partition",
) -> TaskSet:
    """Sample tasks from P label vectors over the same rows.

    labels: (P, M) int; -1 marks a row without a (usable) label.
    rows: (M,) dataset index of each row.
    Each task draws a partition uniformly among those with at least ``ways`` clusters of
    ``shots + queries`` members, then ``ways`` such clusters, then ``shots + queries`` distinct
    members of each.
    """
    for name, value in (("--ways", ways), ("--shots", shots), ("--num-tasks", n_tasks)):
        if value < 1:
            raise CactusError(f"{name} {value}: must be at least 1")
    if queries < 0:
        raise CactusError(f"--queries {queries}: must not be negative")
    labels = np.atleast_2d(labels)
    need = shots + queries
    tables = [_members_table(row, need) for row in labels]
    eligible = [p for p, (_, sizes) in enumerate(tables) if len(sizes) >= ways]
    if not eligible:
        most = max((len(sizes) for _, sizes in tables), default=0)
        raise CactusError(
            f"--ways {ways}: no {what} has {ways} classes with at least {need} (shots + queries) members "
            f"each; the best has {most}. Lower --ways, --shots or --queries, or use fewer clusters"
        )
    rng = np.random.default_rng(seed)
    chosen_partition = np.asarray(eligible)[rng.integers(len(eligible), size=n_tasks)]
    picked = np.empty((n_tasks, ways, need), dtype=np.int64)
    for p in np.unique(chosen_partition):
        members, sizes = tables[p]
        task_ids = np.flatnonzero(chosen_partition == p)
        for start in range(0, len(task_ids), CHUNK):
            block = task_ids[start : start + CHUNK]
            classes = rng.random((len(block), len(sizes))).argsort(axis=1)[:, :ways]
            keys = rng.random((len(block), ways, members.shape[1]))
            keys[members[classes] < 0] = np.inf
            positions = keys.argsort(axis=2)[:, :, :need]
            picked[block] = np.take_along_axis(members[classes], positions, axis=2)
    dataset_index = rows[picked]
    return TaskSet(
        support=dataset_index[:, :, :shots].reshape(n_tasks, ways * shots).astype(np.int32),
        query=dataset_index[:, :, shots:].reshape(n_tasks, ways * queries).astype(np.int32),
        partition=chosen_partition.astype(np.int32),
        ways=ways,
        shots=shots,
        queries=queries,
    )
