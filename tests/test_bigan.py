"""BiGAN learns on real Omniglot: G(E(x)) reconstructs better as it trains, E(x) beats chance at kNN."""

import numpy as np
import pytest

from tests.conftest import omniglot_subset


@pytest.mark.slow
def test_bigan_learns_on_omniglot():
    import torch

    from cactus.evaluation.baselines import evaluate_embedding
    from embeddings.bigan import BiGANEncoder

    torch.set_num_threads(1)
    train, test, labels = omniglot_subset(1500, 40)
    encoder = BiGANEncoder(quick=True, epochs=4, seed=0).fit(train)

    assert all(np.isfinite(encoder.losses_))
    # The encoder and the generator become closer to inverses: G(E(x)) moves towards x.
    assert encoder.recon_errors_[-1] < 0.95 * encoder.recon_errors_[0]
    assert all(np.isfinite(encoder.latent_errors_))
    embeddings = encoder.transform(test)
    assert embeddings.shape == (len(test), encoder.dim)
    result = evaluate_embedding(embeddings, labels, "knn", ways=5, shots=1, n_tasks=200, seed=0)
    assert result["accuracy"] > 30.0  # chance is 20%
