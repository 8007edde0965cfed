"""Few-shot evaluation on tasks built from the true labels of the held-out (test) classes.

Every learner is scored on the same tasks for the same seed: accuracy over ``num_tasks``
tasks with the half-width of its 95% normal confidence interval.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from cactus.baselines import EMBEDDING_LEARNERS, accuracy_interval, evaluate_embedding
from cactus.data import TEST
from cactus.errors import CactusError
from cactus.stages.common import check_fingerprint, data_of
from cactus.store import read_artifact
from cactus.tasks import sample_tasks

META_LEARNERS = ("protonets", "maml")
LEARNERS = META_LEARNERS + EMBEDDING_LEARNERS


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
) -> dict:
    """Evaluate a meta artifact (its own learner) or an embed artifact (an embedding learner)."""
    started = time.monotonic()
    artifact = read_artifact(artifact_path)
    if artifact.stage == "meta":
        algo = artifact.config.get("learner", {}).get("algo")
        if learner not in (None, algo):
            raise CactusError(f"--learner {learner}: {artifact_path} holds a {algo} learner")
        learner = algo
    elif artifact.stage == "embed":
        learner = learner or "knn"
        if learner not in EMBEDDING_LEARNERS or learner == "cluster-matching":
            raise CactusError(f"--learner {learner}: an embedding artifact takes knn, linear, mlp or ridge")
    else:
        raise CactusError(f"{artifact_path}: cannot evaluate a '{artifact.stage}' artifact; give a meta or embed one")
    dataset = data_of(artifact).load()
    check_fingerprint(artifact, dataset)
    rows = dataset.indices(TEST)
    if len(rows) == 0:
        raise CactusError(f"--data {dataset.spec}: the split has no test classes to evaluate on")
    labels = dataset.true_labels()[rows]
    results = []
    for n_way in ways:
        for k_shot in shots:
            if artifact.stage == "embed":
                embeddings = artifact.array("embeddings")[rows]
                result = evaluate_embedding(embeddings, labels, learner, n_way, k_shot, queries, num_tasks, seed)
            else:
                result = _evaluate_meta(artifact, dataset, rows, labels, n_way, k_shot, queries, num_tasks, seed,
                                        device, threads)
            results.append(result)
    supervised = bool(artifact.attrs.get("supervised", False))
    return {"artifact": str(artifact_path), "learner": learner, "supervised": supervised,
            "data": dataset.spec, "results": results, "seconds": round(time.monotonic() - started, 2)}


def _evaluate_meta(artifact, dataset, rows, labels, ways, shots, queries, num_tasks, seed, device, threads) -> dict:
    from cactus.device import resolve_device
    from cactus.meta.registry import build_learner
    from cactus.meta.train import TaskBatches, accuracy_on

    config = artifact.config["learner"]
    if config["algo"] == "maml" and ways > int(config["ways"]):
        raise CactusError(f"--ways {ways}: this MAML learner was meta-trained with a {config['ways']}-way head")
    torch_device = resolve_device(device, threads)
    learner = build_learner(config, dataset.image_shape, torch_device, seed)
    try:
        learner.load_weights(artifact.group("weights"))
    except (RuntimeError, KeyError, ValueError) as error:
        raise CactusError(f"{artifact.path}: stored weights do not fit the learner ({error})") from None
    tasks = sample_tasks(labels[None], rows, ways, shots, queries, num_tasks, seed, "test split")
    per_task = accuracy_on(learner, TaskBatches(dataset.images, tasks, torch_device), np.arange(num_tasks))
    mean, half = accuracy_interval(per_task[:, None] / 100.0)
    return {"learner": config["algo"], "ways": ways, "shots": shots, "queries": queries, "tasks": num_tasks,
            "accuracy": mean, "ci95": half}
