"""Structural checks of the arrays of each kind of artifact, run by :func:`cactus.core.store.read_artifact`.

Artifacts may come from elsewhere (a shared folder, a download): before any stage uses one, its
arrays must have the shapes, dtypes and value ranges the stage relies on. Two passes:

- :func:`check_layout`, on the declared layout only (no data read): every dataset's declared size
  must be plausible for the bytes the file stores for it (a 230 KB file declaring a 745 GiB
  dataset is refused before anything is allocated), the whole must fit in memory, and ranks,
  dtype kinds and the shapes that must agree (``/embeddings`` and ``/split``, ``/labels`` and
  ``/rows`` and the config's partitions, ``/support`` and ``/query`` and ways x shots) are checked.
- :func:`check_arrays`, on the arrays read: the same shape rules, then values (NaN, index ranges).

These checks need no dataset; indices are checked against the dataset where it is loaded
(``load_tasks``, ``check_rows``). An array that is absent is not checked here: the stage that needs
it says so when it asks for it (``Artifact.array``). Each failure is one :class:`CactusError` line
naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cactus.core.errors import CactusError

# deflate cannot expand data more than 1032 times; so no gzip chunk holds more than that many times its size
MAX_EXPANSION = 1100
SMALL_BYTES = 1 << 20  # below this, a declared size is never suspicious (an uncompressed chunk may be unallocated)


class Shaped(Protocol):
    """A numpy array or an :class:`ArraySpec`: what the shape rules look at."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int: ...


@dataclass(frozen=True)
class ArraySpec:
    """A dataset's declared layout, read from the file's metadata without reading its data."""

    shape: tuple[int, ...]
    dtype: np.dtype
    stored_bytes: int  # bytes the file holds for it (compressed chunks, or the contiguous block)
    checksummed: bool  # every chunk carries a Fletcher-32 checksum

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=object)) * self.dtype.itemsize


def _bad(path: Path, what: str) -> CactusError:
    return CactusError(f"{path}: corrupt artifact ({what})")


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _need(arrays: Mapping[str, Shaped], path: Path, name: str, ndim: int, kinds: str) -> Shaped | None:
    """The array (or spec), checked for rank and dtype kind; None when the artifact has no such array."""
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


# ---- shape rules: run on the declared layout before reading, and on the arrays after ----------------


def _embed_shapes(path: Path, config: dict, arrays: Mapping[str, Shaped]) -> None:
    embeddings = _need(arrays, path, "embeddings", 2, "f")
    split = _need(arrays, path, "split", 1, "iu")
    if embeddings is not None and (embeddings.shape[0] == 0 or embeddings.shape[1] == 0):
        raise _bad(path, f"/embeddings is empty {embeddings.shape}")
    if embeddings is not None and split is not None and split.shape[0] != embeddings.shape[0]:
        raise _bad(path, f"/embeddings {embeddings.shape} and /split {split.shape} do not match")


def _cluster_shapes(path: Path, config: dict, arrays: Mapping[str, Shaped]) -> None:
    labels = _need(arrays, path, "labels", 2, "iu")
    rows = _need(arrays, path, "rows", 1, "iu")
    if labels is None or rows is None:
        return
    if labels.shape[1] != rows.shape[0] or rows.shape[0] == 0 or labels.shape[0] == 0:
        raise _bad(path, f"/labels {labels.shape} do not fit /rows {rows.shape}")
    partitions = _int(config, "partitions", path)
    if "shard" in config:
        which = _need(arrays, path, "partitions", 1, "iu")
        if which is not None and which.shape[0] != labels.shape[0]:
            raise _bad(path, f"/partitions {which.shape} do not fit /labels {labels.shape}")
    elif partitions is not None and labels.shape[0] != partitions:
        raise _bad(path, f"/labels has {labels.shape[0]} partitions, the config says {partitions}")


def _tasks_shapes(path: Path, config: dict, arrays: Mapping[str, Shaped]) -> None:
    support = _need(arrays, path, "support", 2, "iu")
    query = _need(arrays, path, "query", 2, "iu")
    partition = _need(arrays, path, "partition", 1, "iu")
    if support is None or query is None:
        return
    if support.shape[0] != query.shape[0] or support.shape[0] == 0:
        raise _bad(path, f"/support {support.shape} and /query {query.shape} do not match")
    ways, shots, queries = (_int(config, k, path) for k in ("ways", "shots", "queries"))
    if None not in (ways, shots, queries) and (support.shape[1] != ways * shots or query.shape[1] != ways * queries):
        raise _bad(path, f"/support {support.shape} / /query {query.shape} do not fit {ways}-way {shots}-shot")
    if partition is not None and partition.shape[0] != support.shape[0]:
        raise _bad(path, f"/partition {partition.shape} does not fit {support.shape[0]} tasks")


def _is_counter(name: str, value: Shaped) -> bool:
    """Integer bookkeeping is legitimate among weights: batch-norm step counters, an encoder's input shape."""
    return name.endswith(("num_batches_tracked", "input_shape")) and value.dtype.kind in "iu"


def _meta_shapes(path: Path, config: dict, arrays: Mapping[str, Shaped]) -> None:
    for name, value in arrays.items():
        if name.startswith("weights/") and value.dtype.kind != "f" and not _is_counter(name, value):
            raise _bad(path, f"/{name} is {value.dtype}, expected floats")
    for name in ("curve/iteration", "curve/loss", "curve/accuracy"):
        if name in arrays and arrays[name].ndim != 1:
            raise _bad(path, f"/{name} is not 1-D")


SHAPES: dict[str, Callable[[Path, dict, Mapping[str, Any]], None]] = {
    "embed": _embed_shapes, "cluster": _cluster_shapes, "cluster-shard": _cluster_shapes, "tasks": _tasks_shapes,
    "meta": _meta_shapes,
}


# ---- value rules: run on the arrays read ------------------------------------------------------------


def _embed_values(path: Path, config: dict, arrays: dict[str, np.ndarray]) -> None:
    if "embeddings" in arrays and not np.isfinite(arrays["embeddings"]).all():
        raise _bad(path, "/embeddings contain NaN or infinite values")
    split = arrays.get("split")
    if split is not None and split.size and (split.min() < 0 or split.max() > 2):
        raise _bad(path, "/split holds values other than 0, 1, 2")


def _cluster_values(path: Path, config: dict, arrays: dict[str, np.ndarray]) -> None:
    labels, rows = arrays.get("labels"), arrays.get("rows")
    if labels is None or rows is None:
        return
    if rows.min() < 0 or len(np.unique(rows)) != len(rows):
        raise _bad(path, "/rows holds negative or repeated dataset indices")
    clusters = _int(config, "clusters", path)
    top = clusters if clusters is not None else np.iinfo(np.int32).max
    if labels.min() < -1 or labels.max() >= top:
        raise _bad(path, f"/labels outside [-1, {top})")
    partitions = _int(config, "partitions", path)
    which = arrays.get("partitions")
    if "shard" in config and which is not None and which.size and partitions is not None and (
            which.min() < 0 or which.max() >= partitions):
        raise _bad(path, f"/partitions outside [0, {partitions})")


def _tasks_values(path: Path, config: dict, arrays: dict[str, np.ndarray]) -> None:
    for name in ("support", "query"):
        if name in arrays and arrays[name].size and arrays[name].min() < 0:
            raise _bad(path, f"/{name} holds negative indices")


def _meta_values(path: Path, config: dict, arrays: dict[str, np.ndarray]) -> None:
    for name, value in arrays.items():
        if name.startswith("weights/") and not np.isfinite(value).all():
            raise _bad(path, f"/{name} contains NaN or infinite values")


VALUES: dict[str, Callable[[Path, dict, dict[str, np.ndarray]], None]] = {
    "embed": _embed_values, "cluster": _cluster_values, "cluster-shard": _cluster_values, "tasks": _tasks_values,
    "meta": _meta_values,
}


def memory_bytes() -> int | None:
    """This machine's physical memory, or None when the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_layout(path: Path, stage: str, config: dict, specs: dict[str, ArraySpec], in_memory: bool = True) -> None:
    """Raise CactusError naming ``path`` if the declared layout is implausible or wrong for this ``stage``.

    Reads no data: run it before any array is read, so a crafted header cannot exhaust memory.
    ``in_memory``: the arrays are about to be read whole, so together they must fit in this
    machine's memory (False for a reader that streams them in slabs).
    """
    total = 0
    for name, spec in specs.items():
        if spec.nbytes > MAX_EXPANSION * spec.stored_bytes + SMALL_BYTES:
            raise _bad(path, f"/{name} declares {spec.dtype} {spec.shape} ({_size(spec.nbytes)}) but the file "
                             f"stores {_size(spec.stored_bytes)} for it")
        total += spec.nbytes
    limit = memory_bytes() if in_memory else None
    if limit is not None and total > limit:
        raise CactusError(f"{path}: its arrays need {_size(total)}, more than this machine's {_size(limit)} of memory")
    rule = SHAPES.get(stage)
    if rule is not None:
        rule(path, config, specs)


def check_arrays(path: Path, stage: str, config: dict, arrays: dict[str, np.ndarray],
                 unread: Mapping[str, ArraySpec] | None = None) -> None:
    """Raise CactusError naming ``path`` if the arrays of this ``stage`` artifact are malformed.

    ``unread``: the layout of arrays left in the file (read later in slabs); only their shapes are checked.
    """
    if stage in SHAPES:
        SHAPES[stage](path, config, {**(unread or {}), **arrays})
    if stage in VALUES:
        VALUES[stage](path, config, arrays)


def check_rows(path: Path, rows: np.ndarray, n_images: int, what: str = "/rows") -> None:
    """Dataset indices must lie in [0, n_images)."""
    if rows.size and (rows.min() < 0 or rows.max() >= n_images):
        raise CactusError(f"{path}: {what} holds indices outside the dataset's {n_images} images")
