"""``folder:PATH``: image files in class sub-folders, optionally under train/ val/ test/ split folders.

Two layouts, told apart by the folder's structure alone (never by its name):

- plain: ``PATH/<class>/<image>``; the classes are split later (``--split``, by default by class).
- split: ``PATH/{train,val,test}/<class>/<image>`` -- every visible sub-folder of PATH is one of
  train, val, test, there is a ``train/``, and it holds class folders rather than images. The
  folders are the split (the few-shot convention, e.g. Ravi & Larochelle's miniImageNet files);
  ``RawImages.groups`` records it: 0 = train/, 1 = test/, 2 = val/. A class name found in two split
  folders is one class.

Listing is cheap (names, sizes, modification times: the cache's content key); decoding runs once,
on a pool of threads, into one preallocated (N, H, W, C) uint8 array, with a progress bar.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cactus.core.errors import CactusError
from cactus.core.progress import Progress
from cactus.datasets.readers import IMAGE_SUFFIXES, MAX_IMAGE_PIXELS, RawImages, refuse_large_images

SPLIT_FOLDERS = {"train": 0, "test": 1, "val": 2}  # folder name -> RawImages.groups value
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
CHUNK = 256  # images per task of the decoding pool
# Decoding threads (Pillow releases the GIL while libjpeg / zlib decode): at most 2, never more than the cores.
WORKERS = max(1, min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


@dataclass(frozen=True)
class FolderListing:
    """What ``PATH`` holds, without decoding anything.

    files: (N,) image paths; class_ids: (N,) int64; stats: (N,) "size:mtime_ns" of each file;
    groups: (N,) int8 split-folder ids for the split layout, else None.
    """

    root: Path
    files: list[Path]
    class_ids: np.ndarray
    class_names: list[str]
    groups: np.ndarray | None
    stats: list[str]

    def content_key(self) -> str:
        """sha256 of every file's path (relative to the root), size and modification time."""
        digest = hashlib.sha256(f"{self.layout}\n".encode())
        for path, stat in zip(self.files, self.stats, strict=True):
            digest.update(f"{path.relative_to(self.root)}\t{stat}\n".encode())
        return digest.hexdigest()

    @property
    def layout(self) -> str:
        return "plain" if self.groups is None else "split"


def list_folder(root: Path) -> FolderListing:
    """List ``root``'s images in either layout; refuse links that leave it and folders without images."""
    if not root.is_dir():
        raise CactusError(f"folder:{root}: not a folder")
    inside = root.resolve()
    split_folders = _split_folders(root)
    parts = split_folders if split_folders is not None else [(root, None)]
    files: list[Path] = []
    stats: list[str] = []
    ids: list[int] = []
    groups: list[int] = []
    names: dict[str, int] = {}
    for part, group in parts:
        _check_inside(part, inside, root)
        for folder in sorted(p for p in part.iterdir() if p.is_dir()):
            _check_inside(folder, inside, root)
            class_id = names.setdefault(folder.name, len(names))
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if Path(entry.name).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                path = Path(entry.path)
                if entry.is_symlink():
                    _check_inside(path, inside, root)
                stat = entry.stat()
                files.append(path)
                stats.append(f"{stat.st_size}:{stat.st_mtime_ns}")
                ids.append(class_id)
                groups.append(group if group is not None else -1)
    if not files:
        where = f"{root}/{{train,val,test}}/<class>/<image>" if split_folders else f"{root}/<class>/<image>"
        raise CactusError(f"folder:{root}: no images in class subfolders (expected {where})")
    return FolderListing(
        root=root, files=files, class_ids=np.asarray(ids, dtype=np.int64), class_names=list(names),
        groups=np.asarray(groups, dtype=np.int8) if split_folders is not None else None, stats=stats,
    )


def _split_folders(root: Path) -> list[tuple[Path, int]] | None:
    """[(split folder, group)] in the order train, val, test when ``root`` has the split layout, else None."""
    visible = {p.name: p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if "train" not in visible or not set(visible) <= set(SPLIT_FOLDERS):
        return None
    if not any(p.is_dir() for p in visible["train"].iterdir()):
        return None  # train/ holds images: a plain layout with a class called "train"
    return [(visible[name], SPLIT_FOLDERS[name]) for name in ("train", "val", "test") if name in visible]


def _check_inside(path: Path, inside: Path, root: Path) -> None:
    try:
        target = path.resolve(strict=True)
    except (RuntimeError, OSError) as error:  # a link to itself, a loop of links, a dangling link
        reason = "a loop of symbolic links" if isinstance(error, RuntimeError) or "loop" in str(error).lower() \
            else "a link to nothing"
        raise CactusError(f"folder:{root}: {path} is {reason}") from None
    if not target.is_relative_to(inside):
        raise CactusError(f"folder:{root}: {path} is a link to {target}, outside the dataset folder")


class _ColourFound(Exception):
    """A colour image in a folder being decoded as grey: decode again in RGB."""


def decode_folder(listing: FolderListing, image_size: int | None, workers: int = WORKERS) -> np.ndarray:
    """Decode every listed image: (N, H, W, C) uint8, C = 3 if any image has colour, else 1.

    image_size: resize to (image_size, image_size) with Lanczos (a JPEG is first reduced by its
    decoder, Pillow's ``draft``, to the smallest power-of-two scale not below it); without it every
    image must have the first one's size.
    """
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    first = listing.files[0]
    with refuse_large_images():
        try:
            with Image.open(first) as probe:
                colour, size = probe.mode not in GREY_MODES, probe.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise CactusError(f"{first}: image too large ({error})") from None
        except OSError as error:
            raise CactusError(f"{first}: not a readable image ({error})") from None
    height, width = (image_size, image_size) if image_size else (size[1], size[0])
    try:
        return _decode_all(listing, image_size, (height, width), colour, workers)
    except _ColourFound:
        return _decode_all(listing, image_size, (height, width), True, workers)


def _decode_all(listing: FolderListing, image_size: int | None, shape: tuple[int, int], colour: bool,
                workers: int) -> np.ndarray:
    files = listing.files
    out = np.empty((len(files), *shape, 3 if colour else 1), dtype=np.uint8)
    mode = "RGB" if colour else "L"

    def decode_rows(rows: range) -> None:
        for row in rows:
            out[row] = _decode_one(files[row], mode, image_size, shape, listing)

    chunks = [range(start, min(start + CHUNK, len(files))) for start in range(0, len(files), CHUNK)]
    pool = ThreadPoolExecutor(max(1, workers))
    try:
        with refuse_large_images():  # the warning filter is process-wide, so the workers see it too
            for _ in Progress(pool.map(decode_rows, chunks), len(chunks), f"decode {len(files)} images"):
                pass
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def _decode_one(path: Path, mode: str, image_size: int | None, shape: tuple[int, int],
                listing: FolderListing) -> np.ndarray:
    """One image file -> (H, W, C) uint8 in ``mode`` (raises _ColourFound for colour in a grey decode)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if mode == "L" and image.mode not in GREY_MODES:
                raise _ColourFound
            if image_size is not None:
                image.draft(mode, (image_size, image_size))  # JPEG only: decode at a reduced scale
            image = image.convert(mode)
            if image_size is not None and image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.Resampling.LANCZOS)
            pixels = np.asarray(image, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise CactusError(f"{path}: image too large ({error})") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise CactusError(f"{path}: not a readable image ({error})") from None
    if pixels.shape[:2] != shape:
        raise CactusError(
            f"folder:{listing.root}: images differ in size ({listing.files[0]} is {shape[1]}x{shape[0]}, "
            f"{path} is {pixels.shape[1]}x{pixels.shape[0]}); pass --image-size"
        )
    return pixels.reshape(*shape, -1)


def raw_images(listing: FolderListing, images: np.ndarray) -> RawImages:
    """The decoded images with the listing's labels and split groups."""
    return RawImages(images=images, class_ids=listing.class_ids, class_names=listing.class_names,
                     groups=listing.groups)
