"""The options of every stage, each declared once: a frozen dataclass per stage.

These declarations drive the stage's command (``cactus embed`` ...), ``cactus run`` (under each
option's ``run_name``), the TOML config file, the artifact key (the fields marked ``key``) and
replay (which rebuilds the dataclass from an artifact's stored config). See
:mod:`cactus.stages.options` for what a declaration holds. Choices are read from the module that
owns them (encoders from ``embeddings.REGISTRY``, splits from ``cactus.datasets.dataset``).

Only options that are settings live here; what a command reads and writes (its input artifact,
``--out``, ``--encoder``, ``--init-from``, ``--embeddings``, ``--runs``, ``--shard``, ``--force``,
``--json``) is the command's own, since in ``cactus run`` those are the stages' files.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from cactus.clustering.partitions import ENGINES
from cactus.evaluation.baselines import EMBEDDING_LEARNERS
from cactus.learners.readout import READOUTS
from cactus.learners.registry import ALGOS
from cactus.stages.common import DataRef
from cactus.stages.options import Checked, group, option

VALIDATIONS = ("pseudo", "labels", "none")
TASK_SOURCES = ("partitions", "labels")
BENCHMARKS = ("tasks", "omniglot-lake-runs")
EVAL_LEARNERS = ALGOS + EMBEDDING_LEARNERS
TRAIN_SIZE_HELP = ("Train on images of this side (the contrastive encoder's views; ProtoNets' task images); the "
                   "embedding and the evaluation stay at the data's resolution.")
#: At most this many tasks are sampled at once (10^7 5-way 6-image tasks already take 1.2 GB of indices).
MAX_TASKS = 10_000_000
#: Tasks per meta-update when --meta-batch is not given (the papers' settings).
META_BATCH_DEFAULT = {"protonets": 1, "maml": 8}


def encoder_names() -> tuple[str, ...]:
    from embeddings import REGISTRY

    return tuple(sorted(REGISTRY))


def seed_option(help: str = "Random seed.", **meta: Any) -> Any:
    return option(0, help, kind=int, low=0, **meta)


def device_option() -> Any:
    return option("auto", "auto | cpu | cuda (or cuda:N).", key=False)


#: More threads than any node has: OpenMP allocates per-thread state up front (10^9 threads asked for 216 GB).
MAX_THREADS = 1024


def threads_option(help: str = "CPU threads for torch.") -> Any:
    return option(None, help, kind=int, low=1, high=MAX_THREADS, key=False)


def resume_option() -> Any:
    return option(False, "Continue training from the checkpoint beside the artifact (OUT.ckpt).", kind=bool,
                  key=False)


def checkpoint_every_option() -> Any:
    return option(300.0, "Seconds between checkpoints of the training (0: at every step).", kind=float, low=0,
                  key=False)


@dataclass(frozen=True)
class EmbedConfig(Checked):
    """``cactus embed``: the dataset and the encoder's parameters (None: the encoder's default).

    The key hashes the dataset reference and the encoder's own ``key_params()`` (its ``__init__``
    arguments less ``device`` / ``threads``), so ``key`` here names that part: "encoder".
    """

    data: DataRef = group(DataRef, key="data")
    method: str = option("pca", "Encoder.", choices=encoder_names, key="encoder")
    dim: int | None = option(None, "Embedding dimension.", kind=int, low=1, key="encoder",
                             default_help="the encoder's; cactus run: 64, at most half the pixels")
    epochs: int | None = option(None, "Encoder training epochs.", kind=int, low=1, key="encoder")
    train_size: int | None = option(None, TRAIN_SIZE_HELP, kind=int, low=4, key="encoder", default_help="the data's")
    batch_size: int | None = option(None, "Encoder mini-batch size.", kind=int, low=1, key="encoder")
    lr: float | None = option(None, "Encoder learning rate.", kind=float, low=0, low_open=True, key="encoder")
    seed: int = seed_option(key="encoder")
    width: int | None = option(None, "Network width (learned-rule: base MLP width).", kind=int, low=1,
                               key="encoder")
    depth: int | None = option(None, "learned-rule: base MLP depth.", kind=int, low=1, key="encoder")
    steps: int | None = option(None, "learned-rule: unsupervised steps.", kind=int, low=1, key="encoder")
    rule: str | None = option(None, "learned-rule: rule artifact [the shipped one].", key="encoder")
    quick: bool = option(False, "The encoder's quick setting (minutes on a CPU).", kind=bool, key="encoder")
    path: str | None = option(None, "load: embeddings you already have (.npy/.npz/.h5, one row per image) or a "
                              "TorchScript encoder.", key="encoder")
    device: str = device_option()
    threads: int | None = threads_option()
    resume: bool = resume_option()
    checkpoint_every: float = checkpoint_every_option()

    def encoder_options(self) -> dict[str, Any]:
        """The encoder's arguments that were given: unset ones (None, a False flag) keep its default.

        ``device`` / ``threads`` choose where a fit runs: passed only to an encoder that takes them.
        """
        names = ("dim", "epochs", "train_size", "batch_size", "lr", "seed", "width", "depth", "steps", "rule", "quick",
                 "path")
        given = {name: getattr(self, name) for name in names if getattr(self, name) not in (None, False)}
        return {**given, **runtime_options(self.method, self.device, self.threads)}


def runtime_options(method: str, device: str, threads: int | None) -> dict[str, Any]:
    """``device`` (unless auto) and ``threads`` (when given) for an encoder whose ``__init__`` takes them."""
    from embeddings import encoder_class

    takes = inspect.signature(encoder_class(method).__init__).parameters
    runtime = {"device": None if device == "auto" else device, "threads": threads}
    return {k: v for k, v in runtime.items() if v is not None and k in takes}


@dataclass(frozen=True)
class ClusterConfig(Checked):
    """``cactus cluster``: P k-means partitions of k clusters each."""

    clusters: int | None = option(None, "Clusters per partition (k).", kind=int, low=2, short=("-k",),
                                  default_help="500, fewer on small data")
    partitions: int = option(100, "Number of partitions P.", kind=int, low=1, short=("-p",))
    min_cluster_size: int = option(2, "Clusters with fewer members are dropped.", kind=int, low=1)
    min_clusters: int | None = option(None, "Redraw a partition with fewer surviving clusters.", kind=int, low=1,
                                      default_help="k / 10, at least 2")
    iterations: int | None = option(None, "k-means iterations.", kind=int, low=1, run_name="kmeans_iterations",
                                    default_help="8 relaxed, 20 faiss")
    engine: str = option("relaxed", "k-means solver: over-relaxed Lloyd (cactus.clustering.kmeans) or faiss's "
                         "Lloyd.", choices=ENGINES)
    threads: int | None = threads_option("Partitions clustered at once [OMP_NUM_THREADS, else every CPU].")
    seed: int = seed_option()


@dataclass(frozen=True)
class TaskShape(Checked):
    """N-way K-shot tasks with Q queries per class: the ``tasks`` stage's and the oracle's."""

    ways: int = option(5, "Classes per task (N; at least 2).", kind=int, low=2, short=("-n",))
    shots: int = option(1, "Support images per class (K).", kind=int, low=1, short=("-k",))
    queries: int = option(5, "Query images per class (Q).", kind=int, low=1, short=("-q",))
    num_tasks: int = option(10000, "Tasks to sample.", kind=int, low=1, high=MAX_TASKS)


@dataclass(frozen=True)
class TasksConfig(Checked):
    """``cactus tasks``: pseudo-tasks sampled from the partitions."""

    shape: TaskShape = group(TaskShape)
    seed: int = seed_option()


@dataclass(frozen=True)
class MetaConfig(Checked):
    """``cactus meta``: the meta-learner, its training, and (``tasks_from`` labels) the supervised oracle.

    key "learner": stored in the learner config (with the defaults of :func:`learner_config`);
    True: stored as it is; "oracle": the oracle's tasks, stored only for ``--tasks-from labels``.
    """

    algo: str = option("protonets", "Meta-learner.", choices=ALGOS, key="learner")
    filters: int | None = option(None, "Conv filters.", kind=int, low=1, key="learner",
                                 default_help="protonets 64, maml 32")
    downsample: str | None = option(None, "Max pool or strided conv.", choices=("pool", "stride"), key="learner",
                                    default_help="protonets pool, maml stride")
    meta_lr: float = option(1e-3, "Meta (outer) learning rate.", kind=float, low=0, low_open=True, key="learner")
    inner_steps: int | None = option(None, "MAML inner steps in training.", kind=int, low=1, key="learner",
                                     default_help="5")
    test_inner_steps: int | None = option(None, "MAML inner steps at test.", kind=int, low=1, key="learner",
                                          default_help="50")
    inner_lr: float | None = option(None, "MAML inner learning rate.", kind=float, low=0, low_open=True,
                                    key="learner", default_help="0.05")
    first_order: bool = option(False, "MAML: first-order approximation.", kind=bool, key="learner")
    learn_inner_lr: bool = option(False, "MAML: Meta-SGD per-parameter inner lr.", kind=bool, key="learner")
    train_size: int | None = option(None, TRAIN_SIZE_HELP, kind=int, low=4, key="learner", default_help="the data's")
    iterations: int = option(2000, "Meta-training iterations.", kind=int, low=1)
    meta_batch: int | None = option(None, "Tasks per meta-update.", kind=int, low=1,
                                    default_help=", ".join(f"{k} {v}" for k, v in META_BATCH_DEFAULT.items()))
    tasks_from: str = option("partitions", "labels = SUPERVISED oracle on true-label tasks of the meta-train "
                             "classes.", choices=TASK_SOURCES)
    data: DataRef = group(DataRef, key="data")
    oracle: TaskShape = group(TaskShape, key="oracle")
    validation: str = option("pseudo", "Validation curve on held-out pseudo-tasks or true-label tasks of the "
                             "validation classes.", choices=VALIDATIONS)
    validation_tasks: int = option(100, "Tasks of the validation curve.", kind=int, low=1)
    validate_every: int = option(500, "Iterations between validations.", kind=int, low=1)
    seed: int = seed_option()
    device: str = device_option()
    threads: int | None = threads_option()
    resume: bool = resume_option()
    checkpoint_every: float = checkpoint_every_option()
    task_chunk: int | None = option(None, "MAML: run the meta-batch this many tasks at a time (same gradient, "
                                    "less memory, slower).", kind=int, low=1, key=False)
    query_chunk: int | None = option(None, "MAML: score the query sets this many tasks at a time (same gradient; "
                                     "fewer use less memory).", kind=int, low=1, key=False,
                                     default_help="2 on a CPU, all at once on a GPU")
    recompute: bool = option(False, "MAML, second order: keep one inner step's graph at a time, rebuilding each "
                             "in the backward pass (same gradient, less memory, slower).", kind=bool, key=False)

    @property
    def batch(self) -> int:
        """--meta-batch, or the algorithm's default."""
        return self.meta_batch or META_BATCH_DEFAULT[self.algo]

    def learner_options(self) -> dict[str, Any]:
        """The learner's given hyper-parameters (None / unset flags keep :func:`learner_config`'s defaults)."""
        names = ("filters", "downsample", "meta_lr", "inner_steps", "test_inner_steps", "inner_lr", "first_order",
                 "learn_inner_lr", "train_size")
        return {n: getattr(self, n) for n in names if getattr(self, n) not in (None, False)}

    def chunks(self) -> dict[str, Any]:
        """MAML's memory knobs (same meta-gradient, not in the key)."""
        return {"task_chunk": self.task_chunk, "query_chunk": self.query_chunk, "recompute": self.recompute or None}


@dataclass(frozen=True)
class EvaluateConfig(Checked):
    """``cactus evaluate``: few-shot accuracy on true-label tasks of the test classes (writes no artifact)."""

    learner: str | None = option(None, "For an embed artifact: knn (default), linear, mlp, ridge; for a cluster "
                                 "artifact: cluster-matching; a meta artifact uses its own learner.",
                                 choices=EVAL_LEARNERS, key=False, run_name="eval_learner")
    ways: tuple[int, ...] = option((5,), "Ways, comma-separated, e.g. 5,20.", kind="ints", low=2, key=False,
                                   run_name="eval_ways")
    shots: tuple[int, ...] = option((1, 5), "Shots, comma-separated, e.g. 1,5.", kind="ints", low=1, key=False,
                                    run_name="eval_shots")
    queries: int = option(5, "Query images per class.", kind=int, low=1, key=False, run_name="eval_queries")
    num_tasks: int = option(1000, "Evaluation tasks per setting.", kind=int, low=1, high=MAX_TASKS, key=False,
                            run_name="eval_tasks")
    seed: int = seed_option("Seed of the evaluation tasks.", key=False)
    readout: str = option("auto", "A ProtoNets learner's readout: prototype (nearest class mean), logistic "
                          "(logistic regression on unit-length features), auto (prototype below 5 shots, logistic "
                          "from 5).", choices=READOUTS, key=False, run_name="eval_readout")
    benchmark: str = option("tasks", "omniglot-lake-runs: Lake et al.'s 20 runs of 20-way 1-shot (train on --split "
                            "lake).", choices=BENCHMARKS, key=False, run_name="eval_benchmark")
    device: str = device_option()
    threads: int | None = threads_option()


#: The stage configs in pipeline order (``cactus run`` lists their options in this order).
STAGE_CONFIGS: dict[str, type] = {"embed": EmbedConfig, "cluster": ClusterConfig, "tasks": TasksConfig,
                                  "meta": MetaConfig, "evaluate": EvaluateConfig}
