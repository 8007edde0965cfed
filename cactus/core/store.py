"""The HDF5 artifact store: one artifact, one file, keyed by content, written atomically.

Attributes on the root group: ``stage``, ``config`` (sorted JSON), ``key`` (sha256 of stage,
config and input keys), ``inputs`` (JSON list of input keys), ``version``, ``created``.
Arrays are HDF5 datasets (``/embeddings``, ``/weights/conv1.weight``, ...); no pickles. Every
non-scalar dataset is chunked with HDF5's Fletcher-32 checksum filter (gzip on top when large), so
damaged data is detected on every read, and by the cache check (:func:`cached_key`), which reads
the data once in bounded slabs: a flipped byte under an intact header is a cache miss, recomputed.
Artifacts written before checksums existed stay readable (their data is simply not verified).

Reading checks before it allocates: only a regular file is opened, and the declared layout
(shapes, dtypes, stored bytes) is checked against the file and the stage
(:mod:`cactus.core.artifact_checks`) before any array is read. ``read_artifact(..., arrays=False)``
reads metadata only (``cactus info``).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cactus import __version__
from cactus.core import log
from cactus.core.artifact_checks import ArraySpec, check_arrays, check_layout
from cactus.core.atomic import atomic_path
from cactus.core.errors import CactusError
from cactus.core.h5file import write_h5
from cactus.core.overwrite import check_output_path
from cactus.core.paths import require_regular_file

FORMAT = "cactus-artifact"
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
REQUIRED_ATTRS = ("format", "stage", "config", "key", "inputs", "version", "created")
COMPRESS_ABOVE_BYTES = 1 << 16
VERIFY_SLAB_BYTES = 32 << 20  # the cache check reads data in slabs of about this size
READ_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError)


def compute_key(stage: str, config: dict[str, Any], input_keys: list[str]) -> str:
    """sha256 of the sorted-JSON (stage, config, input keys): equal keys mean equal artifacts."""
    payload = json.dumps({"stage": stage, "config": config, "inputs": list(input_keys)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class Artifact:
    """An artifact read back from disk: its header, the layout of every dataset, and (unless read with
    ``arrays=False``) the arrays themselves, loaded eagerly."""

    path: Path
    stage: str
    config: dict[str, Any]
    key: str
    inputs: list[str]
    version: str
    created: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    layout: dict[str, ArraySpec] = field(default_factory=dict)

    def array(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            raise CactusError(f"{self.path}: {self.stage} artifact has no array '{name}'")
        return self.arrays[name]

    def group(self, prefix: str) -> dict[str, np.ndarray]:
        """Arrays under ``prefix/``, with the prefix stripped: ``group('weights')``."""
        start = prefix.rstrip("/") + "/"
        return {k[len(start):]: v for k, v in self.arrays.items() if k.startswith(start)}


# ---- writing ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowStream:
    """An array written block by block, never whole in memory: ``blocks()`` yields (rows, array) in order.

    shape: (N, ...) of the whole array; each block is (n, ...) for its ``rows`` slice; together
    they cover every row. An exception from ``blocks()`` aborts the write like any other failure.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    blocks: Callable[[], Iterator[tuple[slice, np.ndarray]]]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


def write_artifact(
    path: str | Path,
    stage: str,
    config: dict[str, Any],
    inputs: list[str],
    arrays: dict[str, np.ndarray | RowStream],
    attrs: dict[str, Any] | None = None,
) -> str:
    """Write an artifact atomically (temporary file in the same folder, then rename); returns its key.

    An array given as a :class:`RowStream` is written block by block (an (N, D) embedding need
    not be held whole: 60,000 raw 84x84x3 images are 5 GB of float32).

    ``attrs`` holds extra JSON-able metadata (a training curve, a dataset description...). What is at
    ``path`` must be replaceable by a ``stage`` artifact (:func:`cactus.core.overwrite.check_output_path`);
    a full disk is one CactusError naming ``path``, with the previous file intact and nothing left behind.
    """
    path = Path(path)
    key = compute_key(stage, config, inputs)
    try:
        check_output_path(path, stage)
        with atomic_path(path, "artifact") as partial:
            size = write_h5(partial, lambda out: _fill(out, stage, config, key, inputs, arrays, attrs or {}))
        log.debug(f"store: wrote {path}: {size} bytes, {len(arrays)} arrays, {stage} key {key[:12]}")
    finally:
        from cactus.core.lock import release

        release(path)  # taken by cactus.stages.common.up_to_date, if it was
    return key


def _fill(out, stage: str, config: dict, key: str, inputs: list[str], arrays: dict[str, np.ndarray | RowStream],
          attrs: dict[str, Any]) -> None:
    out.attrs["format"] = FORMAT
    out.attrs["stage"] = stage
    out.attrs["config"] = json.dumps(config, sort_keys=True)
    out.attrs["key"] = key
    out.attrs["inputs"] = json.dumps(list(inputs))
    out.attrs["version"] = __version__
    out.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for name, value in attrs.items():
        out.attrs[f"x_{name}"] = json.dumps(value, sort_keys=True)
    for name, value in arrays.items():
        value = value if isinstance(value, RowStream) else np.asarray(value)
        options: dict[str, Any] = {}
        if len(value.shape) > 0:  # a scalar cannot be chunked, so it carries no checksum
            options = {"chunks": True, "fletcher32": True}
            if value.nbytes > COMPRESS_ABOVE_BYTES:
                options.update(compression="gzip", compression_opts=4, shuffle=True)
        if isinstance(value, RowStream):
            dataset = out.create_dataset(name, shape=value.shape, dtype=value.dtype, **options)
            for rows, block in value.blocks():
                dataset[rows] = block
        else:
            out.create_dataset(name, data=value, **options)


# ---- reading ----------------------------------------------------------------------------------------


def read_artifact(path: str | Path, stage: str | None = None, arrays: bool = True,
                  unread: tuple[str, ...] = ()) -> Artifact:
    """Read an artifact; a missing, corrupt or foreign file raises CactusError naming the path.

    ``arrays=False`` reads the header and the layout of every dataset, never their data; with a
    ``stage`` (a stage about to use the artifact, perhaps streaming its data) the layout is checked
    too, without ``stage`` (``cactus info``) it is shown as declared. ``unread``: arrays left in the
    file (shapes checked), for :func:`read_rows` to read the rows it needs.
    """
    import h5py

    path = require_regular_file(path, "artifact")
    try:
        with h5py.File(path, "r") as source:
            artifact = _header(source, path)
            _check_header(artifact, stage)
            if arrays or stage is not None:  # before anything is allocated
                check_layout(path, artifact.stage, artifact.config, artifact.layout, in_memory=arrays)
            if arrays:
                artifact.arrays = {name: _read_dataset(source[name], path, name) for name in artifact.layout
                                   if name not in unread}
    except CactusError:
        raise
    except READ_ERRORS as error:
        raise CactusError(f"{path}: corrupt or unreadable artifact ({_reason(error)})") from None
    if arrays:
        check_arrays(path, artifact.stage, artifact.config, artifact.arrays,  # shapes, dtypes, ranges, NaN
                     {name: artifact.layout[name] for name in unread if name in artifact.layout})
    log.debug(f"store: read {path} ({artifact.stage}, {len(artifact.layout)} arrays"
              f"{'' if arrays else ', header only'})")
    return artifact


def _reason(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _header(source, path: Path) -> Artifact:
    attrs = dict(source.attrs)
    missing = [a for a in REQUIRED_ATTRS if a not in attrs]
    if missing or attrs.get("format") != FORMAT:
        raise CactusError(f"{path}: not a cactus artifact (missing {', '.join(missing) or 'format'})")
    return Artifact(
        path=path,
        stage=str(attrs["stage"]),
        config=json.loads(attrs["config"]),
        key=str(attrs["key"]),
        inputs=list(json.loads(attrs["inputs"])),
        version=str(attrs["version"]),
        created=str(attrs["created"]),
        attrs={k[2:]: json.loads(v) for k, v in attrs.items() if k.startswith("x_")},
        layout=_layout(source),
    )


def _layout(source) -> dict[str, ArraySpec]:
    """Every dataset's shape, dtype, stored bytes and checksum flag, from metadata only."""
    import h5py

    specs: dict[str, ArraySpec] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            specs[name] = ArraySpec(tuple(int(n) for n in obj.shape or ()), np.dtype(obj.dtype),
                                    int(obj.id.get_storage_size()), bool(obj.fletcher32))

    source.visititems(visit)
    return specs


def _check_header(artifact: Artifact, stage: str | None) -> None:
    path = artifact.path
    if not isinstance(artifact.config, dict) or not all(isinstance(k, str) for k in artifact.inputs):
        raise CactusError(f"{path}: corrupt artifact (config or inputs attribute malformed)")
    if not all(SHA256_HEX.fullmatch(k) for k in [artifact.key, *artifact.inputs]):
        raise CactusError(f"{path}: corrupt artifact (key or input keys are not sha256 hex digests)")
    for name in ("stage", "version", "created"):
        text = getattr(artifact, name)
        if not text.isprintable():  # a scribbled byte decodes to a lone surrogate, which is not
            raise CactusError(f"{path}: corrupt artifact ({name} attribute is not printable text)")
    if stage is not None and artifact.stage != stage:
        raise CactusError(f"{path}: is a '{artifact.stage}' artifact, expected a '{stage}' artifact")


def _read_dataset(dataset, path: Path, name: str, where: slice = slice(None)) -> np.ndarray:
    """The dataset's data (or a slab of it); a chunk failing its checksum is one CactusError naming both."""
    try:
        return dataset[()] if dataset.ndim == 0 else dataset[where]
    except READ_ERRORS as error:
        what = "a data chunk fails its checksum" if dataset.fletcher32 else f"data unreadable: {_reason(error)}"
        raise CactusError(f"{path}: corrupt artifact (/{name}: {what})") from None


def read_rows(artifact: Artifact, name: str, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (increasing indices) of the 2-D float array ``name``, read in slabs of about
    ``VERIFY_SLAB_BYTES``: memory for the rows asked for, not the whole array. A NaN or infinite value
    among them, or a chunk failing its checksum, is a CactusError naming the file."""
    import h5py

    path, spec = artifact.path, artifact.layout[name]
    step = max(1, VERIFY_SLAB_BYTES // max(1, spec.nbytes // max(1, spec.shape[0])))
    out = np.empty((len(rows), *spec.shape[1:]), dtype=spec.dtype)
    try:
        with h5py.File(path, "r") as source:
            for start in range(0, spec.shape[0], step):
                first, last = np.searchsorted(rows, [start, start + step])
                if first == last:
                    continue
                slab = _read_dataset(source[name], path, name, slice(start, start + step))
                out[first:last] = slab[rows[first:last] - start]
    except CactusError:
        raise
    except READ_ERRORS as error:
        raise CactusError(f"{path}: corrupt or unreadable artifact ({_reason(error)})") from None
    if not np.isfinite(out).all():
        raise CactusError(f"{path}: corrupt artifact (/{name} contains NaN or infinite values)")
    return out


def verify_content(artifact: Artifact) -> None:
    """Read every chunked dataset of ``artifact`` (read with ``arrays=False``) in slabs of bounded size,
    so HDF5 verifies each chunk's checksum and decompresses it; CactusError naming the first bad one."""
    import h5py

    path = artifact.path
    check_layout(path, artifact.stage, artifact.config, artifact.layout, in_memory=False)  # nor loop on a crafted shape
    try:
        with h5py.File(path, "r") as source:
            for name, spec in artifact.layout.items():
                dataset = source[name]
                if dataset.chunks is None or spec.ndim == 0 or spec.nbytes == 0:
                    continue  # contiguous (an artifact older than checksums): nothing to verify
                row_bytes = max(1, spec.nbytes // max(1, spec.shape[0]))
                step = max(dataset.chunks[0], VERIFY_SLAB_BYTES // row_bytes // dataset.chunks[0] * dataset.chunks[0])
                for start in range(0, spec.shape[0], step):
                    _read_dataset(dataset, path, name, slice(start, start + step))
    except CactusError:
        raise
    except READ_ERRORS as error:
        raise CactusError(f"{path}: corrupt or unreadable artifact ({_reason(error)})") from None


def cached_key(path: str | Path, key: str, stage: str | None = None) -> bool:
    """True when ``path`` holds an intact artifact with this key; a corrupt file is a miss (with a warning).

    With ``stage``, first refuse an output path that a ``stage`` artifact may not replace
    (:func:`cactus.core.overwrite.check_output_path`), before anything is computed.
    """
    path = Path(path)
    if stage is not None:
        check_output_path(path, stage)
    if not path.is_file():
        log.debug(f"store: cache miss for {path}: no file (want key {key[:12]})")
        return False
    try:
        header = read_artifact(path, arrays=False)
        if header.key != key:
            log.debug(f"store: cache miss for {path}: it holds key {header.key[:12]}, want {key[:12]}")
            return False
        verify_content(header)
    except CactusError as error:
        log.warn(f"{error}; recomputing")
        return False
    log.debug(f"store: cache hit for {path}: key {key[:12]}, data checksums verified")
    return True
