"""Partitions, task sampling and the rule that labels stay out of training."""

from __future__ import annotations

import numpy as np
import pytest

from cactus.clustering.partitions import DROPPED, KMeans, one_partition, partition_scales, partitions
from cactus.core.errors import CactusError
from cactus.task_sampling import sample_tasks


@pytest.fixture(scope="module")
def omniglot_pca(omniglot):
    from embeddings.pca import PCAEncoder

    rows = omniglot.indices(0)[:4000]
    return rows, PCAEncoder(dim=32).fit(omniglot.images[rows]).transform(omniglot.images[rows])


def test_partition_zero_clusters_the_raw_embedding_and_the_others_rescaled(omniglot_pca):
    _, x = omniglot_pca
    assert np.array_equal(partition_scales(0, 0, 32), np.ones(32, np.float32))
    scales = partition_scales(0, 3, 32)
    assert scales.min() >= 0 and scales.max() < 1 and len(np.unique(scales)) == 32
    labels = partitions(x, range(3), n_clusters=50, seed=0)
    assert labels.shape == (3, 4000) and labels.dtype == np.int32
    raw, _ = one_partition(x, 0, 50, 0, 2, 2)
    assert np.array_equal(raw, labels[0])
    assert not np.array_equal(labels[1], labels[2])


def test_partitions_are_deterministic_and_any_subset_matches(omniglot_pca):
    _, x = omniglot_pca
    full = partitions(x, range(4), 40, seed=7)
    assert np.array_equal(full, partitions(x, range(4), 40, seed=7))
    assert np.array_equal(full[2:], partitions(x, [2, 3], 40, seed=7))


def test_small_clusters_are_dropped_and_hopeless_partitions_refused(omniglot_pca):
    _, x = omniglot_pca
    labels, _ = one_partition(x, 0, 200, 0, min_cluster_size=25, min_clusters=2)
    sizes = np.bincount(labels[labels != DROPPED])
    assert (labels == DROPPED).any()
    assert sizes[sizes > 0].min() >= 25
    with pytest.raises(CactusError, match="fewer than 190 clusters"):
        one_partition(x, 0, 200, 0, min_cluster_size=25, min_clusters=190)


@pytest.mark.parametrize("engine", ["relaxed", "faiss"])
def test_kmeans_inertia_is_close_to_scikit_learn(omniglot_pca, engine):
    from sklearn.cluster import KMeans as SkKMeans

    _, x = omniglot_pca
    ours = KMeans(50, random_state=0, engine=engine).fit(x).inertia_
    theirs = SkKMeans(50, n_init=1, random_state=0).fit(x).inertia_
    assert abs(ours / theirs - 1) < 0.03


def test_tasks_are_class_major_and_consistent_with_their_partition():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 30, size=(4, 600)).astype(np.int32)
    labels[1, :] = DROPPED  # a partition with nothing usable is never drawn
    rows = np.arange(600) * 3 + 1  # dataset indices differ from row positions
    tasks = sample_tasks(labels, rows, ways=5, shots=2, queries=3, n_tasks=300, seed=0)
    assert tasks.support.shape == (300, 10) and tasks.query.shape == (300, 15)
    assert tasks.support.dtype == np.int32 and 1 not in set(tasks.partition)
    for t in range(300):
        pseudo = labels[tasks.partition[t]]
        s = pseudo[(tasks.support[t] - 1) // 3].reshape(5, 2)
        q = pseudo[(tasks.query[t] - 1) // 3].reshape(5, 3)
        assert (s == s[:, :1]).all() and (q == s[:, :1]).all()  # one cluster per class
        assert len(np.unique(s[:, 0])) == 5  # five different clusters
        members = np.concatenate([tasks.support[t], tasks.query[t]])
        assert len(np.unique(members)) == 25  # no image twice
    again = sample_tasks(labels, rows, 5, 2, 3, 300, seed=0)
    assert np.array_equal(again.support, tasks.support)


def test_impossible_ways_is_a_clear_error():
    labels = np.repeat(np.arange(4), 10)[None].astype(np.int32)
    with pytest.raises(CactusError, match="--ways 5: no partition has 5 classes .* the best has 4"):
        sample_tasks(labels, np.arange(40), ways=5, shots=1, queries=5, n_tasks=10)
    with pytest.raises(CactusError, match="the best has 0"):
        sample_tasks(labels, np.arange(40), ways=2, shots=5, queries=6, n_tasks=10)


def test_training_stages_never_read_true_labels(tmp_path, monkeypatch):
    """embed -> cluster -> tasks -> meta must run with the labels locked away."""
    from cactus.datasets.dataset import Dataset
    from cactus.stages.cluster import run_cluster
    from cactus.stages.common import DataRef
    from cactus.stages.embed import run_embed
    from cactus.stages.meta import run_meta
    from cactus.stages.tasks import run_tasks

    def forbidden(self):
        raise AssertionError("a training stage read the true labels")

    monkeypatch.setattr(Dataset, "true_labels", forbidden)
    ref = DataRef("digits")
    run_embed(tmp_path / "e.h5", ref, "pca", {"dim": 16})
    run_cluster(tmp_path / "c.h5", tmp_path / "e.h5", clusters=20, partitions=3, min_cluster_size=6)
    run_tasks(tmp_path / "t.h5", tmp_path / "c.h5", ways=5, shots=1, queries=5, num_tasks=50)
    result = run_meta(tmp_path / "m.h5", tmp_path / "t.h5", "protonets", {"filters": 8}, iterations=5,
                      validation="pseudo", device="cpu")
    assert result.path.exists()
    from cactus.stages.evaluate import run_evaluate

    with pytest.raises(AssertionError, match="read the true labels"):  # the lock works: evaluate needs labels
        run_evaluate(tmp_path / "m.h5", num_tasks=10, device="cpu")
