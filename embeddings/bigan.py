"""BiGAN / ALI (Donahue, Kraehenbuehl, Darrell 2017; Dumoulin et al. 2017).

A generator G: z -> x, an encoder E: x -> z, and a discriminator D(x, z) that tells real pairs
(x, E(x)) from generated ones (G(z), z), z ~ N(0, I). At the optimum E inverts G, so E(x) is a
latent code that G can decode; E's output is the embedding, standardised per unit with the
training images' mean and spread (a unit that happens to have a large scale would otherwise
dominate nearest-neighbour distances: 5-way 5-shot kNN 59.6% raw against 63-65% standardised).
D also sees its batch's feature spread (minibatch standard deviation, Karras et al. 2018):
without it the generator collapsed to one image within the first epoch on Omniglot and G(E(x))
never improved. The adversarial loss says little about progress, so fit also tracks how well
G(E(x)) reconstructs held-back training images and how well E(G(z)) recovers z
(``recon_errors_``, ``latent_errors_``, once per epoch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cactus.core.errors import CactusError
from embeddings.image_nets import ConvTrunk, Generator
from embeddings.torch_encoder import TorchEncoder, simultaneous_step
from embeddings.train_utils import embed_in_batches, to_tensor

PROBE_SIZE = 256  # images / codes used for the per-epoch reconstruction figures


class JointDiscriminator(nn.Module):
    """D(x, z): conv trunk on x, MLP on z, joint MLP (+ batch spread). (B, C, H, W), (B, dim) -> (B,) logits."""

    def __init__(self, image_shape: tuple[int, int, int], width: int, dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.x_path = nn.Sequential(ConvTrunk(image_shape, width, hidden, dropout=0.2), nn.LeakyReLU(0.2))
        self.z_path = nn.Sequential(nn.Linear(dim, hidden), nn.LeakyReLU(0.2), nn.Dropout(0.2))
        self.joint = nn.Sequential(
            nn.Linear(2 * hidden + 1, hidden), nn.LeakyReLU(0.2), nn.Dropout(0.2), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        pair = torch.cat([self.x_path(x), self.z_path(z)], dim=1)
        # Minibatch spread (Karras et al. 2018): lets D see a generator that collapsed to one image.
        spread = pair.std(0).mean() if len(pair) > 1 else pair.new_zeros(())
        return self.joint(torch.cat([pair, spread.expand(len(pair), 1)], dim=1)).squeeze(1)


@dataclass(eq=False, kw_only=True)
class BiGANEncoder(TorchEncoder):
    """BiGAN; the embedding is the encoder's (dim,) output, standardised with training statistics.

    ``width``: channels of the first conv stage (None: 16; width 32 embedded worse, 49.0% / 59.8%
    after 1 epoch). Adam at ``lr`` with beta1 0.5.
    Learned: encoder_, generator_, discriminator_ (torch modules), input_shape_, losses_ (mean
    discriminator loss per epoch), code_mean_ and code_scale_ (dim,) (the standardisation),
    recon_errors_ (per-pixel MSE of G(E(x)) per epoch), latent_errors_ (per-unit MSE of E(G(z))
    against z per epoch).
    """

    name = "bigan"
    not_data_parallel = ("its discriminator couples the rows of a batch (minibatch spread, batch-norm generator) "
                         "and draws dropout masks per rank")
    learned_modules = {"encoder_": "encoder.", "generator_": "generator.", "discriminator_": "discriminator."}
    quick_epochs, full_epochs = 1, 2
    positive_params = ("dim", "epochs", "batch_size", "lr", "width")

    dim: int = 64
    lr: float = 2e-4
    width: int | None = None

    def _build(self, image_shape: tuple[int, int, int]) -> None:
        width = self.width if self.width is not None else 16
        self.encoder_ = ConvTrunk(image_shape, width, self.dim)
        self.generator_ = Generator(self.dim, width, image_shape)
        self.discriminator_ = JointDiscriminator(image_shape, width, self.dim)

    def fit(self, images: np.ndarray) -> BiGANEncoder:
        """Train on images (N, H, W, C) uint8."""
        generator = self._start_fit(images)
        device = self.device_
        eg_params = [*self.encoder_.parameters(), *self.generator_.parameters()]
        eg_opt = torch.optim.Adam(eg_params, lr=self.lr, betas=(0.5, 0.999))
        d_opt = torch.optim.Adam(self.discriminator_.parameters(), lr=self.lr, betas=(0.5, 0.999))
        rng = np.random.default_rng(self.seed)
        probe_images = to_tensor(images[rng.permutation(len(images))[:PROBE_SIZE]], device)
        probe_codes = self._prior(len(probe_images), generator).to(device)

        def step(indices: np.ndarray) -> float:
            x = to_tensor(images[indices], device)
            z = self._prior(len(x), generator).to(device)
            d_real = self.discriminator_(x, self.encoder_(x))
            d_fake = self.discriminator_(self.generator_(z), z)
            d_loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
            eg_loss = F.softplus(d_real).mean() + F.softplus(-d_fake).mean()
            simultaneous_step((d_loss, d_opt), (eg_loss, eg_opt))  # as in ALI
            return d_loss.item()

        self.recon_errors_: list[float] = []
        self.latent_errors_: list[float] = []

        def on_epoch(epoch: int, loss: float) -> None:
            recon, latent = self._probe(probe_images, probe_codes)
            self.recon_errors_.append(recon)
            self.latent_errors_.append(latent)

        def save() -> dict:
            return {"recon_errors": list(self.recon_errors_), "latent_errors": list(self.latent_errors_)}

        def load(saved: dict) -> None:
            self.recon_errors_ = [float(x) for x in saved["recon_errors"]]
            self.latent_errors_ = [float(x) for x in saved["latent_errors"]]

        self._train(step, len(images), generator, {"eg_opt": eg_opt, "d_opt": d_opt}, rng=rng, on_epoch=on_epoch,
                    extra=(save, load))
        codes = embed_in_batches(self.encoder_, images, device=device).astype(np.float64)
        self.code_mean_ = codes.mean(axis=0).astype(np.float32)
        self.code_scale_ = (1.0 / np.maximum(codes.std(axis=0), 1e-6)).astype(np.float32)
        return self

    def _prior(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """(batch, dim) codes from the prior N(0, I)."""
        return torch.randn(batch, self.dim, generator=generator)

    def _probe(self, x, z) -> tuple[float, float]:
        """(per-pixel MSE of G(E(x)) vs x, per-unit MSE of E(G(z)) vs z) with every net in eval mode."""
        self._eval()
        with torch.no_grad():
            recon = (self.generator_(self.encoder_(x)) - x).pow(2).mean().item()
            latent = (self.encoder_(self.generator_(z)) - z).pow(2).mean().item()
        for net in self._networks():
            net.train()
        return recon, latent

    def _embed(self, batch: torch.Tensor) -> torch.Tensor:
        return self.encoder_(batch)

    def transform(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, C) uint8 -> (N, dim) float32: (E(x) - code_mean_) * code_scale_."""
        return ((self._embed_images(images) - self.code_mean_) * self.code_scale_).astype(np.float32)

    def _extra_state(self) -> dict[str, np.ndarray]:
        return {"code_mean": self.code_mean_, "code_scale": self.code_scale_}

    def _set_extra_state(self, state: dict[str, np.ndarray]) -> None:
        self.code_mean_ = np.asarray(state["code_mean"], dtype=np.float32)
        self.code_scale_ = np.asarray(state["code_scale"], dtype=np.float32)
        if self.code_mean_.shape != (self.dim,) or self.code_scale_.shape != (self.dim,):
            raise CactusError("bigan encoder: stored standardisation does not match --dim")
