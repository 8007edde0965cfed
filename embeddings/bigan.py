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

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cactus.core.errors import CactusError
from embeddings.base import Encoder
from embeddings.checkpointing import TrainingState
from embeddings.image_nets import ConvTrunk, Generator
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
FULL_EPOCHS = 2
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


class BiGANEncoder(Encoder):
    """BiGAN; the embedding is the encoder's (dim,) output, standardised with training statistics.

    Learned: encoder_, generator_, discriminator_ (torch modules), input_shape_, losses_ (mean
    discriminator loss per epoch), code_mean_ and code_scale_ (dim,) (the standardisation),
    recon_errors_ (per-pixel MSE of G(E(x)) per epoch), latent_errors_ (per-unit MSE of E(G(z))
    against z per epoch).
    """

    name = "bigan"
    not_data_parallel = ("its discriminator couples the rows of a batch (minibatch spread, batch-norm generator) "
                         "and draws dropout masks per rank")

    def __init__(
        self,
        dim: int = 64,
        epochs: int | None = None,
        batch_size: int = 64,
        lr: float = 2e-4,
        seed: int = 0,
        width: int | None = None,
        quick: bool = False,
        device: str = "auto",
        threads: int | None = None,
    ) -> None:
        epochs = epochs if epochs is not None else (QUICK_EPOCHS if quick else FULL_EPOCHS)
        width = width if width is not None else 16  # width 32 embedded worse (49.0% / 59.8% after 1 epoch)
        check_options(dim=dim, epochs=epochs, batch_size=batch_size, lr=lr, width=width)
        super().__init__(
            dim=dim, seed=seed, epochs=epochs, batch_size=batch_size, lr=lr, width=width, quick=quick, device=device
        )
        self.epochs, self.batch_size, self.lr, self.width = epochs, batch_size, lr, width
        self.quick, self.device, self.threads = quick, device, threads

    def _build(self, image_shape: tuple[int, int, int]) -> None:
        self.encoder_ = ConvTrunk(image_shape, self.width, self.dim)
        self.generator_ = Generator(self.dim, self.width, image_shape)
        self.discriminator_ = JointDiscriminator(image_shape, self.width, self.dim)

    def fit(self, images: np.ndarray) -> BiGANEncoder:
        """Train on images (N, H, W, C) uint8."""
        self._remember_input(images)
        device, generator = setup_torch(self.seed, self.device, self.threads)
        self._build(self.input_shape_)
        nets = (self.encoder_, self.generator_, self.discriminator_)
        for net in nets:
            net.to(device).train()
        eg_params = [*self.encoder_.parameters(), *self.generator_.parameters()]
        d_params = list(self.discriminator_.parameters())
        eg_opt = torch.optim.Adam(eg_params, lr=self.lr, betas=(0.5, 0.999))
        d_opt = torch.optim.Adam(d_params, lr=self.lr, betas=(0.5, 0.999))
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
            d_opt.zero_grad()
            eg_opt.zero_grad()
            # Simultaneous updates (as in ALI): each loss only reaches its own player's parameters.
            d_loss.backward(inputs=d_params, retain_graph=True)
            eg_loss.backward(inputs=eg_params)
            d_opt.step()
            eg_opt.step()
            return d_loss.item()

        self.recon_errors_: list[float] = []
        self.latent_errors_: list[float] = []

        def on_epoch(epoch: int, loss: float) -> None:
            recon, latent = self._probe(probe_images, probe_codes)
            self.recon_errors_.append(recon)
            self.latent_errors_.append(latent)

        def load_extra(saved: dict) -> None:
            self.recon_errors_ = [float(x) for x in saved["recon_errors"]]
            self.latent_errors_ = [float(x) for x in saved["latent_errors"]]

        state = TrainingState(
            {"encoder": self.encoder_, "generator": self.generator_, "discriminator": self.discriminator_,
             "eg_opt": eg_opt, "d_opt": d_opt}, generator,
            lambda: {"recon_errors": list(self.recon_errors_), "latent_errors": list(self.latent_errors_)}, load_extra)
        self.losses_ = train_epochs(step, len(images), self.epochs, self.batch_size, rng, "bigan", on_epoch,
                                    state=state)
        for net in nets:
            net.eval()
        codes = embed_in_batches(self.encoder_, images, device=device).astype(np.float64)
        self.code_mean_ = codes.mean(axis=0).astype(np.float32)
        self.code_scale_ = (1.0 / np.maximum(codes.std(axis=0), 1e-6)).astype(np.float32)
        return self

    def _prior(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """(batch, dim) codes from the prior N(0, I)."""
        return torch.randn(batch, self.dim, generator=generator)

    def _probe(self, x, z) -> tuple[float, float]:
        """(per-pixel MSE of G(E(x)) vs x, per-unit MSE of E(G(z)) vs z) with every net in eval mode."""

        nets = (self.encoder_, self.generator_, self.discriminator_)
        for net in nets:
            net.eval()
        with torch.no_grad():
            recon = (self.generator_(self.encoder_(x)) - x).pow(2).mean().item()
            latent = (self.encoder_(self.generator_(z)) - z).pow(2).mean().item()
        for net in nets:
            net.train()
        return recon, latent

    def transform(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, C) uint8 -> (N, dim) float32: (E(x) - code_mean_) * code_scale_."""
        self._check_input(images)
        device = next(self.encoder_.parameters()).device
        codes = embed_in_batches(self.encoder_, images, device=device)
        return ((codes - self.code_mean_) * self.code_scale_).astype(np.float32)

    def get_state(self) -> dict[str, np.ndarray]:
        return {
            **module_state(self.encoder_, "encoder."),
            **module_state(self.generator_, "generator."),
            **module_state(self.discriminator_, "discriminator."),
            "code_mean": self.code_mean_,
            "code_scale": self.code_scale_,
            "input_shape": np.asarray(self.input_shape_, dtype=np.int64),
        }

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self.input_shape_ = tuple(int(s) for s in state["input_shape"])
        self._build(self.input_shape_)
        load_module_state(self.encoder_, state, "encoder.", "bigan encoder")
        load_module_state(self.generator_, state, "generator.", "bigan encoder")
        load_module_state(self.discriminator_, state, "discriminator.", "bigan encoder")
        self.code_mean_ = np.asarray(state["code_mean"], dtype=np.float32)
        self.code_scale_ = np.asarray(state["code_scale"], dtype=np.float32)
        if self.code_mean_.shape != (self.dim,) or self.code_scale_.shape != (self.dim,):
            raise CactusError("bigan encoder: stored standardisation does not match --dim")
        for net in (self.encoder_, self.generator_, self.discriminator_):
            net.eval()
