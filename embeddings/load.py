"""Bring your own embedding: precomputed vectors (.npy / .npz / .h5) or a TorchScript encoder (.pt / .pth).

Precomputed embeddings hold one row per image of the WHOLE dataset, in dataset order. ``fit``
only checks the row count. Because ``transform(images)`` receives pixels, not row numbers, the
caller first says which dataset rows those images are::

    encoder = LoadEncoder("emb.npy")
    encoder.transform_rows(ds.indices(0), dataset_size=len(ds))   # file must have len(ds) rows
    encoder.fit(ds.images[ds.indices(0)])                         # only checks the counts
    encoder.transform_rows(ds.indices(2))                         # rows of the test split
    test = encoder.transform(ds.images[ds.indices(2)])            # (len(rows), D) float32

Without ``transform_rows``, ``fit`` and ``transform`` expect the images of the whole dataset.
A TorchScript file (``torch.jit.save`` of a module mapping float (B, C, H, W) in [0, 1] to (B, D))
is applied to the images themselves; ``transform_rows`` is then ignored. Files are never
unpickled (``np.load(allow_pickle=False)``, ``torch.jit.load``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cactus.core.errors import CactusError
from embeddings.base import Encoder

ARRAY_SUFFIXES = (".npy", ".npz", ".h5", ".hdf5")
SCRIPT_SUFFIXES = (".pt", ".pth")


def read_embeddings(path: Path) -> np.ndarray:
    """The (N, D) float32 array in ``path``; any problem raises CactusError naming the file."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                names = list(archive.files)
                if "embeddings" in names:
                    array = archive["embeddings"]
                elif len(names) == 1:
                    array = archive[names[0]]
                else:
                    raise CactusError(
                        f"{path}: .npz holds {len(names)} arrays ({', '.join(names[:5])}); "
                        "name the one to use 'embeddings'"
                    )
        else:
            import h5py

            with h5py.File(path, "r") as source:
                if "embeddings" not in source or not isinstance(source["embeddings"], h5py.Dataset):
                    raise CactusError(f"{path}: HDF5 file has no dataset 'embeddings'")
                array = source["embeddings"][()]
    except CactusError:
        raise
    except ValueError as error:  # np.load refuses object arrays (pickles) with a ValueError
        raise CactusError(f"{path}: not a plain numeric array file ({str(error).splitlines()[0]})") from None
    except OSError as error:
        raise CactusError(f"{path}: cannot read embeddings ({str(error).splitlines()[0]})") from None
    return check_embeddings(np.asarray(array), path)


def check_embeddings(array: np.ndarray, path: Path) -> np.ndarray:
    """Refuse non-2-D, non-numeric or non-finite arrays; returns float32."""
    if array.dtype.kind not in "fiu":
        raise CactusError(f"{path}: embeddings must be numbers, got dtype {array.dtype}")
    if array.ndim != 2:
        raise CactusError(f"{path}: embeddings must be 2-D (images, dims), got shape {array.shape}")
    if array.shape[1] == 0:
        raise CactusError(f"{path}: embeddings have 0 dimensions")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).any(axis=1).sum())
        raise CactusError(f"{path}: {bad} embedding rows contain NaN or infinite values")
    return array


@dataclass(eq=False)
class LoadEncoder(Encoder):
    """Embeddings from a file: precomputed rows, or a TorchScript encoder applied to the images.

    ``path``: .npy, .npz (one array, or an array named ``embeddings``), .h5/.hdf5 (dataset
    ``embeddings``), or .pt/.pth TorchScript; ``device`` / ``threads`` run a TorchScript encoder.
    ``transform_rows(rows)`` says which dataset rows the next ``transform`` call embeds
    (precomputed files only). Learned: ``dim_`` (the file's embedding size), ``input_shape_``,
    ``dataset_size_`` (rows of a precomputed file), ``module_`` (a TorchScript encoder).
    """

    name = "load"

    path: str
    seed: int = 0
    device: str = "auto"
    threads: int | None = None

    @property
    def is_script(self) -> bool:
        return Path(self.path).suffix.lower() in SCRIPT_SUFFIXES

    def _file(self) -> Path:
        path = Path(self.path)
        suffix = path.suffix.lower()
        if suffix not in ARRAY_SUFFIXES + SCRIPT_SUFFIXES:
            raise CactusError(
                f"--path {path}: unknown file type {suffix or '(none)'}; expected "
                f"{', '.join(ARRAY_SUFFIXES + SCRIPT_SUFFIXES)}"
            )
        if not path.is_file():
            raise CactusError(f"--path {path}: no such file")
        return path

    def transform_rows(self, rows: np.ndarray | None, dataset_size: int | None = None) -> LoadEncoder:
        """Say which dataset rows (M,) int the next ``fit`` / ``transform`` images are; None: every row.

        ``dataset_size`` (the whole dataset's image count) is what the file's row count is checked
        against; without it the file must have as many rows as the images given when rows are None.
        Ignored for TorchScript files, which embed the pixels themselves.
        """
        self.rows_ = None if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
        if dataset_size is not None:
            self.dataset_size_ = int(dataset_size)
        return self

    def fit(self, images: np.ndarray) -> LoadEncoder:
        """Check the file against the dataset; ``images`` (M, H, W, C) uint8 are the rows set by transform_rows."""
        self._remember_input(images)
        path = self._file()
        if self.is_script:
            self.module_ = self._load_script(path)
            self.dim_ = int(self._apply_script(images[:2]).shape[1])
        else:
            array = read_embeddings(path)
            self._pick(array, len(images), path)
            self.dataset_size_ = len(array)
            self.dim_ = int(array.shape[1])
        return self

    def transform(self, images: np.ndarray) -> np.ndarray:
        """(M, H, W, C) uint8 -> (M, D) float32: the stored rows set by ``transform_rows`` or the script's output."""
        self._check_input(images)
        if self.is_script:
            if not hasattr(self, "module_"):
                self.module_ = self._load_script(self._file())
            return self._apply_script(images)
        path = self._file()
        array = read_embeddings(path)
        return array[self._pick(array, len(images), path)]

    def _pick(self, array: np.ndarray, n_images: int, path: Path) -> np.ndarray:
        """Row indices (M,) of ``array`` for ``n_images`` images, after checking every count."""
        size = getattr(self, "dataset_size_", None)
        if size is None and getattr(self, "rows_", None) is None:
            size = n_images
        if size is not None and len(array) != size:
            raise CactusError(
                f"{path}: holds {len(array)} embedding rows but the dataset has {size} images; "
                "give one row per image of the whole dataset, in dataset order"
            )
        chosen = getattr(self, "rows_", None)
        rows = np.arange(len(array)) if chosen is None else chosen
        if len(rows) != n_images:
            raise CactusError(
                f"{path}: {n_images} images to embed but {len(rows)} dataset rows given with transform_rows"
            )
        if len(rows) and (rows.min() < 0 or rows.max() >= len(array)):
            raise CactusError(f"{path}: row indices must lie in [0, {len(array)})")
        return rows

    def _load_script(self, path: Path):
        import torch

        from embeddings.train_utils import setup_torch

        self.device_, _ = setup_torch(self.seed, self.device, self.threads)
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.x but still what users export
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(path), map_location=self.device_)
        except (RuntimeError, ValueError, OSError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CactusError(f"{path}: not a TorchScript encoder ({reason})") from None
        return module.eval()

    def _apply_script(self, images: np.ndarray) -> np.ndarray:
        from embeddings.train_utils import embed_in_batches

        path = self.path
        try:
            out = embed_in_batches(self.module_, images, device=self.device_)
        except (RuntimeError, ValueError, TypeError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CactusError(f"{path}: TorchScript encoder failed on images {images.shape[1:]} ({reason})") from None
        if out.ndim != 2:
            raise CactusError(f"{path}: TorchScript encoder must return (B, D), got shape {out.shape}")
        if not np.isfinite(out).all():
            raise CactusError(f"{path}: TorchScript encoder returned NaN or infinite values")
        return out

    def get_state(self) -> dict[str, np.ndarray]:
        """Only the input shape: the weights stay in the user's file, which the params name."""
        return {"input_shape": np.asarray(self.input_shape_, dtype=np.int64),
                "dataset_size": np.asarray(getattr(self, "dataset_size_", -1), dtype=np.int64)}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self._restore_input_shape(state)
        size = int(state.get("dataset_size", -1))
        if size >= 0:
            self.dataset_size_ = size
