"""Datasets: ``--data SPEC`` -> uint8 images, a seeded split by class, and guarded labels.

SPEC is one of ``digits`` (built in), ``omniglot:PATH``, ``idx:PATH``, ``folder:PATH``,
``npz:PATH`` or ``h5:PATH``. Images are (N, H, W, C) uint8, C = 1 or 3. Every image belongs to one
split: meta-train (0), validation (1) or test (2). True labels are kept, but only evaluation and the
explicitly supervised oracle may read them, through :meth:`Dataset.true_labels`. Omniglot and
folders of at least ``CACHE_MIN_IMAGES`` images are decoded once into :mod:`cactus.datasets.cache`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cactus.core.errors import CactusError
from cactus.datasets.cache import cached_images
from cactus.datasets.folder import decode_folder, list_folder, raw_images
from cactus.datasets.readers import RawImages, read_arrays, read_idx, read_omniglot

TRAIN, VAL, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "val", "test")
SPLIT_RULES = ("default", "classes", "lake", "files", "images")
OMNIGLOT_COUNTS = (1100, 100, 423)
CLASS_FRACTIONS = (0.6, 0.1, 0.3)
CACHE_MIN_IMAGES = 1000  # smaller folders decode in a moment: not worth a cache entry
FINGERPRINT_CHUNK = 1 << 26  # bytes of images hashed at a time (no copy of the whole array)


@dataclass(frozen=True)
class Dataset:
    """Images with a recorded split.

    images: (N, H, W, C) uint8.
    split: (N,) int8, TRAIN / VAL / TEST for each image.
    """

    spec: str
    images: np.ndarray
    split: np.ndarray
    class_names: tuple[str, ...]
    split_rule: str
    _labels: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def indices(self, split: int) -> np.ndarray:
        """Dataset indices (int64) of the images in one split, in ascending order."""
        return np.flatnonzero(self.split == split)

    @property
    def has_labels(self) -> bool:
        return bool((self._labels >= 0).any())

    def true_labels(self) -> np.ndarray:
        """(N,) int64 class ids, -1 where unknown. Only evaluation and the supervised oracle call this."""
        if not self.has_labels:
            raise CactusError(f"--data {self.spec}: the dataset has no labels, so it cannot be evaluated")
        return self._labels

    def fingerprint(self) -> str:
        """sha256 of the images and the split: the input key of the embed stage."""
        digest = hashlib.sha256()
        digest.update(str(self.images.shape).encode())
        rows = max(1, FINGERPRINT_CHUNK // max(1, int(np.prod(self.images.shape[1:]))))
        for start in range(0, len(self.images), rows):
            digest.update(memoryview(np.ascontiguousarray(self.images[start : start + rows])).cast("B"))
        digest.update(self.split.tobytes())
        return digest.hexdigest()

    def describe(self) -> dict:
        """What an artifact records about its dataset."""
        return {
            "spec": self.spec,
            "image_shape": list(self.image_shape),
            "split_rule": self.split_rule,
            "sizes": {name: int((self.split == i).sum()) for i, name in enumerate(SPLIT_NAMES)},
        }


def parse_spec(spec: str) -> tuple[str, Path | None]:
    """Split ``KIND:PATH`` into its kind and path, with a clear error for anything else."""
    kind, _, path = spec.partition(":")
    if kind not in READERS:
        raise CactusError(
            f"--data {spec!r}: unknown dataset kind {kind!r}; expected "
            + ", ".join(name if name == "digits" else f"{name}:PATH" for name in READERS)
        )
    if kind == "digits":
        if path:
            raise CactusError(f"--data {spec!r}: digits is built in and takes no path")
        return kind, None
    if not path:
        raise CactusError(f"--data {spec!r}: {kind} needs a path, as in {kind}:PATH")
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise CactusError(f"--data {spec!r}: {resolved} does not exist")
    return kind, resolved


def load_dataset(
    spec: str = "digits", image_size: int | None = None, split: str = "default", split_seed: int = 0,
    grey: bool = False,
) -> Dataset:
    """Load a dataset and split it.

    image_size: resize every image to (image_size, image_size); Omniglot defaults to 28.
    split: ``default`` (per dataset), ``classes`` (seeded split by class), ``lake`` (Omniglot's
        background / evaluation alphabets), ``files`` (a dataset's own train / test files, or a
        folder's train/ val/ test/ sub-folders: the default for such a folder) or ``images`` (a
        seeded half of the images for meta-training, the rest for test; digits' default).
    grey: colour images become one channel (:func:`to_grey`); grey ones are left as they are.
    """
    if split not in SPLIT_RULES:
        raise CactusError(f"--split {split!r}: expected one of {', '.join(SPLIT_RULES)}")
    if image_size is not None and not 4 <= image_size <= 512:
        raise CactusError(f"--image-size {image_size}: must lie between 4 and 512")
    kind, path = parse_spec(spec)
    raw = _read(kind, path, image_size)
    if image_size is not None and kind in ("idx", "npz", "h5", "digits"):
        raw.images = _resize_all(raw.images, image_size)
    if grey:
        raw.images = to_grey(raw.images)
    split_array, rule = _split(kind, raw, split, split_seed, spec)
    return Dataset(
        spec=spec,
        images=raw.images,
        split=split_array,
        class_names=tuple(raw.class_names),
        split_rule=rule,
        _labels=raw.class_ids,
    )


def _read(kind: str, path: Path | None, image_size: int | None) -> RawImages:
    return READERS[kind](path, image_size)


def _read_digits(_path: Path | None, _image_size: int | None) -> RawImages:
    """scikit-learn's 1,797 8x8 digits, scaled from 0-16 to 0-255."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    return RawImages(images, digits.target.astype(np.int64), [str(c) for c in range(10)])


def _resize_all(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size, images.shape[3]), dtype=np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
        resized = np.asarray(pil.resize((size, size), Image.Resampling.LANCZOS))
        out[i] = resized.reshape(size, size, -1)
    return out


def _cached_folder(root: Path, image_size: int | None) -> RawImages:
    """A folder's images, decoded once into the cache keyed by its files' names, sizes and times."""
    listing = list_folder(root)
    if len(listing.files) < CACHE_MIN_IMAGES:
        return raw_images(listing, decode_folder(listing, image_size))
    return cached_images("folder", f"{root.resolve()}\n{image_size}", listing.content_key(),
                         lambda: raw_images(listing, decode_folder(listing, image_size)))


def _cached_omniglot(root: Path, image_size: int) -> RawImages:
    """Decoding 32,460 PNGs takes a while, so the decoded arrays are cached by source identity."""
    sources = sorted(p for p in root.iterdir() if p.name.startswith("images_"))
    identity = []
    for source in sources:
        stat = source.stat()
        identity.append(f"{source.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return cached_images("omniglot", f"{root.resolve()}\n{image_size}", "\n".join(identity),
                         lambda: read_omniglot(root, image_size))


def _split(kind: str, raw: RawImages, rule: str, seed: int, spec: str) -> tuple[np.ndarray, str]:
    """Assign each image to TRAIN / VAL / TEST and describe the rule used."""
    n = len(raw.images)
    labelled = raw.class_ids >= 0
    if rule == "default":
        rule = {"omniglot": "classes", "idx": "files", "digits": "images"}.get(kind, "classes")
        if kind == "folder" and raw.groups is not None:
            rule = "files"  # a folder with train/ val/ test/ sub-folders: they are the split
    if rule == "images":
        # Few classes and no files of its own: like CACTUs on MNIST, meta-train on half of the
        # images (unlabelled) and test on the other half, with all classes.
        test = np.random.default_rng(seed).permutation(n)[: n // 2]
        split = np.zeros(n, dtype=np.int8)
        split[test] = TEST
        return split, f"images (seed {seed}: {n - n // 2} meta-train / {n // 2} test images)"
    if rule == "lake":
        if kind != "omniglot":
            raise CactusError(f"--split lake: only Omniglot has background / evaluation alphabets, not {spec}")
        return np.where(raw.groups == 0, TRAIN, TEST).astype(np.int8), "lake (background / evaluation)"
    if rule == "files":
        if raw.groups is None:
            raise CactusError(f"--split files: {spec} does not come in separate train / test files")
        split = np.asarray([TRAIN, TEST, VAL], dtype=np.int8)[raw.groups]
        if kind != "folder":
            return split, "files (train file / test file)"
        return split, _folder_split_rule(raw, split)
    if not labelled.any():
        return np.zeros(n, dtype=np.int8), "unlabelled (all meta-train)"
    n_classes = len(raw.class_names)
    counts = _class_counts(kind, n_classes)
    order = np.random.default_rng(seed).permutation(n_classes)
    class_split = np.empty(n_classes, dtype=np.int8)
    class_split[order[: counts[0]]] = TRAIN
    class_split[order[counts[0] : counts[0] + counts[1]]] = VAL
    class_split[order[counts[0] + counts[1] :]] = TEST
    split = np.where(labelled, class_split[np.maximum(raw.class_ids, 0)], TRAIN).astype(np.int8)
    return split, f"classes (seed {seed}: {counts[0]} / {counts[1]} / {counts[2]})"


def _class_counts(kind: str, n_classes: int) -> tuple[int, int, int]:
    if kind == "omniglot" and n_classes == sum(OMNIGLOT_COUNTS):
        return OMNIGLOT_COUNTS
    if kind == "digits":
        return (5, 0, 5)
    n_test = max(1, round(CLASS_FRACTIONS[2] * n_classes))
    n_val = round(CLASS_FRACTIONS[1] * n_classes) if n_classes >= 10 else 0
    return (n_classes - n_test - n_val, n_val, n_test)


def _folder_split_rule(raw: RawImages, split: np.ndarray) -> str:
    """E.g. ``files (the folder's train/ val/ test/ sub-folders: 64 / 16 / 20 classes)``."""
    classes = [set(np.unique(raw.class_ids[split == s]).tolist()) for s in (TRAIN, VAL, TEST)]
    rule = f"files (the folder's train/ val/ test/ sub-folders: {' / '.join(str(len(c)) for c in classes)} classes"
    shared = (classes[0] & classes[1]) | (classes[0] & classes[2]) | (classes[1] & classes[2])
    return rule + (f"; {len(shared)} classes in more than one of them)" if shared else ")")


#: ``--data KIND:PATH``: the function reading each kind, (path, --image-size) -> RawImages. A new kind of
#: dataset is one reader function and one line here (its default split is by class, as for a folder).
READERS: dict[str, Callable[[Path | None, int | None], RawImages]] = {
    "digits": _read_digits,
    "omniglot": lambda path, size: _cached_omniglot(path, size or 28),
    "idx": lambda path, _size: read_idx(path),
    "folder": _cached_folder,
    "npz": lambda path, _size: read_arrays("npz", path),
    "h5": lambda path, _size: read_arrays("h5", path),
}


def to_grey(images: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, H, W, 1) uint8 luma (ITU-R 601: 0.299 R + 0.587 G + 0.114 B, as Pillow's "L");
    one-channel images are returned as they are. Converted ``chunk`` images at a time, never all as float."""
    if images.shape[-1] == 1:
        return images
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    out = np.empty((*images.shape[:-1], 1), dtype=np.uint8)
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk].astype(np.float32) @ weights
        out[start : start + chunk, ..., 0] = np.clip(np.rint(part), 0, 255).astype(np.uint8)
    return out
