"""InfoGAN (Chen, Duan, Houthooft, Schulman, Sutskever, Abbeel 2016).

The generator reads noise plus structured codes (one categorical, a few continuous); an
auxiliary head Q, sharing the discriminator's trunk, must recover the codes from generated
images, which maximises a lower bound on the mutual information between codes and images. The
shared trunk thus learns features that carry the codes' factors of variation. The embedding is
the trunk's last conv stage (its final stride-2 conv, before the activation), flattened:
4 * width * h * w values (1024 for 28x28 images at width 16). On Omniglot that layer beat the
trunk's (dim,) linear features at every epoch measured (after 3 quick epochs, kNN 5-way
1-shot / 5-shot 58.5% / 74.1% against 51.0% / 63.6%); both get worse when training goes on
and the trunk specialises in the 10-way code (8 epochs: 37.8% / 47.2% for the linear features).
``losses_`` tracks the information loss (cross-entropy of the categorical code plus the weighted
squared error of the continuous ones): it falls as the codes become recoverable.

Two stabilisers keep the generator from collapsing to one image on Omniglot (which it did within
a few dozen steps with the plain non-saturating loss, leaving the codes unrecoverable): the
generator matches the trunk's mean features on real images (feature matching, Salimans et al.
2016; ``feature_matching=False`` gives the paper's loss), and the real/fake head also sees the
batch's feature spread (minibatch standard deviation, Karras et al. 2018).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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

QUICK_EPOCHS = 3
FULL_EPOCHS = 3
CONTINUOUS_WEIGHT = 0.5  # the continuous codes' squared error = a fixed-variance Gaussian NLL


class InfoDiscriminator(nn.Module):
    """Shared trunk with a real/fake head and a Q head.

    (B, C, H, W) -> features (B, dim) pre-activation, real/fake logits (B,),
    categorical logits (B, categories), continuous code means (B, continuous).
    """

    def __init__(self, image_shape: tuple[int, int, int], width: int, dim: int, categories: int, continuous: int):
        super().__init__()
        self.categories = categories
        self.trunk = ConvTrunk(image_shape, width, dim)
        self.real_head = nn.Linear(dim + 1, 1)
        self.q_head = nn.Sequential(nn.Linear(dim, 128), nn.LeakyReLU(0.2), nn.Linear(128, categories + continuous))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.trunk(images)
        hidden = F.leaky_relu(features, 0.2)
        q = self.q_head(hidden)
        # Minibatch spread (Karras et al. 2018): a collapsed batch of fakes has none, so D sees collapse.
        spread = hidden.std(0).mean() if len(hidden) > 1 else hidden.new_zeros(())
        logits = self.real_head(torch.cat([hidden, spread.expand(len(hidden), 1)], dim=1)).squeeze(1)
        return features, logits, q[:, : self.categories], q[:, self.categories :]


class InfoGANEncoder(Encoder):
    """InfoGAN; the embedding is the shared trunk's last conv stage, flattened (``dim`` sizes its linear layer).

    Learned: generator_, discriminator_ (torch modules), input_shape_, losses_ (mean information
    loss per epoch), d_losses_ (mean real/fake discriminator loss per epoch).
    """

    name = "infogan"
    not_data_parallel = ("its losses couple the rows of a batch (minibatch spread, feature matching of batch means, "
                         "batch-norm generator)")

    def __init__(
        self,
        dim: int = 256,
        epochs: int | None = None,
        batch_size: int = 64,
        lr: float = 2e-4,
        seed: int = 0,
        width: int | None = None,
        noise: int = 62,
        categories: int = 10,
        continuous: int = 2,
        info_weight: float = 1.0,
        feature_matching: bool = True,
        quick: bool = False,
        device: str = "auto",
        threads: int | None = None,
    ) -> None:
        epochs = epochs if epochs is not None else (QUICK_EPOCHS if quick else FULL_EPOCHS)
        width = width if width is not None else (16 if quick else 32)
        check_options(
            dim=dim, epochs=epochs, batch_size=batch_size, lr=lr, width=width, noise=noise, categories=categories
        )
        super().__init__(
            dim=dim, seed=seed, epochs=epochs, batch_size=batch_size, lr=lr, width=width, noise=noise,
            categories=categories, continuous=continuous, info_weight=info_weight,
            feature_matching=feature_matching, quick=quick, device=device,
        )
        self.epochs, self.batch_size, self.lr, self.width = epochs, batch_size, lr, width
        self.noise, self.categories, self.continuous, self.info_weight = noise, categories, continuous, info_weight
        self.feature_matching, self.quick, self.device, self.threads = feature_matching, quick, device, threads

    def _build(self, image_shape: tuple[int, int, int]) -> None:
        code_dim = self.noise + self.categories + self.continuous
        self.generator_ = Generator(code_dim, self.width, image_shape)
        self.discriminator_ = InfoDiscriminator(image_shape, self.width, self.dim, self.categories, self.continuous)

    def _sample_codes(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(generator input (B, noise + categories + continuous), category ids (B,), continuous codes (B, c))."""
        noise = torch.randn(batch, self.noise, generator=generator)
        category = torch.randint(self.categories, (batch,), generator=generator)
        continuous = torch.rand(batch, self.continuous, generator=generator) * 2 - 1
        code = torch.cat([noise, F.one_hot(category, self.categories).float(), continuous], dim=1)
        return code, category, continuous

    def fit(self, images: np.ndarray) -> InfoGANEncoder:
        """Train on images (N, H, W, C) uint8."""
        self._remember_input(images)
        device, generator = setup_torch(self.seed, self.device, self.threads)
        self._build(self.input_shape_)
        for net in (self.generator_, self.discriminator_):
            net.to(device).train()
        g_params = list(self.generator_.parameters())
        d_params = list(self.discriminator_.parameters())
        g_opt = torch.optim.Adam(g_params, lr=self.lr, betas=(0.5, 0.999))
        d_opt = torch.optim.Adam(d_params, lr=self.lr, betas=(0.5, 0.999))
        d_sums: list[float] = []

        def step(indices: np.ndarray) -> float:
            x = to_tensor(images[indices], device)
            code, category, continuous = (t.to(device) for t in self._sample_codes(len(x), generator))
            fake = self.generator_(code)
            real_features, real_logit, _, _ = self.discriminator_(x)
            fake_features, fake_logit, category_logits, continuous_mean = self.discriminator_(fake)
            info = F.cross_entropy(category_logits, category)
            if self.continuous:
                info = info + CONTINUOUS_WEIGHT * (continuous_mean - continuous).pow(2).sum(1).mean()
            adversarial = F.softplus(-real_logit).mean() + F.softplus(fake_logit).mean()
            d_loss = adversarial + self.info_weight * info
            if self.feature_matching:
                # Salimans et al. 2016: match the trunk's mean features on real images instead of fooling D.
                g_adv = (fake_features.mean(0) - real_features.detach().mean(0)).pow(2).mean()
            else:
                g_adv = F.softplus(-fake_logit).mean()
            g_loss = g_adv + self.info_weight * info
            d_opt.zero_grad()
            g_opt.zero_grad()
            # Both players minimise the information loss; each loss only reaches its player's parameters.
            d_loss.backward(inputs=d_params, retain_graph=True)
            g_loss.backward(inputs=g_params)
            d_opt.step()
            g_opt.step()
            d_sums.append(adversarial.item())
            return info.item()

        self.d_losses_: list[float] = []

        def on_epoch(epoch: int, loss: float) -> None:
            self.d_losses_.append(float(np.mean(d_sums)) if d_sums else float("nan"))
            d_sums.clear()

        rng = np.random.default_rng(self.seed)
        def load_extra(saved: dict) -> None:
            d_sums[:] = [float(x) for x in saved["d_sums"]]
            self.d_losses_ = [float(x) for x in saved["d_losses"]]

        state = TrainingState(
            {"generator": self.generator_, "discriminator": self.discriminator_, "g_opt": g_opt, "d_opt": d_opt},
            generator, lambda: {"d_sums": list(d_sums), "d_losses": list(self.d_losses_)}, load_extra)
        self.losses_ = train_epochs(step, len(images), self.epochs, self.batch_size, rng, "infogan", on_epoch,
                                    state=state)
        for net in (self.generator_, self.discriminator_):
            net.eval()
        return self

    def transform(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, C) uint8 -> (N, 4 * width * h * w) float32: the trunk's last conv stage, pre-activation."""
        self._check_input(images)
        device = next(self.discriminator_.parameters()).device
        encoder = self.discriminator_.trunk.conv[0]
        return embed_in_batches(lambda x: encoder.last_stage(x).flatten(1), images, device=device)

    def get_state(self) -> dict[str, np.ndarray]:
        return {
            **module_state(self.generator_, "generator."),
            **module_state(self.discriminator_, "discriminator."),
            "input_shape": np.asarray(self.input_shape_, dtype=np.int64),
        }

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self.input_shape_ = tuple(int(s) for s in state["input_shape"])
        self._build(self.input_shape_)
        load_module_state(self.generator_, state, "generator.", "infogan encoder")
        load_module_state(self.discriminator_, state, "discriminator.", "infogan encoder")
        for net in (self.generator_, self.discriminator_):
            net.eval()
