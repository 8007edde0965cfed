"""The decoded-dataset cache: uint8 image arrays on disk, keyed by the source files' identity.

Decoding tens of thousands of image files takes a while, so a reader's result is stored once in
``cache_dir()`` as two files written through :func:`cactus.core.atomic.atomic_path`:

- ``KIND-SOURCE-CONTENT.npy``: the images, (N, H, W, C) uint8, memory-mapped on later loads so
  that no process holds more of them in memory than it touches;
- ``KIND-SOURCE-CONTENT.meta.npz``: class ids, class names and groups; written last, so its presence
  marks a complete entry.

SOURCE hashes where the data comes from and the decode settings (path, image size); CONTENT hashes
what the caller says identifies the files' content (names, sizes, modification times). A new
CONTENT for the same SOURCE replaces the old entry. A broken entry is a miss; a cache that cannot be
written (read-only home, full disk) is skipped.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cactus.core import log
from cactus.core.atomic import atomic_path
from cactus.core.errors import CactusError
from cactus.datasets.readers import RawImages

CACHE_VERSION = 2
META_SUFFIX = ".meta.npz"


def cache_dir() -> Path:
    """Where decoded datasets are cached: ``$CACTUS_CACHE_DIR`` or ``~/.cache/cactus``."""
    return Path(os.environ.get("CACTUS_CACHE_DIR", Path.home() / ".cache" / "cactus"))


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(f"v{CACHE_VERSION}\n{text}".encode()).hexdigest()[:length]


def entry_stem(kind: str, source: str, content: str) -> Path:
    """The cache entry's path without suffix: ``cache_dir()/KIND-SOURCE-CONTENT``."""
    return cache_dir() / f"{kind}-{_digest(source, 8)}-{_digest(content, 16)}"


def cached_images(kind: str, source: str, content: str, build: Callable[[], RawImages]) -> RawImages:
    """The cached result of ``build()`` for this source and content, building and storing it on a miss.

    On a hit (and after a store) the images are a copy-on-write memory map of the .npy file: a
    writable (N, H, W, C) uint8 array whose pages are read from disk when touched.
    """
    stem = entry_stem(kind, source, content)
    found = load_entry(stem)
    if found is not None:
        log.debug(f"dataset cache: hit {stem}.npy")
        return found
    log.info(f"{kind}: decoding the images once, into the cache {stem}.npy")
    raw = build()
    if not _store(stem, raw):
        return raw
    _remove_older(stem)
    stored = load_entry(stem)
    return stored if stored is not None else raw


def load_entry(stem: Path) -> RawImages | None:
    """Read a complete cache entry, or None when it is missing or broken."""
    meta_file, image_file = stem.with_name(stem.name + META_SUFFIX), stem.with_suffix(".npy")
    if not (meta_file.is_file() and image_file.is_file()):
        return None
    try:
        with np.load(meta_file, allow_pickle=False) as meta:
            class_ids = meta["class_ids"]
            class_names = [str(n) for n in meta["class_names"]]
            groups = meta["groups"] if bool(meta["has_groups"]) else None
        images = np.load(image_file, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError, KeyError):
        return None
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(class_ids):
        return None
    return RawImages(images=np.asarray(images), class_ids=class_ids, class_names=class_names, groups=groups)


def _store(stem: Path, raw: RawImages) -> bool:
    """Write the entry (images first, the meta file last); False when the cache cannot be written."""
    try:
        with atomic_path(stem.with_suffix(".npy"), "dataset cache") as partial, open(partial, "wb") as handle:
            np.save(handle, np.ascontiguousarray(raw.images), allow_pickle=False)
        meta_file = stem.with_name(stem.name + META_SUFFIX)
        with atomic_path(meta_file, "dataset cache") as partial, open(partial, "wb") as handle:
            np.savez(handle, class_ids=raw.class_ids, class_names=np.asarray(raw.class_names, dtype=np.str_),
                     groups=raw.groups if raw.groups is not None else np.zeros(0, np.int8),
                     has_groups=np.asarray(raw.groups is not None))
    except CactusError as error:
        log.debug(f"dataset cache: not written ({error})")  # caching is an optimisation
        return False
    log.debug(f"dataset cache: wrote {stem}.npy ({raw.images.nbytes:,} bytes)")
    return True


def _remove_older(stem: Path) -> None:
    """Remove the entries of the same source with another content (the files changed since)."""
    kind_source = stem.name.rsplit("-", 1)[0] + "-"
    for other in stem.parent.glob(f"{kind_source}*"):
        if not other.name.startswith(stem.name) and not other.name.startswith("."):
            try:
                other.unlink()
            except OSError:
                pass
