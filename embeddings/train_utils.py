"""Shared torch helpers for the neural encoders (contrastive, deepcluster, acai, bigan, infogan).

Stable API (other encoders import these names):

- :func:`check_options` -- validate the shared ``--epochs/--batch-size/--lr/--dim`` style options.
- :func:`setup_torch` -- device + thread count + ``torch.manual_seed``; returns (device, generator).
- :func:`batch_order` -- shuffled mini-batch index arrays for one epoch, from a numpy generator.
- :func:`to_tensor` -- uint8 images (B, H, W, C) numpy -> float (B, C, H, W) in [0, 1] on a device.
- :func:`train_epochs` -- the fit loop: a progress bar over every step, the loss beside it,
  per-epoch mean losses returned; checkpoints / resume (:mod:`cactus.core.training`) and
  data-parallel ranks (:mod:`embeddings.parallel`) when the encoder hands it a ``TrainingState``.
- :class:`TrainingState` -- what an encoder's fit must save to continue exactly
  (:mod:`embeddings.fit_state`).
- :func:`embed_in_batches` -- apply a function to all images in batches under ``no_grad``.
- :func:`module_state` / :func:`load_module_state` -- ``nn.Module`` <-> ``dict[str, np.ndarray]``
  (the form ``Encoder.get_state`` returns and the HDF5 artifact stores).
- :func:`conv_backbone` -- the conv4 feature extractor with running-statistics batch norm.
- :func:`recompute_batchnorm` -- re-estimate batch-norm statistics on clean images after training.

Determinism: everything random in a fit must come from the generator / rng handed out here, so
one seed gives the same weights on CPU (same thread count).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from cactus.core import log
from cactus.core.errors import CactusError
from embeddings.fit_state import TrainingState

if TYPE_CHECKING:
    from embeddings.fit_state import Position


def check_options(**options: Any) -> None:
    """Raise CactusError for a non-positive integer/float option, e.g. ``check_options(epochs=0)``.

    The option name is shown as the CLI flag (``batch_size`` -> ``--batch-size``). ``None`` is skipped.
    """
    for name, value in options.items():
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CactusError(f"{flag} {value!r}: expected a number")
        if not value > 0:
            raise CactusError(f"{flag} {value}: must be positive")


def setup_torch(seed: int, device: str = "auto", threads: int | None = None):
    """Seed torch and resolve the device.

    Returns (torch.device, torch.Generator seeded with ``seed`` on the CPU). Use the generator for
    weight-independent randomness drawn on the CPU (augmentations, sampling); weights initialised
    right after this call are fixed by ``torch.manual_seed(seed)``.
    """
    import torch

    from cactus.core.device import resolve_device

    torch_device = resolve_device(device, threads)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    return torch_device, generator


def batch_order(n: int, batch_size: int, rng: np.random.Generator, drop_last: bool = True) -> list[np.ndarray]:
    """One epoch of shuffled index arrays, each (batch_size,) int64 (the last shorter unless drop_last).

    With drop_last and n < batch_size one batch of all n indices is still returned.
    """
    order = rng.permutation(n)
    size = min(batch_size, n)
    stop = n - n % size if drop_last else n
    return [order[i : i + size] for i in range(0, stop, size)]


def to_tensor(images: np.ndarray, device=None):
    """(B, H, W, C) uint8 numpy -> (B, C, H, W) float32 tensor in [0, 1] on ``device``."""
    from cactus.nets import images_to_tensor

    return images_to_tensor(np.ascontiguousarray(images), device=device)


def train_epochs(
    step: Callable[[np.ndarray], float],
    n: int,
    epochs: int,
    batch_size: int,
    rng: np.random.Generator,
    description: str,
    on_epoch: Callable[[int, float], None] | None = None,
    drop_last: bool = True,
    state: TrainingState | None = None,
    on_epoch_start: Callable[[int], None] | None = None,
) -> list[float]:
    """The fit loop shared by the neural encoders, with checkpoints, resume and data parallelism.

    step(indices (B,) int64) runs one optimisation step on those rows and returns its loss (under
    torchrun: the loss of the whole batch, see :mod:`embeddings.parallel`). Batches come from
    :func:`batch_order` with ``rng``; a progress bar covers every step with the running loss.
    on_epoch_start(epoch) runs before an epoch's order is drawn (DeepCluster's re-clustering);
    on_epoch(epoch, mean_loss) after each epoch. Returns the mean loss of each epoch.

    ``state`` (what the encoder must save, :class:`embeddings.fit_state.TrainingState`) turns on the
    checkpoints of the policy of the running fit (:func:`embeddings.fit_state.fit_session`): every
    ``every_s`` seconds and on SIGTERM / SIGINT (then :class:`cactus.core.training.Stopped` is
    raised), and ``--resume`` continues from the last one to the result of an uninterrupted fit.
    """
    from cactus.core.progress import Progress
    from cactus.core.training import CheckpointPolicy
    from embeddings import parallel
    from embeddings.fit_state import Position, current_session

    session = current_session()
    steps_per_epoch = len(batch_order(n, batch_size, np.random.default_rng(0), drop_last))
    if session.world.distributed and min(batch_size, n) % session.world.size:
        raise CactusError(f"--batch-size {min(batch_size, n)}: not divisible by the {session.world.size} processes "
                          "of this distributed run; use a multiple of the world size")
    policy = session if state is not None else CheckpointPolicy(world=session.world)  # nothing to save: no checkpoints
    position = Position()

    def load(saved: dict) -> None:
        nonlocal position
        position = Position.restore(saved, state, steps_per_epoch)

    total = epochs * steps_per_epoch
    if policy.restore("encoder", total, lambda s: int(s["epoch"]) * steps_per_epoch + int(s["step"]), load) is not None:
        log.info(f"embed: resuming from {policy.path} at epoch {position.epoch + 1}, step {position.step}")
    hooks = parallel.start(state) if state is not None else []
    done = position.epoch * steps_per_epoch + position.step
    progress = Progress(range(done, total), total - done, description)
    ticks = iter(progress)
    try:
        with policy.running(lambda: position.checkpoint(state)) as checkpoints:
            for epoch in range(position.epoch, epochs):
                batches = _epoch_batches(n, batch_size, rng, drop_last, epoch, position, on_epoch_start)
                for index in range(position.step, len(batches)):
                    next(ticks)
                    loss = float(step(batches[index]))
                    if not np.isfinite(loss):
                        raise CactusError(f"{description}: the loss became {loss} at epoch {epoch + 1}; lower --lr")
                    position.total += loss
                    position.count += 1
                    position.step = index + 1
                    done += 1
                    progress.set(epoch=epoch + 1, loss=position.total / position.count)
                    checkpoints.after_step(done)
                position.losses.append(position.total / max(position.count, 1))
                position.total, position.count = 0.0, 0
                if on_epoch is not None:
                    on_epoch(epoch, position.losses[-1])
    finally:
        ticks.close()
        for hook in hooks:
            hook.remove()
    return position.losses


def _epoch_batches(n: int, batch_size: int, rng: np.random.Generator, drop_last: bool, epoch: int,
                   position: Position, on_epoch_start: Callable[[int], None] | None) -> list[np.ndarray]:
    """The epoch's batches; for the epoch a checkpoint stopped in, the same order again (from its saved rng)."""
    from embeddings.fit_state import rng_state

    if epoch == position.epoch and position.epoch_rng is not None:
        rng.bit_generator.state = position.epoch_rng
    else:
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        position.epoch, position.step = epoch, 0
        position.epoch_rng = rng_state(rng)
    return batch_order(n, batch_size, rng, drop_last)


def embed_in_batches(
    fn: Callable[[Any], Any], images: np.ndarray, batch_size: int = 512, device=None
) -> np.ndarray:
    """Apply ``fn`` ((B, C, H, W) float tensor -> (B, D) tensor) to all images under no_grad.

    images: (N, H, W, C) uint8. Returns (N, D) float32 numpy.
    """
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = to_tensor(images[start : start + batch_size], device)
            out.append(fn(batch).detach().float().cpu().numpy())
    return np.concatenate(out).astype(np.float32, copy=False)


def module_state(module, prefix: str = "") -> dict[str, np.ndarray]:
    """``module.state_dict()`` as {prefix + name: numpy array} (copies, on the CPU)."""
    return {prefix + name: value.detach().cpu().numpy().copy() for name, value in module.state_dict().items()}


def load_module_state(module, state: dict[str, np.ndarray], prefix: str = "", what: str = "encoder") -> None:
    """Load the arrays under ``prefix`` into ``module``; a missing or mis-shaped array raises CactusError."""
    import torch

    expected = module.state_dict()
    loaded = {}
    for name, value in expected.items():
        key = prefix + name
        if key not in state:
            raise CactusError(f"{what}: stored weights lack '{key}'; the artifact does not match these options")
        array = np.asarray(state[key])
        if tuple(array.shape) != tuple(value.shape):
            raise CactusError(
                f"{what}: stored '{key}' has shape {tuple(array.shape)}, expected {tuple(value.shape)}; "
                "the artifact does not match these options (--width, --dim...)"
            )
        loaded[name] = torch.as_tensor(array, dtype=value.dtype)
    module.load_state_dict(loaded)


def conv_backbone(in_channels: int, width: int = 64, out_channels: int | None = None, depth: int = 4):
    """Conv4-style feature extractor with ordinary (running-statistics) batch norm.

    ``depth`` blocks of 3x3 conv -> 2x2 max pool (ceil mode, so 28 -> 14 -> 7 -> 4 -> 2) -> BatchNorm
    -> ReLU; the last block has ``out_channels`` (default ``width``) channels; a global average pool
    ends it. (B, C, H, W) float -> (B, out_channels). Pooling before the norm and the ReLU (the same
    function as after them when the norm's scale is positive) makes them 4x cheaper; the weights are
    channels-last, which is 1.5-2x faster on CPU. Unlike ``cactus.nets.ConvNet`` the batch norm
    keeps running statistics, so in eval mode an image's embedding does not depend on its batch.
    """
    import torch
    from torch import nn

    out_channels = out_channels or width
    layers: list = []
    channels = in_channels
    for block in range(depth):
        target = out_channels if block == depth - 1 else width
        layers += [
            nn.Conv2d(channels, target, 3, padding=1, bias=False),
            nn.MaxPool2d(2, ceil_mode=True),  # ceil: a 1x1 grid stays 1x1
            nn.BatchNorm2d(target),
            nn.ReLU(inplace=True),
        ]
        channels = target
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers).to(memory_format=torch.channels_last)


def augmentations_for(images: np.ndarray, encoder: str):
    """The augmentation set that suits images (N, H, W, C) uint8 (:func:`embeddings.augment.config_for`), logged."""
    from embeddings.augment import config_for_fraction, describe, extreme_fraction

    fraction = extreme_fraction(images)
    config = config_for_fraction(fraction)
    log.info(f"{encoder}: {describe(config)} augmentations ({fraction:.0%} of pixel values at black or white)")
    return config


def recompute_batchnorm(module, images: np.ndarray, batch_size: int = 256, device=None,
                        side: int | None = None) -> None:
    """Set every BatchNorm's running mean/var to the exact average over ``images`` (N, H, W, C) uint8.

    Training statistics come from augmented views; this pass re-estimates them on the clean images
    (resized to ``side`` x ``side``: the resolution the net trained at, when it embeds larger images).
    Leaves the module in eval mode.
    """
    import torch
    from torch import nn

    from cactus.nets import resize_images

    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        module.eval()
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = the exact mean over batches
    module.train()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = to_tensor(images[start : start + batch_size], device)
            module(batch if side is None else resize_images(batch, side))
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    module.eval()
