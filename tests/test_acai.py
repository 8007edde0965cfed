"""ACAI learns on real Omniglot: the reconstruction error falls and its latent beats chance at kNN."""

import numpy as np
import pytest

from tests.conftest import omniglot_subset


@pytest.mark.slow
def test_acai_learns_on_omniglot():
    import torch

    from cactus.evaluation.baselines import evaluate_embedding
    from embeddings.acai import ACAIEncoder

    torch.set_num_threads(1)
    train, test, labels = omniglot_subset(1500, 40)
    encoder = ACAIEncoder(quick=True, epochs=3, seed=0).fit(train)

    assert encoder.losses_[-1] < 0.8 * encoder.losses_[0]
    assert len(encoder.critic_losses_) == 3 and all(np.isfinite(encoder.critic_losses_))
    embeddings = encoder.transform(test)
    assert embeddings.shape == (len(test), 256)
    result = evaluate_embedding(embeddings, labels, "knn", ways=5, shots=1, n_tasks=200, seed=0)
    assert result["accuracy"] > 30.0  # chance is 20%
