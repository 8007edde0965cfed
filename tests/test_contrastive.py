"""Contrastive learning learns on real Omniglot: the NT-Xent loss falls and kNN beats chance."""

import numpy as np
import pytest

from tests.conftest import omniglot_subset


def test_nt_xent_is_low_for_matching_views_and_high_for_random_ones():
    import torch

    from embeddings.contrastive import nt_xent

    z = torch.nn.functional.normalize(torch.randn(8, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    matched = nt_xent(torch.cat([z, z]), temperature=0.1)
    shuffled = nt_xent(torch.cat([z, z[torch.randperm(8, generator=torch.Generator().manual_seed(1))]]), 0.1)
    assert matched < 0.5 < shuffled
    # 2B - 1 candidates and nothing learned: the loss is log(2B - 1)
    assert torch.isclose(nt_xent(torch.ones(16, 4), 0.5), torch.log(torch.tensor(15.0)))


def test_augmentations_keep_shape_range_and_follow_the_generator():
    import torch

    from embeddings.augment import augment

    x = torch.rand(6, 1, 28, 28)
    a = augment(x, torch.Generator().manual_seed(3))
    b = augment(x, torch.Generator().manual_seed(3))
    c = augment(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    colour = augment(torch.rand(4, 3, 16, 16), torch.Generator().manual_seed(0))
    assert colour.shape == (4, 3, 16, 16) and 0 <= colour.min() and colour.max() <= 1


@pytest.mark.slow
def test_contrastive_learns_on_omniglot():
    import torch

    from cactus.evaluation.baselines import evaluate_embedding
    from embeddings.contrastive import ContrastiveEncoder

    torch.set_num_threads(1)
    train, test, labels = omniglot_subset(1500, 40)
    encoder = ContrastiveEncoder(width=32, dim=64, epochs=6, batch_size=128, seed=0, device="cpu").fit(train)

    assert len(encoder.losses_) == 6 and np.isfinite(encoder.losses_).all()
    assert encoder.losses_[-1] < 0.8 * encoder.losses_[0]
    embeddings = encoder.transform(test)
    assert embeddings.shape == (len(test), 64)
    result = evaluate_embedding(embeddings, labels, "knn", ways=5, shots=1, n_tasks=200, seed=0)
    assert result["accuracy"] > 35.0  # chance is 20%


@pytest.mark.parametrize("channels, drawn, expected", [(3, False, "natural_augment"), (1, False, "natural_augment"),
                                                       (1, True, "stroke_augment"), (3, True, "stroke_augment")])
def test_fit_uses_the_augmentations_that_suit_the_pixels(monkeypatch, channels, drawn, expected):
    """Photos train with the photo set (crop, flip, jitter, grey), line drawings with the stroke set,
    whatever their channels."""
    import embeddings.augment as augment_module
    from embeddings.contrastive import ContrastiveEncoder

    calls: list[str] = []
    for name in ("natural_augment", "stroke_augment"):
        original = getattr(augment_module, name)
        monkeypatch.setattr(augment_module, name, lambda x, g, c, side=None, _name=name, _f=original:
                            calls.append(_name) or _f(x, g, c, side))
    images = np.random.default_rng(0).integers(0, 256, (16, 12, 12, channels), dtype=np.uint8)
    if drawn:  # ink on paper
        images = np.where(images > 200, 255, 0).astype(np.uint8)
    ContrastiveEncoder(width=4, dim=8, proj_dim=4, epochs=1, batch_size=8, device="cpu", threads=1).fit(images)
    assert calls and set(calls) == {expected}
