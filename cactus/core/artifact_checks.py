"""Structural checks of the arrays of each kind of artifact, run by :func:`cactus.core.store.read_artifact`.

Artifacts may come from elsewhere (a shared folder, a download): before any stage uses one, its
arrays must have the shapes, dtypes and value ranges the stage relies on. These checks need no
dataset; indices are checked against the dataset where it is loaded (``load_tasks``,
``check_rows``). An array that is absent is not checked here: the stage that needs it says so when
it asks for it (``Artifact.array``). Each failure is one :class:`CactusError` line naming the file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from cactus.core.errors import CactusError


def _bad(path: Path, what: str) -> CactusError:
    return CactusError(f"{path}: corrupt artifact ({what})")


def _need(arrays: dict[str, np.ndarray], path: Path, name: str, ndim: int, kinds: str) -> np.ndarray | None:
    """The array, checked for rank and dtype kind; None when the artifact has no such array."""
    if name not in arrays:
        return None
    value = arrays[name]
    if value.ndim != ndim or value.dtype.kind not in kinds:
        raise _bad(path, f"/{name} is {value.dtype} {value.shape}, expected a {ndim}-D "
                         f"{'integer' if kinds == 'iu' else 'float'} array")
    return value


def _int(config: dict, key: str, path: Path) -> int | None:
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(path, f"config {key} is {value!r}")
    return value


def _embed(path: Path, config: dict, arrays: dict[str, np.ndarray]) -> None:
    embeddings = _need(arrays, path, "embeddings", 2, "f")
    split = _need(arrays, path, "split", 1, "iu")
    if embeddings is not None:
        if len(embeddings) == 0 or embeddings.shape[1] == 0:
            raise _bad(path, f"/embeddings is empty {embeddings.shape}")
        if not np.isfinite(embeddings).all():
            raise _bad(path, "/embeddings contain NaN or infinite values")
    if split is not None:
        if embeddings is not None and len(split) != len(embeddings):
            raise _bad(path, f"/embeddings {embeddings.shape} and /split {split.shape} do not match")
        if split.size and (split.min() < 0 or split.max() > 2):
            raise _bad(path, "/split holds values other than 0, 1, 2")


def _cluster(path: Path, config: dict, arrays: dict[str, np.ndarray]) -> None:
    labels = _need(arrays, path, "labels", 2, "iu")
    rows = _need(arrays, path, "rows", 1, "iu")
    if labels is None or rows is None:
        return
    if labels.shape[1] != len(rows) or len(rows) == 0 or labels.shape[0] == 0:
        raise _bad(path, f"/labels {labels.shape} do not fit /rows {rows.shape}")
    if rows.min() < 0 or len(np.unique(rows)) != len(rows):
        raise _bad(path, "/rows holds negative or repeated dataset indices")
    clusters = _int(config, "clusters", path)
    top = clusters if clusters is not None else np.iinfo(np.int32).max
    if labels.min() < -1 or labels.max() >= top:
        raise _bad(path, f"/labels outside [-1, {top})")
    partitions = _int(config, "partitions", path)
    if "shard" in config:
        which = _need(arrays, path, "partitions", 1, "iu")
        if which is not None and len(which) != labels.shape[0] or (partitions is not None and (which.min() < 0 or
                                                                         which.max() >= partitions)):
            raise _bad(path, f"/partitions {which.shape} do not fit /labels {labels.shape}")
    elif partitions is not None and labels.shape[0] != partitions:
        raise _bad(path, f"/labels has {labels.shape[0]} partitions, the config says {partitions}")


def _tasks(path: Path, config: dict, arrays: dict[str, np.ndarray]) -> None:
    support = _need(arrays, path, "support", 2, "iu")
    query = _need(arrays, path, "query", 2, "iu")
    if support is None or query is None:
        return
    if len(support) != len(query) or len(support) == 0:
        raise _bad(path, f"/support {support.shape} and /query {query.shape} do not match")
    ways, shots, queries = (_int(config, k, path) for k in ("ways", "shots", "queries"))
    if None not in (ways, shots, queries) and (support.shape[1] != ways * shots or query.shape[1] != ways * queries):
        raise _bad(path, f"/support {support.shape} / /query {query.shape} do not fit {ways}-way {shots}-shot")
    for name, index in (("support", support), ("query", query)):
        if index.min() < 0:
            raise _bad(path, f"/{name} holds negative indices")
    if "partition" in arrays:
        partition = _need(arrays, path, "partition", 1, "iu")
        if len(partition) != len(support):
            raise _bad(path, f"/partition {partition.shape} does not fit {len(support)} tasks")


def _meta(path: Path, config: dict, arrays: dict[str, np.ndarray]) -> None:
    weights = {k: v for k, v in arrays.items() if k.startswith("weights/")}
    for name, value in weights.items():
        # Integer bookkeeping is legitimate: batch-norm step counters, an encoder's input shape.
        counter = name.endswith(("num_batches_tracked", "input_shape")) and value.dtype.kind in "iu"
        if value.dtype.kind != "f" and not counter:
            raise _bad(path, f"/{name} is {value.dtype}, expected floats")
        if not np.isfinite(value).all():
            raise _bad(path, f"/{name} contains NaN or infinite values")
    for name in ("curve/iteration", "curve/loss", "curve/accuracy"):
        if name in arrays and arrays[name].ndim != 1:
            raise _bad(path, f"/{name} is not 1-D")


CHECKS: dict[str, Callable[[Path, dict, dict[str, np.ndarray]], None]] = {
    "embed": _embed, "cluster": _cluster, "cluster-shard": _cluster, "tasks": _tasks, "meta": _meta,
}


def check_arrays(path: Path, stage: str, config: dict, arrays: dict[str, np.ndarray]) -> None:
    """Raise CactusError naming ``path`` if the arrays of this ``stage`` artifact are malformed."""
    check = CHECKS.get(stage)
    if check is not None:
        check(path, config, arrays)


def check_rows(path: Path, rows: np.ndarray, n_images: int, what: str = "/rows") -> None:
    """Dataset indices must lie in [0, n_images)."""
    if rows.size and (rows.min() < 0 or rows.max() >= n_images):
        raise CactusError(f"{path}: {what} holds indices outside the dataset's {n_images} images")
