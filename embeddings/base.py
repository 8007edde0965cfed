"""The encoder contract every ``cactus embed --method NAME`` follows (scikit-learn's conventions).

- Every parameter is an argument of ``__init__``, stored unchanged under its own name. The
  encoders are dataclasses, so ``__init__`` is generated from the declared fields and does
  nothing else: options are checked by :meth:`Encoder.check_params` (from :meth:`fit`, and by
  :meth:`Encoder.from_params` so that a bad option fails before any data is read); defaults that
  depend on other parameters (``epochs`` under ``quick``) are resolved where they are used.
- :meth:`Encoder.get_params` is derived from the ``__init__`` signature, like scikit-learn's
  ``BaseEstimator.get_params``: ``type(e)(**e.get_params())`` is a fresh copy of ``e``.
- The embed stage's cache key hashes :meth:`Encoder.key_params`: the method name and
  ``get_params()`` less :attr:`Encoder.NOT_IN_KEY`, the one list of parameters that choose where
  and how fast a fit runs rather than what it computes. The same dict is stored as the artifact's
  ``encoder`` config, from which :meth:`Encoder.from_params` rebuilds the encoder.
- ``fit(images)`` learns and returns ``self``; ``seed`` becomes torch / numpy generators inside
  ``fit``; learned attributes end in ``_``.
- ``get_state()`` / ``set_state()`` turn the learned weights into plain numpy arrays that the
  HDF5 artifact stores (never pickles).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import numpy as np

from cactus.core.errors import CactusError


class Encoder:
    """Base class: images (N, H, W, C) uint8 in, embeddings (N, D) float32 out."""

    name: ClassVar[str] = "encoder"
    #: Why a multi-process (torchrun) fit could not equal a one-process fit; None: it can
    #: (the encoder splits its batches with :mod:`embeddings.parallel`).
    not_data_parallel: ClassVar[str | None] = "it has no data-parallel training loop"
    #: The parameters left out of the cache key and of the stored ``encoder`` config, for every
    #: encoder: ``device`` and ``threads`` choose where and how fast a fit runs, not what it learns
    #: (the same seed gives the same weights up to float rounding, which differs with the device and
    #: the thread count). A replayed or reused artifact takes them from the caller.
    NOT_IN_KEY: ClassVar[tuple[str, ...]] = ("device", "threads")
    #: Whether it embeds images of any height and width (with the channels it was trained on): a conv net
    #: whose features are averaged over the grid.
    any_resolution: ClassVar[bool] = False
    #: Parameters that must be positive numbers (None, where allowed, is not checked): see check_params.
    positive_params: ClassVar[tuple[str, ...]] = ()

    # -- parameters -------------------------------------------------------------------------
    @classmethod
    def param_names(cls) -> list[str]:
        """The names of the ``__init__`` arguments, in signature order (scikit-learn's ``_get_param_names``)."""
        parameters = inspect.signature(cls.__init__).parameters.values()
        names = [p.name for p in parameters if p.name != "self"]
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters):
            raise TypeError(f"{cls.__name__}.__init__ must name every parameter (no *args / **kwargs)")
        return names

    def get_params(self) -> dict[str, Any]:
        """Every ``__init__`` argument by name, as stored: ``type(self)(**self.get_params())`` clones."""
        return {name: getattr(self, name) for name in self.param_names()}

    def key_params(self) -> dict[str, Any]:
        """What the embed stage's cache key hashes and its artifact stores: method + params less NOT_IN_KEY."""
        params = {k: v for k, v in self.get_params().items() if k not in self.NOT_IN_KEY}
        return {"method": self.name, **params}

    @classmethod
    def from_params(cls, params: Mapping[str, Any], stored: object = None) -> Encoder:
        """An encoder from option values or a stored ``encoder`` config (a ``method`` entry is ignored).

        An unknown or missing parameter, or a bad value, is a one-line CactusError naming the
        option; ``stored`` (the artifact the config came from) adds that the artifact needs recomputing.
        """
        names = cls.param_names()
        given = {k: v for k, v in params.items() if k != "method"}
        unknown = [k for k in given if k not in names]
        required = [n for n, p in inspect.signature(cls.__init__).parameters.items()
                    if p.default is p.empty and n != "self"]
        missing = [n for n in required if n not in given]
        problem = (f"unknown option {unknown[0]!r} (it takes {', '.join(names)})" if unknown
                   else f"option {missing[0]!r} is required" if missing else None)
        if problem is not None:
            where = f"; {stored} was made by another version of cactus: recompute it" if stored is not None else ""
            raise CactusError(f"--method {cls.name}: {problem}{where}")
        encoder = cls(**given)
        encoder.check_params()
        return encoder

    def check_params(self) -> None:
        """Raise CactusError naming the option for a value the encoder cannot use (here: ``positive_params``)."""
        from embeddings.train_utils import check_options

        check_options(**{name: getattr(self, name) for name in self.positive_params})

    def input_keys(self) -> list[str]:
        """Content keys of the files the parameters name; they join the cache key's inputs (none here)."""
        return []

    # -- the contract -------------------------------------------------------------------
    def fit(self, images: np.ndarray) -> Encoder:
        """Learn from unlabelled images (N, H, W, C) uint8; returns self."""
        raise NotImplementedError

    def transform(self, images: np.ndarray) -> np.ndarray:
        """Embed images (N, H, W, C) uint8 -> (N, D) float32."""
        raise NotImplementedError

    def get_state(self) -> dict[str, np.ndarray]:
        """Learned weights as named numpy arrays, stored as HDF5 datasets."""
        raise NotImplementedError

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`get_state` returned (after ``__init__`` with the same params)."""
        raise NotImplementedError

    # -- shared helpers -----------------------------------------------------------------
    def _remember_input(self, images: np.ndarray) -> None:
        check_images(images)
        self.input_shape_ = tuple(int(s) for s in images.shape[1:])

    def _restore_input_shape(self, state: Mapping[str, np.ndarray]) -> None:
        if "input_shape" not in state:
            raise CactusError(f"{self.name} encoder: stored weights lack 'input_shape'")
        self.input_shape_ = tuple(int(s) for s in state["input_shape"])

    def _check_input(self, images: np.ndarray) -> None:
        check_images(images)
        expected = getattr(self, "input_shape_", None)
        if expected is None:
            raise CactusError(f"{self.name} encoder: transform called before fit")
        if self.any_resolution and images.shape[3] == expected[2]:
            return
        if tuple(images.shape[1:]) != tuple(expected):
            raise CactusError(
                f"{self.name} encoder: images of shape {tuple(images.shape[1:])} (H, W, C) given, "
                f"but it was trained on {tuple(expected)}; pass --image-size to match"
            )


def check_images(images: np.ndarray) -> None:
    """Refuse anything but a non-empty (N, H, W, C) uint8 array."""
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.dtype != np.uint8:
        shape = getattr(images, "shape", None)
        dtype = getattr(images, "dtype", type(images).__name__)
        raise CactusError(f"encoder input: expected (N, H, W, C) uint8 images, got shape {shape} {dtype}")
    if len(images) == 0:
        raise CactusError("encoder input: no images")


def as_float_pixels(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 -> (N, H*W*C) float32 in [0, 1] (all at once: see :func:`float_pixel_chunks`)."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


#: Bytes of float32 pixels converted at a time by :func:`float_pixel_chunks` (a few hundred 84x84 RGB images).
CHUNK_BYTES = 64 * 2**20


def float_pixel_chunks(images: np.ndarray, chunk_bytes: int | None = None) -> Iterator[tuple[slice, np.ndarray]]:
    """(N, H, W, C) uint8 -> (rows, (n, H*W*C) float32 in [0, 1]) for consecutive row slices.

    Never more than ``chunk_bytes`` (default :data:`CHUNK_BYTES`) of float pixels at once (at least
    one image), so a pass over 38,400 miniImageNet images at 84x84 (3.25 GB as float32) holds ~64 MB.
    """
    chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    width = int(np.prod(images.shape[1:]))
    step = max(1, chunk_bytes // (4 * max(width, 1)))
    for start in range(0, len(images), step):
        rows = slice(start, min(start + step, len(images)))
        yield rows, as_float_pixels(images[rows])
