"""InfoGAN learns on real Omniglot: its codes become recoverable, its trunk features beat chance at kNN."""

from pathlib import Path

import numpy as np
import pytest

OMNIGLOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"


def omniglot_subset(train_images: int, test_classes: int):
    """(train images (n, 28, 28, 1) uint8, test images, test labels) from the real split."""
    from cactus.data import load_dataset

    if not OMNIGLOT.exists():
        pytest.skip(f"no Omniglot at {OMNIGLOT}")
    ds = load_dataset(f"omniglot:{OMNIGLOT}")
    rng = np.random.default_rng(0)
    train = ds.images[rng.choice(ds.indices(0), train_images, replace=False)]
    test_rows = ds.indices(2)
    labels = ds.true_labels()[test_rows]
    keep = np.isin(labels, rng.choice(np.unique(labels), test_classes, replace=False))
    return train, ds.images[test_rows[keep]], labels[keep]


@pytest.mark.slow
def test_infogan_learns_on_omniglot():
    import torch

    from cactus.baselines import evaluate_embedding
    from embeddings.infogan import InfoGANEncoder

    torch.set_num_threads(1)
    train, test, labels = omniglot_subset(3000, 40)
    encoder = InfoGANEncoder(quick=True, epochs=5, seed=0).fit(train)

    # The information loss (code cross-entropy + continuous error) falls: Q recovers G's codes.
    assert encoder.losses_[-1] < encoder.losses_[0] - 0.05
    assert all(np.isfinite(encoder.d_losses_))
    embeddings = encoder.transform(test)
    assert embeddings.shape[0] == len(test) and embeddings.dtype == np.float32
    result = evaluate_embedding(embeddings, labels, "knn", ways=5, shots=1, n_tasks=200, seed=0)
    assert result["accuracy"] > 30.0  # chance is 20%
