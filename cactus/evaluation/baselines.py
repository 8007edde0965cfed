"""Few-shot learners that work directly on an embedding (no meta-learning).

Each takes support embeddings (T, N*K, D) with labels (N*K,) and query embeddings (T, N*Q, D)
and returns predicted labels (T, N*Q). Used by ``cactus evaluate --learner knn|linear|mlp|
ridge|cluster-matching`` and by encoder benchmarks.
"""

from __future__ import annotations

import numpy as np

from cactus.core.errors import CactusError

EMBEDDING_LEARNERS = ("knn", "linear", "mlp", "ridge", "cluster-matching")


def predict_knn(support: np.ndarray, support_labels: np.ndarray, query: np.ndarray) -> np.ndarray:
    """1-nearest neighbour by Euclidean distance. Shapes (T, S, D), (S,), (T, Q, D) -> (T, Q)."""
    distances = (
        (query**2).sum(-1)[:, :, None]
        - 2 * np.einsum("tqd,tsd->tqs", query, support)
        + (support**2).sum(-1)[:, None, :]
    )
    return support_labels[distances.argmin(axis=2)]


def predict_ridge(
    support: np.ndarray, support_labels: np.ndarray, query: np.ndarray, ways: int, alpha: float = 1.0
) -> np.ndarray:
    """Closed-form ridge regression from features to one-hot labels (Metz et al. 2019 readout).

    Features are centred and scaled to unit norm per task; W = X^T (X X^T + alpha I)^-1 Y.
    """
    mean = support.mean(axis=1, keepdims=True)
    x_s = _unit(support - mean)
    x_q = _unit(query - mean)
    targets = np.eye(ways, dtype=np.float64)[support_labels]
    gram = np.einsum("tsd,tud->tsu", x_s, x_s) + alpha * np.eye(x_s.shape[1])
    dual = np.linalg.solve(gram, np.broadcast_to(targets, (len(x_s), *targets.shape)))
    scores = np.einsum("tqd,tsd,tsc->tqc", x_q, x_s, dual)
    return scores.argmax(axis=2)


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def predict_linear(support: np.ndarray, support_labels: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Logistic regression (scikit-learn, C = 1, at most 200 L-BFGS iterations) fitted per task.

    Shapes (T, S, D), (S,), (T, Q, D) -> (T, Q). On unnormalised embeddings L-BFGS may stop at the
    iteration cap; that is part of the baseline's definition, so scikit-learn's warning is silenced
    (it would print thousands of times, once per task).
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    predictions = np.empty(query.shape[:2], dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for t in range(len(support)):
            model = LogisticRegression(C=1.0, max_iter=200).fit(support[t], support_labels)
            predictions[t] = model.predict(query[t])
    return predictions


def predict_mlp(
    support: np.ndarray, support_labels: np.ndarray, query: np.ndarray, seed: int, hidden: int = 128,
    steps: int = 100,
) -> np.ndarray:
    """One hidden layer of ReLU units with dropout 0.5, Adam, full-batch steps; all T tasks trained at once.

    Shapes (T, S, D), (S,), (T, Q, D) -> (T, Q); each task has its own weights (batched matmuls).
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(support, dtype=torch.float32)
    tasks, _, dim = x.shape
    ways = int(support_labels.max()) + 1
    y = torch.as_tensor(support_labels).expand(tasks, -1)

    def uniform(*shape: int, fan_in: int) -> torch.Tensor:
        bound = 1 / fan_in**0.5
        return ((torch.rand(*shape, generator=generator) * 2 - 1) * bound).requires_grad_()

    w1, b1 = uniform(tasks, dim, hidden, fan_in=dim), uniform(tasks, 1, hidden, fan_in=dim)
    w2, b2 = uniform(tasks, hidden, ways, fan_in=hidden), uniform(tasks, 1, ways, fan_in=hidden)
    optimiser = torch.optim.Adam([w1, b1, w2, b2], lr=1e-2)
    for _ in range(steps):
        keep = (torch.rand(tasks, x.shape[1], hidden, generator=generator) > 0.5).float() * 2
        logits = (torch.relu(x @ w1 + b1) * keep) @ w2 + b2
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()) * tasks
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        q = torch.as_tensor(query, dtype=torch.float32)
        return (torch.relu(q @ w1 + b1) @ w2 + b2).argmax(-1).numpy()


def predict_cluster_matching(
    support_clusters: np.ndarray, support_labels: np.ndarray, query_clusters: np.ndarray, seed: int
) -> np.ndarray:
    """Label each query with the support label sharing its k-means cluster; random if none does.

    support_clusters (T, S) and query_clusters (T, Q) are cluster ids under one partition.
    """
    rng = np.random.default_rng(seed)
    ways = int(support_labels.max()) + 1
    predictions = rng.integers(ways, size=query_clusters.shape)
    for t in range(len(query_clusters)):
        lookup = {}
        for cluster, label in zip(support_clusters[t], support_labels, strict=False):
            lookup.setdefault(int(cluster), []).append(int(label))
        for j, cluster in enumerate(query_clusters[t]):
            if int(cluster) in lookup:
                predictions[t, j] = rng.choice(lookup[int(cluster)])
    return predictions


#: Bytes of gathered task embeddings per chunk: 1000 tasks of 50-shot 15-query 5-way on 42x42x3 raw pixels
#: would gather 6.9 GB at once.
CHUNK_BYTES = 256 * 2**20


def task_chunks(n_tasks: int, images_per_task: int, embeddings: np.ndarray) -> list[slice]:
    """Slices of the task axis whose gathered embeddings stay near :data:`CHUNK_BYTES` (one slice when
    all tasks fit, as for every low-dimensional embedding)."""
    per_task = images_per_task * embeddings.shape[1] * embeddings.dtype.itemsize
    size = max(1, min(n_tasks, CHUNK_BYTES // max(per_task, 1)))
    return [slice(start, start + size) for start in range(0, n_tasks, size)]


def _predict(learner: str, support: np.ndarray, s_labels: np.ndarray, query: np.ndarray, ways: int,
             seed: int) -> np.ndarray:
    """One chunk of tasks: support (T, S, D), query (T, Q, D) -> predicted labels (T, Q)."""
    if learner == "knn":
        return predict_knn(support, s_labels, query)
    if learner == "ridge":
        return predict_ridge(support, s_labels, query, ways)
    if learner == "linear":
        return predict_linear(support, s_labels, query)
    return predict_mlp(support, s_labels, query, seed)


def accuracy_interval(per_task: np.ndarray) -> tuple[float, float]:
    """Mean of per-task accuracies (T,) in % and the half-width of its 95% normal interval."""
    per_task = np.asarray(per_task, dtype=np.float64)
    half = 1.96 * per_task.std(ddof=1) / np.sqrt(len(per_task)) if len(per_task) > 1 else float("nan")
    return float(per_task.mean()), float(half)


def evaluate_embedding(
    embeddings: np.ndarray,
    labels: np.ndarray,
    learner: str = "knn",
    ways: int = 5,
    shots: int = 1,
    queries: int = 5,
    n_tasks: int = 1000,
    seed: int = 0,
) -> dict:
    """Few-shot accuracy of an embedding learner on true-label tasks.

    embeddings: (M, D) float of the evaluation images; labels: (M,) their true class ids.
    Returns {"accuracy": %, "ci95": %, "tasks": T, ...}.
    """
    from cactus.task_sampling import sample_tasks

    if learner not in EMBEDDING_LEARNERS or learner == "cluster-matching":
        raise CactusError(f"--learner {learner!r}: expected one of knn, linear, mlp, ridge here")
    tasks = sample_tasks(labels[None], np.arange(len(labels)), ways, shots, queries, n_tasks, seed, "test split")
    s_labels = tasks.support_labels()
    predicted = np.concatenate([
        _predict(learner, embeddings[tasks.support[part]], s_labels, embeddings[tasks.query[part]], ways, seed)
        for part in task_chunks(n_tasks, tasks.support.shape[1] + tasks.query.shape[1], embeddings)
    ])
    mean, half = accuracy_interval((predicted == tasks.query_labels()[None]).mean(axis=1) * 100)
    return {"learner": learner, "ways": ways, "shots": shots, "queries": queries,
            "tasks": n_tasks, "accuracy": mean, "ci95": half}
