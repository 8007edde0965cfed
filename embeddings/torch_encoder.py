"""The shared base of the torch encoders (acai, bigan, infogan, contrastive, deepcluster).

:class:`TorchEncoder` holds what they all do the same way, so each encoder file keeps only its
networks, its loss and its own learned extras:

- the parameters every one of them takes (``seed``, ``epochs``, ``batch_size``, ``lr``, ``quick``,
  ``device``, ``threads``); a subclass redeclares a field to change its default;
- the start of a fit (check the images, seed torch, resolve the device and threads, build the
  networks on the device in train mode), and the training run itself: the shared loop
  :func:`embeddings.train_utils.train_epochs` with a checkpointable
  :class:`~embeddings.train_utils.TrainingState` over the networks and optimisers, networks left
  in eval mode afterwards;
- ``get_state`` / ``set_state`` over the named learned modules (:attr:`TorchEncoder.learned_modules`)
  plus the input shape and the encoder's own extra arrays;
- ``transform`` in batches, in eval mode, after checking the input shape.

A subclass is a ``@dataclass(eq=False, kw_only=True)`` declaring its own fields, ``learned_modules``,
``quick_epochs`` / ``full_epochs`` and ``positive_params``; it implements ``_build(image_shape)``,
``fit`` (``_start_fit``, its optimisers and step, ``_train``) and ``_embed``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from embeddings.base import Encoder

if TYPE_CHECKING:
    import torch


@dataclass(eq=False, kw_only=True)
class TorchEncoder(Encoder):
    """A torch encoder. Parameters shared by all of them:

    ``seed`` fixes the weights' initialisation, the batch order and every random draw of a fit;
    ``epochs`` passes over the images (None: ``quick_epochs`` under ``quick``, else ``full_epochs``);
    ``batch_size`` images per step; ``lr`` the optimiser's learning rate; ``quick`` the short preset
    (fewer epochs, narrower nets where the encoder says so); ``device`` auto | cpu | cuda and
    ``threads`` CPU threads (both left out of the cache key, see :attr:`Encoder.NOT_IN_KEY`).

    Learned (besides the modules of :attr:`learned_modules`): ``input_shape_`` (H, W, C),
    ``device_`` (the torch device the modules live on), ``losses_`` (mean loss per epoch).
    """

    seed: int = 0
    epochs: int | None = None
    batch_size: int = 64
    lr: float = 1e-3
    quick: bool = False
    device: str = "auto"
    threads: int | None = None

    #: The learned torch modules: attribute name (ending in ``_``) -> prefix of its arrays in get_state().
    learned_modules: ClassVar[dict[str, str]] = {}
    quick_epochs: ClassVar[int] = 1
    full_epochs: ClassVar[int] = 3
    positive_params: ClassVar[tuple[str, ...]] = ("epochs", "batch_size", "lr")

    # -- parameters -------------------------------------------------------------------------
    def epochs_to_run(self) -> int:
        """``epochs``, or the preset's number of epochs when it is None."""
        if self.epochs is not None:
            return self.epochs
        return self.quick_epochs if self.quick else self.full_epochs

    # -- to implement -----------------------------------------------------------------------
    def _build(self, image_shape: tuple[int, int, int]) -> None:
        """Create the networks for images of shape (H, W, C) (weights from torch's global RNG)."""
        raise NotImplementedError

    def _embed(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float in [0, 1] -> (B, D): the embedding before any post-processing."""
        raise NotImplementedError

    def _extra_state(self) -> dict[str, np.ndarray]:
        """Learned arrays other than the modules' weights (e.g. a standardisation), for get_state()."""
        return {}

    def _set_extra_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`_extra_state` returned."""

    # -- fitting ----------------------------------------------------------------------------
    def _start_fit(self, images: np.ndarray) -> torch.Generator:
        """Check params and images (N, H, W, C) uint8, seed torch, build the modules on the device in train mode.

        Returns the CPU torch.Generator (seeded with ``seed``) for the fit's random draws.
        """
        from embeddings.train_utils import setup_torch

        self.check_params()
        self._remember_input(images)
        self._check_fit_images(images)
        self.device_, generator = setup_torch(self.seed, self.device, self.threads)
        self._build(self.input_shape_)
        for module in self._networks():
            module.to(self.device_).train()
        return generator

    def _check_fit_images(self, images: np.ndarray) -> None:
        """Raise CactusError when there are too few images to fit (any count will do here)."""

    def _train(
        self,
        step: Callable[[np.ndarray], float],
        n: int,
        generator: torch.Generator,
        objects: dict[str, Any],
        *,
        rng: np.random.Generator | None = None,
        on_epoch: Callable[[int, float], None] | None = None,
        on_epoch_start: Callable[[int], None] | None = None,
        extra: tuple[Callable[[], dict], Callable[[dict], None]] | None = None,
    ) -> None:
        """Run the shared training loop over ``n`` images; sets ``losses_`` and leaves the modules in eval mode.

        step(indices (B,) int64) -> loss of one optimisation step. ``objects``: the optimisers and any
        other module / scheduler that lives through the fit (checkpointed with the learned modules,
        which are named by their attribute without the ``_``). ``rng``: the batch-order generator
        (default: a fresh one from ``seed``). ``extra``: (save, load) of the encoder's own data for
        checkpoints.
        """
        from embeddings.train_utils import TrainingState, train_epochs

        named = {attr.rstrip("_"): getattr(self, attr) for attr in self.learned_modules}
        save, load = extra if extra is not None else (None, None)
        state = TrainingState({**named, **objects}, generator, save, load)
        rng = rng if rng is not None else np.random.default_rng(self.seed)
        self.losses_ = train_epochs(step, n, self.epochs_to_run(), self.batch_size, rng, self.name, on_epoch,
                                    state=state, on_epoch_start=on_epoch_start)
        self._eval()

    def _networks(self) -> list[torch.nn.Module]:
        return [getattr(self, attr) for attr in self.learned_modules]

    def _eval(self) -> None:
        for module in self._networks():
            module.eval()

    # -- embedding --------------------------------------------------------------------------
    def _embed_images(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, C) uint8 -> (N, D) float32 from :meth:`_embed`, in batches, modules in eval mode."""
        from embeddings.train_utils import embed_in_batches

        self._check_input(images)
        self._eval()
        return embed_in_batches(self._embed, images, device=self.device_)

    def transform(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, C) uint8 -> (N, D) float32 (see the encoder's :meth:`_embed`)."""
        return self._embed_images(images)

    # -- weights ----------------------------------------------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        from embeddings.train_utils import module_state

        state: dict[str, np.ndarray] = {}
        for attr, prefix in self.learned_modules.items():
            state.update(module_state(getattr(self, attr), prefix))
        state.update(self._extra_state())
        state["input_shape"] = np.asarray(self.input_shape_, dtype=np.int64)
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Rebuild the modules for the stored input shape, load their weights, move them to the device, eval mode.

        Building the modules does not touch torch's global RNG (their initial weights are overwritten).
        """
        import torch

        from cactus.core.device import resolve_device
        from embeddings.train_utils import load_module_state

        self._restore_input_shape(state)
        self.device_ = resolve_device(self.device, self.threads)
        with torch.random.fork_rng(devices=[]):
            self._build(self.input_shape_)
        for attr, prefix in self.learned_modules.items():
            load_module_state(getattr(self, attr), state, prefix, what=f"{self.name} encoder")
        self._set_extra_state(state)
        for module in self._networks():
            module.to(self.device_).eval()


class EpochMeans:
    """A second loss a step reports besides the one it returns (e.g. ACAI's critic loss), averaged per epoch.

    The step appends to ``values`` (the current epoch's values, always the same list); ``end_epoch``
    is the ``on_epoch`` hook that turns them into one mean in ``means`` (NaN for an epoch without
    steps); ``save`` / ``load`` keep both in a checkpoint under ``{name}_sums`` / ``{name}_losses``.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.values: list[float] = []
        self.means: list[float] = []

    def end_epoch(self, epoch: int, loss: float) -> None:
        self.means.append(float(np.mean(self.values)) if self.values else float("nan"))
        self.values.clear()

    def save(self) -> dict[str, list[float]]:
        return {f"{self.name}_sums": list(self.values), f"{self.name}_losses": list(self.means)}

    def load(self, saved: dict) -> None:
        self.values[:] = [float(x) for x in saved[f"{self.name}_sums"]]
        self.means[:] = [float(x) for x in saved[f"{self.name}_losses"]]


def simultaneous_step(*players: tuple[torch.Tensor, torch.optim.Optimizer]) -> None:
    """One step of every player's optimiser on its own loss, all from the same forward pass (a game).

    players: (loss (scalar), optimiser) pairs, in order. Each loss's gradient reaches only its own
    optimiser's parameters (``backward(inputs=...)``), so each player moves against the others'
    parameters as they were before the step (simultaneous updates, as in ALI's and ACAI's code).
    """
    for _, optimiser in players:
        optimiser.zero_grad()
    for index, (loss, optimiser) in enumerate(players):
        parameters = [p for group in optimiser.param_groups for p in group["params"]]
        loss.backward(inputs=parameters, retain_graph=index < len(players) - 1)
    for _, optimiser in players:
        optimiser.step()
