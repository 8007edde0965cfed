"""The over-relaxed Lloyd solver (cactus.clustering.kmeans) on real Omniglot embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from cactus.clustering.kmeans import Lloyd, nearest_centres
from cactus.clustering.partitions import partition_scales, partitions


@pytest.fixture(scope="module")
def embedding(omniglot):
    """Omniglot meta-train images 0-5999 as a 32-d PCA embedding, rescaled as partition 1 is."""
    from embeddings.pca import PCAEncoder

    images = omniglot.images[omniglot.indices(0)[:6000]]
    x = PCAEncoder(dim=32).fit(images).transform(images)
    return np.ascontiguousarray(x * partition_scales(0, 1, 32), dtype=np.float32)


def brute_force_labels(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return ((x.astype(np.float64)[:, None] - centres[None]) ** 2).sum(-1).argmin(1)


def test_labels_are_the_nearest_centres_and_inertia_is_their_squared_distance(embedding):
    model = Lloyd(60, n_iter=6, random_state=3).fit(embedding)
    expected = brute_force_labels(embedding, model.cluster_centers_.astype(np.float64))
    assert (model.labels_ == expected).mean() > 0.999  # float32 GEMM vs float64: ties may differ
    exact = ((embedding.astype(np.float64) - model.cluster_centers_[model.labels_]) ** 2).sum()
    assert model.inertia_ == pytest.approx(exact, rel=1e-5)
    assert np.array_equal(model.predict(embedding), model.labels_)


def test_relaxation_beats_plain_lloyd_and_matches_converged_kmeans_plus_plus(embedding):
    from sklearn.cluster import KMeans as SkKMeans

    converged = SkKMeans(100, init="k-means++", n_init=1, random_state=0).fit(embedding).inertia_
    relaxed = [Lloyd(100, n_iter=8, random_state=s).fit(embedding).inertia_ for s in range(3)]
    plain = [Lloyd(100, n_iter=8, relaxation=0.0, random_state=s).fit(embedding).inertia_ for s in range(3)]
    assert all(r < p for r, p in zip(relaxed, plain, strict=True))
    assert np.mean(relaxed) / converged < 1.01


def test_a_relaxation_that_overshoots_is_undone_so_inertia_never_rises(embedding):
    model = Lloyd(80, n_iter=10, relaxation=4.0, random_state=0).fit(embedding)
    history = np.array(model.inertia_history_)
    assert len(history) == 10 and np.all(np.diff(history) <= 1e-6 * history[0])
    assert model.inertia_ <= history[-1] * (1 + 1e-6)


def test_empty_clusters_are_reseeded_not_left_as_nan():
    rng = np.random.default_rng(0)
    x = np.repeat(rng.normal(size=(12, 4)).astype(np.float32), 20, axis=0)  # 12 distinct points, 240 rows
    model = Lloyd(12, n_iter=10, random_state=1).fit(x)
    assert np.isfinite(model.cluster_centers_).all()
    assert len(np.unique(model.labels_)) == 12 and model.inertia_ <= 1e-6 * float((x**2).sum())


def test_nearest_centres_handles_a_partial_last_block():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2500, 8)).astype(np.float32)  # 2 full blocks of 1024 and one of 452
    centres = rng.normal(size=(30, 8)).astype(np.float32)
    assert np.array_equal(nearest_centres(x, centres), brute_force_labels(x, centres.astype(np.float64)))


def test_the_thread_count_changes_speed_not_labels(embedding):
    one = partitions(embedding, range(4), 40, seed=5, threads=1)
    two = partitions(embedding, range(4), 40, seed=5, threads=2)  # two partitions at a time
    assert np.array_equal(one, two)
    alone = partitions(embedding, [2], 40, seed=5, threads=2)  # one partition on two BLAS threads
    assert np.array_equal(alone[0], one[2])


def test_cactus_cluster_records_its_engine_and_refuses_bad_options(tmp_path):
    from click.testing import CliRunner

    from cactus.core.store import read_artifact
    from cactus.stages.common import DataRef
    from cactus.stages.embed import run_embed
    from cli import main

    run_embed(tmp_path / "e.h5", DataRef("digits"), "pca", {"dim": 16})
    runner = CliRunner()
    keys = {}
    for engine, iterations in (("relaxed", 8), ("faiss", 20)):
        out = tmp_path / f"{engine}.h5"
        done = runner.invoke(main, ["cluster", str(tmp_path / "e.h5"), "-o", str(out), "-k", "20", "-p", "2",
                                    "--engine", engine, "--threads", "2"])
        assert done.exit_code == 0, done.output
        artifact = read_artifact(out)
        assert artifact.config["engine"] == engine and artifact.config["iterations"] == iterations
        keys[engine] = artifact.key
    assert keys["relaxed"] != keys["faiss"]  # different labels, so never served from each other's cache
    for option, value in (("--threads", "0"), ("--iterations", "0")):
        bad = tmp_path / "bad.h5"
        refused = runner.invoke(main, ["cluster", str(tmp_path / "e.h5"), "-o", str(bad), option, value])
        assert refused.exit_code == 1 and option in refused.stderr and not bad.exists()


def test_parallel_partitions_stay_within_memory():
    from cactus.clustering.partitions import parallel_partitions

    assert parallel_partitions(threads=16, partitions=100, embedding_bytes=22_000 * 64 * 4) == 16
    assert parallel_partitions(threads=16, partitions=3, embedding_bytes=1 << 20) == 3
    assert parallel_partitions(threads=16, partitions=100, embedding_bytes=1 << 30) == 2  # 2 x 2 x 1 GiB
    assert parallel_partitions(threads=16, partitions=100, embedding_bytes=3 << 30) == 1


def test_the_default_thread_count_follows_omp_num_threads(monkeypatch):
    from cactus.clustering.partitions import available_cpus, default_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    for unset in ("", "0", "two"):
        monkeypatch.setenv("OMP_NUM_THREADS", unset)
        assert default_threads() == available_cpus()
