"""Few-shot evaluation on tasks built from the true labels of the held-out (test) classes.

Every learner is scored on the same tasks for the same seed: accuracy over ``num_tasks``
tasks with the half-width of its 95% normal confidence interval. A meta artifact is evaluated
with its own learner (ProtoNets / MAML); an embed artifact with an embedding learner (knn,
linear, mlp, ridge); a cluster artifact with cluster matching. ``benchmark="omniglot-lake-runs"``
scores Lake et al.'s 20 original 20-way 1-shot runs instead.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from cactus.core.artifact_checks import check_rows
from cactus.core.errors import CactusError
from cactus.core.store import read_artifact, read_rows
from cactus.datasets.dataset import TEST
from cactus.evaluation.baselines import (
    EMBEDDING_LEARNERS,
    accuracy_interval,
    evaluate_embedding,
    predict_cluster_matching,
    predict_knn,
)
from cactus.stages.common import check_fingerprint, data_of
from cactus.stages.configs import EvaluateConfig
from cactus.task_sampling import sample_tasks


def _choose_learner(artifact, learner: str | None) -> str:
    if artifact.stage == "meta":
        algo = artifact.config.get("learner", {}).get("algo")
        if learner not in (None, algo):
            raise CactusError(f"--learner {learner}: {artifact.path} holds a {algo} learner")
        return algo
    if artifact.stage == "embed":
        learner = learner or "knn"
        if learner not in EMBEDDING_LEARNERS or learner == "cluster-matching":
            raise CactusError(f"--learner {learner}: an embedding artifact takes knn, linear, mlp or ridge")
        return learner
    if artifact.stage == "cluster":
        if learner not in (None, "cluster-matching"):
            raise CactusError(f"--learner {learner}: a partition artifact takes cluster-matching")
        return "cluster-matching"
    raise CactusError(f"{artifact.path}: cannot evaluate a '{artifact.stage}' artifact; give a meta, embed or "
                      "cluster one")


def run_evaluate(
    artifact_path: Path,
    learner: str | None = None,
    ways: list[int] = (5,),
    shots: list[int] = (1,),
    queries: int = 5,
    num_tasks: int = 1000,
    seed: int = 0,
    device: str = "auto",
    threads: int | None = None,
    embeddings_path: Path | None = None,
    benchmark: str = "tasks",
    runs_path: Path | None = None,
) -> dict:
    """Python API of :func:`evaluate_stage` (positional, as before the declarations; one setting by default)."""
    settings = EvaluateConfig(learner=learner, ways=tuple(ways), shots=tuple(shots), queries=queries,
                              num_tasks=num_tasks, seed=seed, benchmark=benchmark, device=device, threads=threads)
    return evaluate_stage(artifact_path, settings, embeddings_path, runs_path)


def evaluate_stage(artifact_path: Path, settings: EvaluateConfig, embeddings_path: Path | None = None,
                   runs_path: Path | None = None) -> dict:
    """Evaluate an artifact; returns {"learner", "supervised", "results": [...], ...}.

    ``embeddings_path``: the embed artifact a cluster artifact was made from (cluster-matching);
    ``runs_path``: Lake et al.'s runs for ``benchmark`` "omniglot-lake-runs".
    """
    started = time.monotonic()
    s = settings
    # an embedding is read for its test rows only (_test_embeddings): raw 84x84x3 pixels of 60,000 images are 5 GB
    artifact = read_artifact(artifact_path, unread=("embeddings",))
    learner = _choose_learner(artifact, s.learner)
    if s.readout != "auto" and learner != "protonets":
        raise CactusError(f"--readout {s.readout}: only a ProtoNets learner has a readout ({artifact_path} is "
                          f"evaluated with {learner})")
    dataset = data_of(artifact).load()
    check_fingerprint(artifact, dataset)
    report = {"artifact": str(artifact_path), "learner": learner,
              "supervised": bool(artifact.attrs.get("supervised", False)), "data": dataset.spec}
    if s.benchmark == "omniglot-lake-runs":
        report.update(_lake_runs(artifact, learner, dataset, runs_path, s.device, s.threads, s.seed, s.readout))
    else:
        rows = dataset.indices(TEST)
        if len(rows) == 0:
            raise CactusError(f"--data {dataset.spec}: the split has no test classes to evaluate on")
        labels = dataset.true_labels()[rows]
        test_embeddings = _test_embeddings(artifact, dataset, rows) if artifact.stage == "embed" else None
        report["results"] = [
            _one_setting(artifact, learner, dataset, rows, labels, n_way, k_shot, s.queries, s.num_tasks, s.seed,
                         s.device, s.threads, embeddings_path, test_embeddings, s.readout)
            for n_way in s.ways for k_shot in s.shots
        ]
    report["seconds"] = round(time.monotonic() - started, 2)
    return report


def _test_embeddings(artifact, dataset, rows: np.ndarray) -> np.ndarray:
    """(len(rows), D) embeddings of the test rows (increasing dataset indices), read in slabs."""
    if "embeddings" not in artifact.layout:
        raise CactusError(f"{artifact.path}: embed artifact has no array 'embeddings'")
    if artifact.layout["embeddings"].shape[0] != len(dataset):
        raise CactusError(f"{artifact.path}: embeddings do not cover the {len(dataset)} images")
    return read_rows(artifact, "embeddings", rows)


def _one_setting(artifact, learner, dataset, rows, labels, ways, shots, queries, num_tasks, seed, device, threads,
                 embeddings_path, test_embeddings: np.ndarray | None = None, readout: str = "auto") -> dict:
    if artifact.stage == "embed":
        return evaluate_embedding(test_embeddings, labels, learner, ways, shots, queries, num_tasks, seed)
    tasks = sample_tasks(labels[None], rows, ways, shots, queries, num_tasks, seed, "test split")
    if artifact.stage == "cluster":
        per_task = _cluster_matching(artifact, embeddings_path, tasks, seed)
    else:
        learner_obj, torch_device = _meta_learner(artifact, dataset, ways, device, threads, seed, readout)
        from cactus.learners.train import TaskBatches, accuracy_on

        per_task = accuracy_on(learner_obj, TaskBatches(dataset.images, tasks, torch_device), np.arange(num_tasks))
    mean, half = accuracy_interval(per_task)
    return {"learner": learner, "ways": ways, "shots": shots, "queries": queries, "tasks": num_tasks,
            "accuracy": mean, "ci95": half}


def _meta_learner(artifact, dataset, ways: int, device: str, threads: int | None, seed: int, readout: str = "auto"):
    from cactus.core.device import resolve_device
    from cactus.learners.registry import build_learner

    config = artifact.config["learner"]
    if config["algo"] == "maml" and ways > int(config["ways"]):
        raise CactusError(f"--ways {ways}: this MAML learner was meta-trained with a {config['ways']}-way head")
    torch_device = resolve_device(device, threads)
    weights = artifact.group("weights")
    learner = build_learner(config, dataset.image_shape, torch_device, seed, weights if "encoder" in config else None)
    try:
        learner.load_weights(weights)
    except (RuntimeError, KeyError, ValueError) as error:
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise CactusError(f"{artifact.path}: stored weights do not fit the learner ({first})") from None
    if config["algo"] == "protonets":
        learner.readout = readout
    return learner, torch_device


def _partition_centroids(artifact, embeddings_path: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of every image (N, D) and the centroids (k, D) of partition 0 (the raw embedding)."""
    if embeddings_path is None:
        raise CactusError("--learner cluster-matching: also give --embeddings (the embed artifact clustered)")
    embedded = read_artifact(embeddings_path, stage="embed")
    if embedded.key not in artifact.inputs:
        raise CactusError(f"--embeddings {embeddings_path}: not the embedding {artifact.path} was clustered from")
    embeddings, labels, rows = embedded.array("embeddings"), artifact.array("labels")[0], artifact.array("rows")
    check_rows(artifact.path, rows, len(embeddings))
    kept = labels >= 0
    clusters = np.unique(labels[kept])
    if len(clusters) == 0:
        raise CactusError(f"{artifact.path}: partition 0 keeps no cluster (every row is marked dropped)")
    centroids = np.stack([embeddings[rows[labels == c]].mean(axis=0) for c in clusters])
    return embeddings, centroids


def _cluster_matching(artifact, embeddings_path, tasks, seed: int) -> np.ndarray:
    """Assign every task image to its nearest partition-0 centroid; match queries to support clusters."""
    embeddings, centroids = _partition_centroids(artifact, embeddings_path)
    nearest = lambda idx: predict_knn(centroids[None], np.arange(len(centroids)), embeddings[idx])  # noqa: E731
    support_c = np.concatenate([nearest(tasks.support[i : i + 100]) for i in range(0, len(tasks), 100)])
    query_c = np.concatenate([nearest(tasks.query[i : i + 100]) for i in range(0, len(tasks), 100)])
    predicted = predict_cluster_matching(support_c, tasks.support_labels(), query_c, seed)
    return (predicted == tasks.query_labels()[None]).mean(axis=1) * 100


def _lake_runs(artifact, learner, dataset, runs_path, device, threads, seed, readout: str = "auto") -> dict:
    """Lake et al.'s 20 runs of 20-way 1-shot: error rate per run and overall."""
    from cactus.evaluation.lake_runs import default_runs_path, error_rates, load_lake_runs

    runs_path = runs_path or default_runs_path(dataset.spec)
    if runs_path is None:
        raise CactusError("--benchmark omniglot-lake-runs: give --runs PATH to one_shot_classification_all_runs.zip")
    if "lake" not in dataset.split_rule:
        raise CactusError("--benchmark omniglot-lake-runs: its images are evaluation-alphabet characters; train "
                          "on --split lake so that no test character was seen, unlabelled, in meta-training")
    runs = load_lake_runs(Path(runs_path), dataset.image_shape[0])
    if artifact.stage == "meta":
        import torch

        from cactus.nets import images_to_tensor

        model, torch_device = _meta_learner(artifact, dataset, 20, device, threads, seed, readout)

        def predict(support, support_y, query):
            with torch.no_grad():
                return model.predict(images_to_tensor(support[None], torch_device),
                                     torch.as_tensor(support_y, device=torch_device)[None],
                                     images_to_tensor(query[None], torch_device))[0].cpu().numpy()
    elif artifact.stage == "embed":
        from cactus.stages.embed import load_encoder

        if learner != "knn":
            raise CactusError(f"--learner {learner}: the lake-runs benchmark takes knn for an embedding")
        encoder = load_encoder(artifact)

        def predict(support, support_y, query):
            return predict_knn(encoder.transform(support)[None], support_y, encoder.transform(query)[None])[0]
    else:
        raise CactusError("--benchmark omniglot-lake-runs: give a meta or embed artifact")
    return {"benchmark": "omniglot-lake-runs", "runs": str(runs_path), **error_rates(predict, runs)}
