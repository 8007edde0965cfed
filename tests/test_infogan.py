"""InfoGAN learns on real Omniglot: its codes become recoverable, its trunk features beat chance at kNN."""

import numpy as np
import pytest

from tests.conftest import omniglot_subset


@pytest.mark.slow
def test_infogan_learns_on_omniglot():
    import torch

    from cactus.evaluation.baselines import evaluate_embedding
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
