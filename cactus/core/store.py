"""The HDF5 artifact store: one artifact, one file, keyed by content, written atomically.

Attributes on the root group: ``stage``, ``config`` (sorted JSON), ``key`` (sha256 of stage,
config and input keys), ``inputs`` (JSON list of input keys), ``version``, ``created``.
Arrays are HDF5 datasets (``/embeddings``, ``/weights/conv1.weight``, ...); no pickles.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cactus import __version__
from cactus.core.atomic import atomic_path
from cactus.core.errors import CactusError

FORMAT = "cactus-artifact"
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
REQUIRED_ATTRS = ("format", "stage", "config", "key", "inputs", "version", "created")
COMPRESS_ABOVE_BYTES = 1 << 16


def compute_key(stage: str, config: dict[str, Any], input_keys: list[str]) -> str:
    """sha256 of the sorted-JSON (stage, config, input keys): equal keys mean equal artifacts."""
    payload = json.dumps({"stage": stage, "config": config, "inputs": list(input_keys)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class Artifact:
    """An artifact read back from disk; arrays are loaded eagerly (they are small enough)."""

    path: Path
    stage: str
    config: dict[str, Any]
    key: str
    inputs: list[str]
    version: str
    created: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)

    def array(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            raise CactusError(f"{self.path}: {self.stage} artifact has no array '{name}'")
        return self.arrays[name]

    def group(self, prefix: str) -> dict[str, np.ndarray]:
        """Arrays under ``prefix/``, with the prefix stripped: ``group('weights')``."""
        start = prefix.rstrip("/") + "/"
        return {k[len(start):]: v for k, v in self.arrays.items() if k.startswith(start)}


def write_artifact(
    path: str | Path,
    stage: str,
    config: dict[str, Any],
    inputs: list[str],
    arrays: dict[str, np.ndarray],
    attrs: dict[str, Any] | None = None,
) -> str:
    """Write an artifact atomically (temporary file in the same folder, then rename); returns its key.

    ``attrs`` holds extra JSON-able metadata (a training curve, a dataset description...).
    """
    import h5py

    path = Path(path)
    key = compute_key(stage, config, inputs)
    try:
        with atomic_path(path, "artifact") as partial, h5py.File(partial, "w") as out:
            out.attrs["format"] = FORMAT
            out.attrs["stage"] = stage
            out.attrs["config"] = json.dumps(config, sort_keys=True)
            out.attrs["key"] = key
            out.attrs["inputs"] = json.dumps(list(inputs))
            out.attrs["version"] = __version__
            out.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            for name, value in (attrs or {}).items():
                out.attrs[f"x_{name}"] = json.dumps(value, sort_keys=True)
            for name, value in arrays.items():
                value = np.asarray(value)
                options: dict[str, Any] = {}
                if value.nbytes > COMPRESS_ABOVE_BYTES and value.ndim > 0:
                    options = {"chunks": True, "compression": "gzip", "compression_opts": 4, "shuffle": True}
                out.create_dataset(name, data=value, **options)
    finally:
        from cactus.core.lock import release

        release(path)  # taken by cactus.stages.common.up_to_date, if it was
    return key


def read_artifact(path: str | Path, stage: str | None = None, arrays: bool = True) -> Artifact:
    """Read an artifact; a missing, corrupt or foreign file raises CactusError naming the path."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise CactusError(f"{path}: no such artifact")
    try:
        with h5py.File(path, "r") as source:
            attrs = dict(source.attrs)
            missing = [a for a in REQUIRED_ATTRS if a not in attrs]
            if missing or attrs.get("format") != FORMAT:
                raise CactusError(f"{path}: not a cactus artifact (missing {', '.join(missing) or 'format'})")
            loaded: dict[str, np.ndarray] = {}
            if arrays:
                source.visititems(lambda name, obj: _collect(name, obj, loaded))
            artifact = Artifact(
                path=path,
                stage=str(attrs["stage"]),
                config=json.loads(attrs["config"]),
                key=str(attrs["key"]),
                inputs=list(json.loads(attrs["inputs"])),
                version=str(attrs["version"]),
                created=str(attrs["created"]),
                arrays=loaded,
                attrs={k[2:]: json.loads(v) for k, v in attrs.items() if k.startswith("x_")},
            )
    except CactusError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CactusError(f"{path}: corrupt or unreadable artifact ({reason})") from None
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
    if arrays:
        from cactus.core.artifact_checks import check_arrays

        check_arrays(path, artifact.stage, artifact.config, artifact.arrays)  # shapes, dtypes, ranges, NaN
    return artifact


def _collect(name: str, obj: Any, into: dict[str, np.ndarray]) -> None:
    import h5py

    if isinstance(obj, h5py.Dataset):
        into[name] = obj[()]


def cached_key(path: str | Path, key: str) -> bool:
    """True when ``path`` holds a readable artifact with this key; a corrupt file is a miss."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        return read_artifact(path, arrays=False).key == key
    except CactusError as error:
        from cactus.core.log import warn

        warn(f"{error}; recomputing")
        return False
