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

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embeddings.image_nets import ConvTrunk, Generator
from embeddings.torch_encoder import EpochMeans, TorchEncoder, simultaneous_step
from embeddings.train_utils import to_tensor

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


@dataclass(eq=False, kw_only=True)
class InfoGANEncoder(TorchEncoder):
    """InfoGAN; the embedding is the shared trunk's last conv stage, flattened (``dim`` sizes its linear layer).

    ``width``: channels of the first conv stage (None: 16 under ``quick``, else 32); ``noise``,
    ``categories``, ``continuous``: the generator's code (noise units, classes of the categorical
    code, continuous codes); ``info_weight``: weight of the information loss; ``feature_matching``:
    the generator's stabiliser (see the module docstring). Adam at ``lr`` with beta1 0.5.
    Learned: generator_, discriminator_ (torch modules), input_shape_, losses_ (mean information
    loss per epoch), d_losses_ (mean real/fake discriminator loss per epoch).
    """

    name = "infogan"
    not_data_parallel = ("its losses couple the rows of a batch (minibatch spread, feature matching of batch means, "
                         "batch-norm generator)")
    learned_modules = {"generator_": "generator.", "discriminator_": "discriminator."}
    quick_epochs, full_epochs = 3, 3
    positive_params = ("dim", "epochs", "batch_size", "lr", "width", "noise", "categories")

    dim: int = 256
    lr: float = 2e-4
    width: int | None = None
    noise: int = 62
    categories: int = 10
    continuous: int = 2
    info_weight: float = 1.0
    feature_matching: bool = True

    def _build(self, image_shape: tuple[int, int, int]) -> None:
        width = self.width if self.width is not None else (16 if self.quick else 32)
        code_dim = self.noise + self.categories + self.continuous
        self.generator_ = Generator(code_dim, width, image_shape)
        self.discriminator_ = InfoDiscriminator(image_shape, width, self.dim, self.categories, self.continuous)

    def _sample_codes(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(generator input (B, noise + categories + continuous), category ids (B,), continuous codes (B, c))."""
        noise = torch.randn(batch, self.noise, generator=generator)
        category = torch.randint(self.categories, (batch,), generator=generator)
        continuous = torch.rand(batch, self.continuous, generator=generator) * 2 - 1
        code = torch.cat([noise, F.one_hot(category, self.categories).float(), continuous], dim=1)
        return code, category, continuous

    def fit(self, images: np.ndarray) -> InfoGANEncoder:
        """Train on images (N, H, W, C) uint8."""
        generator = self._start_fit(images)
        device = self.device_
        g_opt = torch.optim.Adam(self.generator_.parameters(), lr=self.lr, betas=(0.5, 0.999))
        d_opt = torch.optim.Adam(self.discriminator_.parameters(), lr=self.lr, betas=(0.5, 0.999))
        adversarial_losses = EpochMeans("d")

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
            simultaneous_step((d_loss, d_opt), (g_loss, g_opt))  # both players minimise the information loss
            adversarial_losses.values.append(adversarial.item())
            return info.item()

        self._train(step, len(images), generator, {"g_opt": g_opt, "d_opt": d_opt},
                    on_epoch=adversarial_losses.end_epoch, extra=(adversarial_losses.save, adversarial_losses.load))
        self.d_losses_ = adversarial_losses.means
        return self

    def _embed(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 4 * width * h * w): the trunk's last conv stage, pre-activation, flattened."""
        return self.discriminator_.trunk.conv[0].last_stage(batch).flatten(1)
