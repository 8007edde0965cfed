"""File-format readers: each turns files on disk into uint8 images, class ids and class names.

Every reader returns a :class:`RawImages`; splitting into meta-train / validation / test
happens in :mod:`cactus.datasets.dataset`, so the readers only know about bytes and folders.
Folders of class sub-folders have their own module, :mod:`cactus.datasets.folder`.
"""

from __future__ import annotations

import gzip
import io
import re
import struct
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cactus.core.errors import CactusError

# Pillow's decompression-bomb guard stays on: an image above this many pixels is refused.
MAX_IMAGE_PIXELS = 64_000_000
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


@dataclass
class RawImages:
    """What a reader found.

    images: (N, H, W, C) uint8, C = 1 (grey) or 3 (RGB), bright strokes on dark background.
    class_ids: (N,) int64 in [0, len(class_names)), or -1 where the file carries no label.
    class_names: name of each class id.
    groups: optional (N,) int8 for datasets that come in their own parts (0 = training file or
        folder, 1 = test, 2 = validation), used by the ``files`` / ``lake`` splits.
    """

    images: np.ndarray
    class_ids: np.ndarray
    class_names: list[str]
    groups: np.ndarray | None = None
    notes: dict = field(default_factory=dict)


@contextmanager
def refuse_large_images() -> Iterator[None]:
    """Make Pillow's decompression-bomb warning (above MAX_IMAGE_PIXELS) an exception.

    Pillow only warns between MAX_IMAGE_PIXELS and twice that; cactus refuses from the limit on,
    and a warning would also break the one-line error rule.
    """
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def decode_image(data: bytes, where: str, image_size: int | None, mode: str = "L") -> np.ndarray:
    """Decode one image file to an (H, W) or (H, W, 3) uint8 array, resized if asked."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with refuse_large_images(), Image.open(io.BytesIO(data)) as image:
            image = image.convert(mode)
            if image_size is not None and image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.Resampling.LANCZOS)
            return np.asarray(image, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise CactusError(f"{where}: image too large ({error})") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise CactusError(f"{where}: not a readable image ({error})") from None


# ---------------------------------------------------------------- Omniglot

OMNIGLOT_PARTS = ("images_background", "images_evaluation")


def _omniglot_part_files(root: Path, part: str) -> list[tuple[str, str, bytes]]:
    """List (alphabet, character, png bytes) of one Omniglot part, from a folder or its zip."""
    folder = root / part
    archive = root / f"{part}.zip"
    found: list[tuple[str, str, bytes]] = []
    if folder.is_dir():
        for png in sorted(folder.glob("*/*/*.png")):
            found.append((png.parent.parent.name, png.parent.name, png.read_bytes()))
    elif archive.is_file():
        try:
            with zipfile.ZipFile(archive) as zipped:
                for name in sorted(zipped.namelist()):
                    parts = name.split("/")
                    if len(parts) == 4 and parts[0] == part and parts[3].endswith(".png"):
                        found.append((parts[1], parts[2], zipped.read(name)))
        except zipfile.BadZipFile as error:
            raise CactusError(f"{archive}: not a valid zip file ({error})") from None
    else:
        raise CactusError(f"omniglot:{root}: neither {part}/ nor {part}.zip is there")
    if not found:
        raise CactusError(f"omniglot:{root}: {part} holds no alphabet/character/*.png images")
    return found


def read_omniglot(root: Path, image_size: int) -> RawImages:
    """Read Omniglot in its original layout; strokes become bright (255) on a dark background."""
    images, class_ids, names, groups = [], [], [], []
    index: dict[str, int] = {}
    for group, part in enumerate(OMNIGLOT_PARTS):
        for alphabet, character, data in _omniglot_part_files(root, part):
            name = f"{part.removeprefix('images_')}/{alphabet}/{character}"
            if name not in index:
                index[name] = len(names)
                names.append(name)
            pixels = decode_image(data, f"{root}/{name}", None, mode="L")
            picture = _resize_strokes(255 - pixels, image_size)
            images.append(picture)
            class_ids.append(index[name])
            groups.append(group)
    return RawImages(
        images=np.stack(images)[..., None],
        class_ids=np.asarray(class_ids, dtype=np.int64),
        class_names=names,
        groups=np.asarray(groups, dtype=np.int8),
    )


def _resize_strokes(pixels: np.ndarray, image_size: int) -> np.ndarray:
    from PIL import Image

    if pixels.shape == (image_size, image_size):
        return pixels
    image = Image.fromarray(pixels).resize((image_size, image_size), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


# ---------------------------------------------------------------- IDX (MNIST family)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx_file(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzipped) as MNIST, Fashion-MNIST and EMNIST ship them."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as error:
        raise CactusError(f"{path}: cannot read ({error})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise CactusError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise CactusError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise CactusError(
            f"{path}: IDX header says {shape} ({expected} bytes) but {len(raw) - header} bytes follow"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find_idx(root: Path, patterns: list[str]) -> Path | None:
    for candidate in sorted(root.iterdir()):
        lowered = candidate.name.lower()
        if candidate.is_file() and any(re.search(p, lowered) for p in patterns):
            return candidate
    return None


def read_idx(root: Path) -> RawImages:
    """Read a folder with the four IDX files (train/test images and labels)."""
    if not root.is_dir():
        raise CactusError(f"idx:{root}: not a folder")
    parts = {
        "train images": _find_idx(root, [r"train.*images", r"train.*idx3"]),
        "train labels": _find_idx(root, [r"train.*labels", r"train.*idx1"]),
        "test images": _find_idx(root, [r"(t10k|test).*images", r"(t10k|test).*idx3"]),
        "test labels": _find_idx(root, [r"(t10k|test).*labels", r"(t10k|test).*idx1"]),
    }
    if parts["train images"] is None:
        raise CactusError(f"idx:{root}: no *train*images* IDX file in this folder")
    images, labels, groups = [], [], []
    for group, which in enumerate(("train", "test")):
        image_file, label_file = parts[f"{which} images"], parts[f"{which} labels"]
        if image_file is None:
            continue
        pixels = read_idx_file(image_file)
        if pixels.ndim != 3 or pixels.dtype != np.uint8:
            raise CactusError(f"{image_file}: expected uint8 images of shape (N, H, W), got {pixels.shape}")
        if image_file.name.lower().startswith("emnist"):
            pixels = pixels.transpose(0, 2, 1)  # EMNIST stores images transposed
        if label_file is not None:
            ids = read_idx_file(label_file).astype(np.int64)
            if ids.shape != (len(pixels),):
                raise CactusError(f"{label_file}: {ids.shape[0]} labels for {len(pixels)} images")
        else:
            ids = np.full(len(pixels), -1, dtype=np.int64)
        images.append(pixels)
        labels.append(ids)
        groups.append(np.full(len(pixels), group, dtype=np.int8))
    class_ids = np.concatenate(labels)
    present = np.unique(class_ids[class_ids >= 0])
    remap = np.full(int(class_ids.max(initial=0)) + 1, -1, dtype=np.int64)
    remap[present] = np.arange(len(present))
    class_ids = np.where(class_ids >= 0, remap[np.maximum(class_ids, 0)], -1)
    return RawImages(
        images=np.concatenate(images)[..., None],
        class_ids=class_ids,
        class_names=[str(c) for c in present],
        groups=np.concatenate(groups),
    )


# ---------------------------------------------------------------- arrays in npz / h5

def read_arrays(kind: str, path: Path) -> RawImages:
    """Read array ``x`` of shape (N, H, W) or (N, H, W, C) and optional ``y`` from npz or HDF5."""
    if not path.is_file():
        raise CactusError(f"{kind}:{path}: no such file")
    try:
        if kind == "npz":
            with np.load(path, allow_pickle=False) as arrays:
                x = arrays["x"] if "x" in arrays else None
                y = arrays["y"] if "y" in arrays else None
        else:
            import h5py

            with h5py.File(path, "r") as arrays:
                for name in ("x", "y"):
                    if name in arrays and not isinstance(arrays[name], h5py.Dataset):
                        raise CactusError(f"{path}: '{name}' is an HDF5 group, not an array")
                x = arrays["x"][()] if "x" in arrays else None
                y = arrays["y"][()] if "y" in arrays else None
    except (OSError, ValueError, KeyError) as error:
        raise CactusError(f"{path}: cannot read as {kind} ({error})") from None
    if x is None:
        raise CactusError(f"{path}: has no array named 'x'")
    return RawImages(images=_as_uint8_images(x, path), **_labels_from(y, len(x), path))


def _as_uint8_images(x: np.ndarray, path: Path) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or len(x) == 0:
        raise CactusError(f"{path}: 'x' must have shape (N, H, W) or (N, H, W, 1|3), got {x.shape}")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise CactusError(f"{path}: 'x' has dtype {x.dtype}; expected uint8 or floats in [0, 1]")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise CactusError(f"{path}: 'x' contains NaN or infinite values")
    if x.min() < 0 or x.max() > 1:
        raise CactusError(f"{path}: float 'x' must lie in [0, 1], found [{x.min():.3g}, {x.max():.3g}]")
    return np.round(x * 255).astype(np.uint8)


def _labels_from(y: np.ndarray | None, n: int, path: Path) -> dict:
    if y is None:
        return {"class_ids": np.full(n, -1, dtype=np.int64), "class_names": []}
    y = np.asarray(y)
    if y.shape != (n,):
        raise CactusError(f"{path}: 'y' must have shape ({n},), got {y.shape}")
    if y.dtype.kind not in "iuSUO":
        raise CactusError(f"{path}: 'y' has dtype {y.dtype}; expected integers or strings")
    names, ids = np.unique(y.astype(str) if y.dtype.kind in "SUO" else y, return_inverse=True)
    return {"class_ids": ids.astype(np.int64), "class_names": [str(v) for v in names]}
