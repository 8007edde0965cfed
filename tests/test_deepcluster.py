"""DeepCluster learns on real Omniglot; its pieces (whitening, cluster-uniform sampling) do what they say."""

from pathlib import Path

import numpy as np
import pytest

OMNIGLOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"


def test_pca_whitening_gives_unit_rows_from_decorrelated_unit_variance_axes():
    from embeddings.deepcluster import pca_whitening, whiten

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 6)) @ rng.normal(size=(6, 6)) + 3.0
    mean, components, scale = pca_whitening(x, 4)
    projected = ((x - mean) @ components.T) * scale
    np.testing.assert_allclose(np.cov(projected.T), np.eye(4), atol=1e-3)
    out = whiten(x.astype(np.float32), mean, components, scale)
    assert out.shape == (2000, 4) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_sampling_is_uniform_over_clusters_not_images():
    from embeddings.deepcluster import uniform_over_clusters

    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    drawn = uniform_over_clusters(labels, 30000, np.random.default_rng(0))
    shares = np.bincount(labels[drawn], minlength=3) / len(drawn)
    np.testing.assert_allclose(shares, 1 / 3, atol=0.02)
    assert set(drawn[labels[drawn] == 2]) == set(range(990, 1000))


@pytest.mark.slow
def test_deepcluster_learns_on_omniglot():
    import torch

    from cactus.datasets.dataset import load_dataset
    from cactus.evaluation.baselines import evaluate_embedding
    from embeddings.deepcluster import DeepClusterEncoder

    if not OMNIGLOT.exists():
        pytest.skip(f"no Omniglot at {OMNIGLOT}")
    torch.set_num_threads(1)
    ds = load_dataset(f"omniglot:{OMNIGLOT}", image_size=28)
    rng = np.random.default_rng(0)
    train = ds.images[rng.choice(ds.indices(0), 2000, replace=False)]
    test_rows = ds.indices(2)
    labels = ds.true_labels()[test_rows]
    keep = np.isin(labels, rng.choice(np.unique(labels), 40, replace=False))

    encoder = DeepClusterEncoder(width=32, features=64, dim=32, clusters=100, epochs=6, batch_size=32, lr=0.1,
                                 seed=0, device="cpu").fit(train)
    assert len(encoder.losses_) == 6 and np.isfinite(encoder.losses_).all()
    # with a new head each epoch the first loss is about log(k); later clusters are learnt faster
    assert encoder.losses_[-1] < 0.8 * encoder.losses_[0]
    embeddings = encoder.transform(ds.images[test_rows[keep]])
    assert embeddings.shape == (int(keep.sum()), 32)
    result = evaluate_embedding(embeddings, labels[keep], "knn", ways=5, shots=1, n_tasks=200, seed=0)
    assert result["accuracy"] > 35.0  # chance is 20%


def test_sobel_front_gives_the_grey_images_gradients():
    """A vertical edge in RGB: the x-gradient fires along it, the y-gradient is zero away from the border."""
    import torch

    from embeddings.deepcluster import sobel_module

    x = torch.zeros(1, 3, 6, 6)
    x[:, :, :, 3:] = torch.tensor([0.9, 0.3, 0.6]).view(1, 3, 1, 1)  # grey (mean) 0.6 right of column 3
    out = sobel_module()(x)
    assert out.shape == (1, 2, 6, 6)
    torch.testing.assert_close(out[0, 0, 1:-1, 2], torch.full((4,), -4 * 0.6))
    torch.testing.assert_close(out[0, 1, 1:-1, 1:-1], torch.zeros(4, 4))
    assert not list(sobel_module().state_dict())  # fixed: nothing of it is stored


def _first_conv(module):
    from torch import nn

    return next(m for m in module.modules() if isinstance(m, nn.Conv2d))


def _tiny_fit(images, **options):
    from embeddings.deepcluster import DeepClusterEncoder

    kwargs = {"width": 8, "features": 16, "dim": 8, "epochs": 1, "batch_size": 8, "device": "cpu", "threads": 1}
    return DeepClusterEncoder(**{**kwargs, **options}).fit(images)


def test_rgb_goes_through_sobel_so_colour_alone_changes_nothing():
    """On RGB the net sees only grey gradients: permuting the colour channels keeps the embedding."""
    from embeddings.augment import AugmentConfig, NaturalAugmentConfig
    from embeddings.deepcluster import augment_config

    images = np.random.default_rng(0).integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    encoder = _tiny_fit(images)
    assert type(encoder.backbone_[0]).__name__ == "Sobel"
    assert _first_conv(encoder.backbone_).in_channels == 2  # the first conv takes the two gradients
    np.testing.assert_allclose(encoder.transform(images[:, :, :, ::-1].copy()), encoder.transform(images), atol=1e-5)
    assert isinstance(augment_config(images), NaturalAugmentConfig)
    grey = _tiny_fit(images[..., :1])
    assert _first_conv(grey.backbone_).in_channels == 1 and isinstance(augment_config(images[..., :1]),
                                                                       NaturalAugmentConfig)  # grey photos
    drawings = np.where(images[..., :1] > 200, 255, 0).astype(np.uint8)  # ink on paper
    light = augment_config(drawings)
    assert isinstance(light, AugmentConfig) and light.p_cutout == 0
    assert light.rotation_deg < AugmentConfig().rotation_deg


def test_k_is_capped_by_the_number_of_training_images(tmp_path):
    """32 images: k = 3 (one cluster per 10 images), not the paper's 500; an explicit small k is kept."""
    from embeddings.deepcluster import DeepClusterEncoder

    images = np.random.default_rng(1).integers(0, 256, (32, 12, 12, 3), dtype=np.uint8)
    encoder = _tiny_fit(images)
    assert DeepClusterEncoder().clusters == 500 and encoder.clusters_ == 3
    assert encoder.transform(images).shape == (32, 8)
    assert DeepClusterEncoder(clusters=50).clusters_for(38_400) == 50
    assert DeepClusterEncoder().clusters_for(38_400) == 500 and DeepClusterEncoder().clusters_for(5) == 2
