"""ACAI: adversarially constrained autoencoder interpolation (Berthelot, Raffel, Roy, Goodfellow 2018).

A conv autoencoder whose decoded interpolations must look real: a critic sees
``x_alpha = g(alpha * f(x1) + (1 - alpha) * f(x2))`` (alpha ~ U[0, 0.5]) and predicts alpha; the
autoencoder is trained to make it predict 0 (weight ``lam``, 0.5 in the paper). The critic also
sees ``gamma * x + (1 - gamma) * g(f(x))`` and must predict 0 there (gamma 0.2), which keeps
it from simply spotting blur. CACTUs used a 256-d latent (16 x 4 x 4 for 28x28 images).
The embedding is the encoder's latent map, flattened, taken before any activation.
"""

from __future__ import annotations

import numpy as np

from cactus.core.errors import CactusError
from embeddings.base import Encoder
from embeddings.train_utils import (
    check_options,
    embed_in_batches,
    load_module_state,
    module_state,
    setup_torch,
    to_tensor,
    train_epochs,
)

QUICK_EPOCHS = 1
FULL_EPOCHS = 3


class ACAIEncoder(Encoder):
    """ACAI autoencoder; the embedding is the (dim,) latent = (dim / (h*w), h, w) map flattened.

    For 28x28 images the latent grid is 4x4, so ``dim`` must be a multiple of 16.
    Learned: encoder_, decoder_, critic_ (torch modules), input_shape_, losses_ (mean
    reconstruction MSE per epoch), critic_losses_ (mean critic loss per epoch).
    """

    name = "acai"
    not_data_parallel = None

    def __init__(
        self,
        dim: int = 256,
        epochs: int | None = None,
        batch_size: int = 64,
        lr: float = 1e-3,
        seed: int = 0,
        width: int | None = None,
        lam: float = 0.5,
        gamma: float = 0.2,
        quick: bool = False,
        device: str = "auto",
        threads: int | None = None,
    ) -> None:
        epochs = epochs if epochs is not None else (QUICK_EPOCHS if quick else FULL_EPOCHS)
        width = width if width is not None else (16 if quick else 32)
        check_options(dim=dim, epochs=epochs, batch_size=batch_size, lr=lr, width=width)
        super().__init__(
            dim=dim, seed=seed, epochs=epochs, batch_size=batch_size, lr=lr, width=width,
            lam=lam, gamma=gamma, quick=quick, device=device,
        )
        self.epochs, self.batch_size, self.lr, self.width = epochs, batch_size, lr, width
        self.lam, self.gamma, self.quick = lam, gamma, quick
        self.device, self.threads = device, threads

    # -- networks ---------------------------------------------------------------------------
    def _build(self, image_shape: tuple[int, int, int]) -> None:
        from embeddings.image_nets import ConvDecoder, ConvEncoder, stage_sizes

        height, wide, channels = image_shape
        sizes = stage_sizes(height, wide)
        cells = sizes[-1][0] * sizes[-1][1]
        if self.dim % cells:
            raise CactusError(
                f"--dim {self.dim}: acai's latent is a {sizes[-1][0]}x{sizes[-1][1]} map for "
                f"{height}x{wide} images, so --dim must be a multiple of {cells}"
            )
        latent_channels = self.dim // cells
        self.encoder_ = ConvEncoder(channels, self.width, latent_channels)
        self.decoder_ = ConvDecoder(latent_channels, self.width, channels, sizes)
        # The critic has the encoder's shape; its output map is averaged into one alpha per image.
        self.critic_ = ConvEncoder(channels, self.width, latent_channels)

    # -- the contract -----------------------------------------------------------------------
    def fit(self, images: np.ndarray) -> ACAIEncoder:
        """Train on images (N, H, W, C) uint8.

        Under torchrun each rank trains on its share of every batch; the interpolation partner of
        row i is row B - 1 - i of the whole batch, so a rank also encodes its rows' partners.
        """
        import torch

        from embeddings.checkpointing import TrainingState

        self._remember_input(images)
        device, generator = setup_torch(self.seed, self.device, self.threads)
        self._build(self.input_shape_)
        for net in (self.encoder_, self.decoder_, self.critic_):
            net.to(device).train()
        ae_params = [*self.encoder_.parameters(), *self.decoder_.parameters()]
        ae_opt = torch.optim.Adam(ae_params, lr=self.lr)
        critic_opt = torch.optim.Adam(self.critic_.parameters(), lr=self.lr)
        critic_sums: list[float] = []
        self.critic_losses_: list[float] = []
        step = self._step_function(images, device, generator, ae_opt, critic_opt, critic_sums)

        def on_epoch(epoch: int, loss: float) -> None:
            self.critic_losses_.append(float(np.mean(critic_sums)) if critic_sums else float("nan"))
            critic_sums.clear()

        def load_extra(saved: dict) -> None:
            critic_sums[:] = [float(x) for x in saved["critic_sums"]]
            self.critic_losses_ = [float(x) for x in saved["critic_losses"]]

        state = TrainingState(
            {"encoder": self.encoder_, "decoder": self.decoder_, "critic": self.critic_, "ae_opt": ae_opt,
             "critic_opt": critic_opt}, generator,
            lambda: {"critic_sums": list(critic_sums), "critic_losses": list(self.critic_losses_)}, load_extra)
        self.losses_ = train_epochs(step, len(images), self.epochs, self.batch_size, np.random.default_rng(self.seed),
                                    "acai", on_epoch, state=state)
        for net in (self.encoder_, self.decoder_, self.critic_):
            net.eval()
        return self

    def _step_function(self, images, device, generator, ae_opt, critic_opt, critic_sums: list[float]):
        """step(indices (B,)) -> the batch's reconstruction MSE; appends its critic loss to ``critic_sums``."""
        import torch

        from embeddings import parallel

        ae_params = [p for group in ae_opt.param_groups for p in group["params"]]
        critic_params = [p for group in critic_opt.param_groups for p in group["params"]]

        def step(indices: np.ndarray) -> float:
            batch = to_tensor(images[indices], device)  # (B, C, H, W)
            split = parallel.world().distributed
            rows = parallel.share(len(batch))
            x = batch[rows] if split else batch
            latent = self.encoder_(x)
            recon = self.decoder_(latent)
            # alpha in [0, 0.5]: the critic cannot tell which end of the pair is which. (B,), drawn on every rank.
            alpha = 0.5 - (torch.rand(len(batch), generator=generator) - 0.5).abs()
            alpha = alpha[rows].to(device)
            shaped = alpha.view(-1, 1, 1, 1)
            # Row i is mixed with row B - 1 - i of the whole batch (on another rank when split: encode it here).
            mixed = self.decoder_(shaped * latent + (1 - shaped) * (
                self.encoder_(batch.flip(0)[rows]) if split else latent.flip(0)))
            critic_mixed = self.critic_(mixed).mean(dim=(1, 2, 3))
            blend = (recon + self.gamma * (x - recon)).detach()
            critic_real = self.critic_(blend).mean(dim=(1, 2, 3))
            recon_loss = (recon - x).pow(2).mean()
            ae_loss = recon_loss + self.lam * critic_mixed.pow(2).mean()
            critic_loss = (critic_mixed - alpha).pow(2).mean() + critic_real.pow(2).mean()
            ae_opt.zero_grad()
            critic_opt.zero_grad()
            # Simultaneous updates as in the paper's code: each loss only reaches its own parameters.
            ae_loss.backward(inputs=ae_params, retain_graph=True)
            critic_loss.backward(inputs=critic_params)
            ae_opt.step()
            critic_opt.step()
            recon_value, critic_value = parallel.average([recon_loss.item(), critic_loss.item()])
            critic_sums.append(critic_value)
            return recon_value

        return step

    def transform(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, C) uint8 -> (N, dim) float32: the flattened pre-activation latent."""
        self._check_input(images)
        device = next(self.encoder_.parameters()).device
        return embed_in_batches(lambda x: self.encoder_(x).flatten(1), images, device=device)

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, C) uint8 -> (N, C, H, W) float32 decoder output (pixels in about [0, 1])."""
        import torch

        self._check_input(images)
        device = next(self.encoder_.parameters()).device
        with torch.no_grad():
            return self.decoder_(self.encoder_(to_tensor(images, device))).cpu().numpy()

    def get_state(self) -> dict[str, np.ndarray]:
        return {
            **module_state(self.encoder_, "encoder."),
            **module_state(self.decoder_, "decoder."),
            **module_state(self.critic_, "critic."),
            "input_shape": np.asarray(self.input_shape_, dtype=np.int64),
        }

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self.input_shape_ = tuple(int(s) for s in state["input_shape"])
        self._build(self.input_shape_)
        load_module_state(self.encoder_, state, "encoder.", "acai encoder")
        load_module_state(self.decoder_, state, "decoder.", "acai encoder")
        load_module_state(self.critic_, state, "critic.", "acai encoder")
        for net in (self.encoder_, self.decoder_, self.critic_):
            net.eval()
