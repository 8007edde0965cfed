"""Evaluation: embedding baselines, cluster matching, Lake's one-shot runs, presets."""

from __future__ import annotations

import numpy as np
import pytest

from cactus.core.errors import CactusError
from cactus.stages.cluster import run_cluster
from cactus.stages.common import DataRef
from cactus.stages.embed import run_embed
from cactus.stages.evaluate import run_evaluate
from tests.conftest import OMNIGLOT, needs_omniglot, run_cli


@pytest.fixture(scope="module")
def digits_artifacts(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    run_embed(out / "e.h5", DataRef("digits"), "pca", {"dim": 16})
    run_cluster(out / "c.h5", out / "e.h5", clusters=30, partitions=2, min_cluster_size=2)
    return out


def test_embedding_learners_are_scored_on_the_same_tasks_above_chance(digits_artifacts):
    scores = {}
    for learner in ("knn", "linear", "ridge", "mlp"):
        report = run_evaluate(digits_artifacts / "e.h5", learner, [5], [1], num_tasks=60, device="cpu")
        (result,) = report["results"]
        assert result["learner"] == learner and result["tasks"] == 60
        scores[learner] = result["accuracy"]
    assert min(scores.values()) > 40  # 5-way chance is 20%
    again = run_evaluate(digits_artifacts / "e.h5", "knn", [5], [1], num_tasks=60)
    assert again["results"][0]["accuracy"] == scores["knn"]


def test_cluster_matching_uses_the_partition_and_needs_its_embedding(digits_artifacts):
    report = run_evaluate(digits_artifacts / "c.h5", "cluster-matching", [5], [1, 5], num_tasks=100,
                          embeddings_path=digits_artifacts / "e.h5")
    one, five = (r["accuracy"] for r in report["results"])
    assert 20 < one < five  # more shots cover more clusters
    with pytest.raises(CactusError, match="also give --embeddings"):
        run_evaluate(digits_artifacts / "c.h5", "cluster-matching", [5], [1], num_tasks=10)
    run_embed(digits_artifacts / "other.h5", DataRef("digits"), "pca", {"dim": 8})
    with pytest.raises(CactusError, match="not the embedding"):
        run_evaluate(digits_artifacts / "c.h5", "cluster-matching", [5], [1], num_tasks=10,
                     embeddings_path=digits_artifacts / "other.h5")


def test_wrong_learner_for_the_artifact_is_refused(digits_artifacts):
    with pytest.raises(CactusError, match="an embedding artifact takes"):
        run_evaluate(digits_artifacts / "e.h5", "protonets")
    with pytest.raises(CactusError, match="a partition artifact takes cluster-matching"):
        run_evaluate(digits_artifacts / "c.h5", "knn")


@needs_omniglot
def test_lake_runs_are_parsed_and_scored_per_run(tmp_path):
    from cactus.evaluation.lake_runs import load_lake_runs

    runs = load_lake_runs(OMNIGLOT / "one_shot_classification_all_runs.zip", 28)
    assert len(runs) == 20
    for run in runs:
        assert run.support.shape == (20, 28, 28, 1) and run.query.shape == (20, 28, 28, 1)
        assert sorted(run.query_labels) == list(range(20))  # each class is queried once
    ref = DataRef(f"omniglot:{OMNIGLOT}", split="lake")
    run_embed(tmp_path / "lake.h5", ref, "pca", {"dim": 32})
    report = run_evaluate(tmp_path / "lake.h5", "knn", benchmark="omniglot-lake-runs")
    assert set(report["per_run_error"]) == {f"run{r:02d}" for r in range(1, 21)}
    assert 0 <= report["error"] < 90  # chance error is 95%
    assert report["error"] == pytest.approx(np.mean(list(report["per_run_error"].values())))


@needs_omniglot
def test_lake_runs_refuse_a_learner_that_saw_the_evaluation_alphabets(omniglot, tmp_path):
    run_embed(tmp_path / "default.h5", DataRef(f"omniglot:{OMNIGLOT}"), "pca", {"dim": 16})
    with pytest.raises(CactusError, match="train on --split lake"):
        run_evaluate(tmp_path / "default.h5", "knn", benchmark="omniglot-lake-runs")


def test_presets_fill_what_the_user_left_out_and_budgets_scale_iterations():
    from cactus.stages.presets import preset_values

    paper, cpu = preset_values("cactus-omniglot", "paper"), preset_values("cactus-omniglot", "cpu")
    assert paper["iterations"] == 30000 and cpu["iterations"] < paper["iterations"]
    assert (paper["clusters"], paper["partitions"], paper["ways"], paper["algo"]) == (500, 100, 20, "maml")
    with pytest.raises(CactusError, match="--preset 'nope'"):
        preset_values("nope", "cpu")
    result = run_cli("run", "--preset", "nope")
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0 and "--preset" in result.stderr


@pytest.mark.parametrize("learner", ["knn", "ridge", "linear", "mlp"])
def test_embedding_learners_score_the_same_in_task_chunks(learner, monkeypatch):
    """Wide embeddings (raw pixels of photos) are scored a chunk of tasks at a time, with the same result."""
    from cactus.evaluation import baselines

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(12), 20)
    embeddings = (rng.normal(size=(240, 48)) + labels[:, None] * 0.3).astype(np.float32)
    whole = baselines.evaluate_embedding(embeddings, labels, learner, ways=5, shots=2, queries=3, n_tasks=40)
    per_task = 5 * (2 + 3) * 48 * 4
    monkeypatch.setattr(baselines, "CHUNK_BYTES", per_task * 7)  # chunks of 7 tasks
    assert len(baselines.task_chunks(40, 25, embeddings)) == 6
    chunked = baselines.evaluate_embedding(embeddings, labels, learner, ways=5, shots=2, queries=3, n_tasks=40)
    if learner == "mlp":  # each chunk restarts the seeded initialisation: close, not equal
        assert abs(chunked["accuracy"] - whole["accuracy"]) < 10
    else:
        assert chunked == whole


def test_task_chunks_bound_the_gathered_embeddings_of_wide_data():
    from cactus.evaluation.baselines import CHUNK_BYTES, task_chunks

    pixels = np.empty((10, 42 * 42 * 3), dtype=np.float32)  # only its width and dtype matter
    chunks = task_chunks(1000, 5 * (50 + 15), pixels)
    per_task = 5 * (50 + 15) * pixels.shape[1] * 4
    assert max(c.stop - c.start for c in chunks) * per_task <= CHUNK_BYTES
    assert chunks[0].start == 0 and chunks[-1].stop >= 1000 and len(task_chunks(1000, 10, np.empty((1, 64)))) == 1
