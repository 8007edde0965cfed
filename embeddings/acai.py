"""ACAI: adversarially constrained autoencoder interpolation (Berthelot, Raffel, Roy, Goodfellow 2018).

A conv autoencoder whose decoded interpolations must look real: a critic sees
``x_alpha = g(alpha * f(x1) + (1 - alpha) * f(x2))`` (alpha ~ U[0, 0.5]) and predicts alpha; the
autoencoder is trained to make it predict 0 (weight ``lam``, 0.5 in the paper). The critic also
sees ``gamma * x + (1 - gamma) * g(f(x))`` and must predict 0 there (gamma 0.2), which keeps
it from simply spotting blur. CACTUs used a 256-d latent (16 x 4 x 4 for 28x28 images).
The embedding is the encoder's latent map, flattened, taken before any activation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cactus.core.errors import CactusError
from embeddings.torch_encoder import EpochMeans, TorchEncoder, simultaneous_step


@dataclass(eq=False, kw_only=True)
class ACAIEncoder(TorchEncoder):
    """ACAI autoencoder; the embedding is the (dim,) latent = (dim / (h*w), h, w) map flattened.

    For 28x28 images the latent grid is 4x4, so ``dim`` must be a multiple of 16. ``width``: channels
    of the first conv stage (None: 16 under ``quick``, else 32); ``lam``: weight of the critic term in
    the autoencoder's loss; ``gamma``: the critic's real-looking blend. Adam at ``lr``.
    Learned: encoder_, decoder_, critic_ (torch modules), input_shape_, losses_ (mean
    reconstruction MSE per epoch), critic_losses_ (mean critic loss per epoch).
    """

    name = "acai"
    not_data_parallel = None
    learned_modules = {"encoder_": "encoder.", "decoder_": "decoder.", "critic_": "critic."}
    quick_epochs, full_epochs = 1, 3
    positive_params = ("dim", "epochs", "batch_size", "lr", "width")

    dim: int = 256
    width: int | None = None
    lam: float = 0.5
    gamma: float = 0.2

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
        width = self.width if self.width is not None else (16 if self.quick else 32)
        self.encoder_ = ConvEncoder(channels, width, latent_channels)
        self.decoder_ = ConvDecoder(latent_channels, width, channels, sizes)
        # The critic has the encoder's shape; its output map is averaged into one alpha per image.
        self.critic_ = ConvEncoder(channels, width, latent_channels)

    # -- the contract -----------------------------------------------------------------------
    def fit(self, images: np.ndarray) -> ACAIEncoder:
        """Train on images (N, H, W, C) uint8.

        Under torchrun each rank trains on its share of every batch; the interpolation partner of
        row i is row B - 1 - i of the whole batch, so a rank also encodes its rows' partners.
        """
        import torch

        generator = self._start_fit(images)
        ae_params = [*self.encoder_.parameters(), *self.decoder_.parameters()]
        ae_opt = torch.optim.Adam(ae_params, lr=self.lr)
        critic_opt = torch.optim.Adam(self.critic_.parameters(), lr=self.lr)
        critic = EpochMeans("critic")
        step = self._step_function(images, self.device_, generator, ae_opt, critic_opt, critic.values)
        self._train(step, len(images), generator, {"ae_opt": ae_opt, "critic_opt": critic_opt},
                    on_epoch=critic.end_epoch, extra=(critic.save, critic.load))
        self.critic_losses_ = critic.means
        return self

    def _step_function(self, images, device, generator, ae_opt, critic_opt, critic_sums: list[float]):
        """step(indices (B,)) -> the batch's reconstruction MSE; appends its critic loss to ``critic_sums``."""
        import torch

        from embeddings import parallel
        from embeddings.train_utils import to_tensor

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
            simultaneous_step((ae_loss, ae_opt), (critic_loss, critic_opt))  # as in the paper's code
            recon_value, critic_value = parallel.average([recon_loss.item(), critic_loss.item()])
            critic_sums.append(critic_value)
            return recon_value

        return step

    def _embed(self, batch):
        """(B, C, H, W) -> (B, dim): the flattened pre-activation latent."""
        return self.encoder_(batch).flatten(1)
