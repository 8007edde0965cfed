"""Random draws of meta-training, each from a generator keyed by (seed, run, step).

Keying every draw by counters instead of carrying generator state makes a resumed run draw
exactly what an uninterrupted run would have drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class InnerRun:
    """One unsupervised training run of a freshly initialised base model.

    pool: (M,) rows of the meta-train images the run trains on (all images of ``pool_classes`` classes).
    pool_labels: (M,) their class ids, used only by the meta-objective's few-shot tasks.
    """

    index: int
    width: int
    depth: int
    length: int
    pool: np.ndarray
    pool_labels: np.ndarray


def draw_run(seed: int, index: int, labels: np.ndarray, width_range: tuple[int, int],
             depth_range: tuple[int, int], pool_classes: int, length: int) -> InnerRun:
    """Width, depth and the classes of inner run ``index``; labels (N,) of the meta-train images."""
    rng = np.random.default_rng([seed, index, 0])
    width = int(rng.integers(width_range[0], width_range[1] + 1))
    depth = int(rng.integers(depth_range[0], depth_range[1] + 1))
    classes = np.unique(labels)
    chosen = rng.choice(classes, size=min(pool_classes, len(classes)), replace=False)
    pool = np.flatnonzero(np.isin(labels, chosen))
    return InnerRun(index, width, depth, length, pool, labels[pool])


def draw_batches(seed: int, run: InnerRun, step: int, count: int, batch: int) -> np.ndarray:
    """(count, batch) rows for the unsupervised steps ``step .. step+count-1`` of ``run``."""
    rng = np.random.default_rng([seed, run.index, step + 1, 1])
    return np.stack([run.pool[rng.choice(len(run.pool), size=batch, replace=False)] for _ in range(count)])


def draw_task(seed: int, run: InnerRun, step: int, ways: int, shots: int, queries: int):
    """A few-shot task from the run's pool: (support rows (ways*shots,), labels, query rows, labels)."""
    rng = np.random.default_rng([seed, run.index, step + 1, 2])
    classes = rng.choice(np.unique(run.pool_labels), size=ways, replace=False)
    support, s_labels, query, q_labels = [], [], [], []
    for k, cls in enumerate(classes):
        members = run.pool[run.pool_labels == cls]
        picked = rng.choice(members, size=shots + queries, replace=False)
        support.extend(picked[:shots])
        query.extend(picked[shots:])
        s_labels.extend([k] * shots)
        q_labels.extend([k] * queries)
    return np.array(support), np.array(s_labels), np.array(query), np.array(q_labels)
