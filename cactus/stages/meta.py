"""``cactus meta``: meta-train ProtoNets or MAML on the tasks (or, as the oracle, on true labels)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from cactus.core import log
from cactus.core.errors import CactusError
from cactus.core.store import write_artifact
from cactus.core.training import checkpoint_path
from cactus.datasets.dataset import TRAIN, VAL
from cactus.stages.common import DataRef, StageResult, check_fingerprint, data_of, up_to_date

STAGE = "meta"
VALIDATIONS = ("pseudo", "labels", "none")


def run_meta(
    out: Path,
    tasks_file: Path | None,
    algo: str = "protonets",
    options: dict[str, Any] | None = None,
    iterations: int = 2000,
    meta_batch: int = 1,
    seed: int = 0,
    device: str = "auto",
    threads: int | None = None,
    validation: str = "pseudo",
    validation_tasks: int = 100,
    validate_every: int = 500,
    resume: bool = False,
    checkpoint_every_s: float = 300.0,
    force: bool = False,
    oracle: dict[str, Any] | None = None,
    chunks: dict[str, int | bool] | None = None,
) -> StageResult:
    """Meta-train and write /weights/*, /curve/* and /validation/*.

    ``oracle`` (supervised, true labels): {"data": DataRef, "ways", "shots", "queries", "num_tasks"}
    replaces ``tasks_file`` with true-label tasks of the meta-train classes. ``chunks`` (MAML only:
    ``task_chunk`` / ``query_chunk`` / ``recompute``) trades speed for memory with the same meta-gradient, so it is
    not part of the artifact's key.
    """
    from cactus.core import distributed
    from cactus.core.device import resolve_device
    from cactus.learners.registry import build_learner, learner_config
    from cactus.learners.train import TaskBatches, accuracy_on, meta_train
    from cactus.stages.tasks import load_tasks
    from cactus.task_sampling import sample_tasks

    started = time.monotonic()
    if validation not in VALIDATIONS:
        raise CactusError(f"--validation {validation!r}: expected one of {', '.join(VALIDATIONS)}")
    for name, value in (("--iterations", iterations), ("--meta-batch", meta_batch)):
        if value < 1:
            raise CactusError(f"{name} {value}: must be at least 1")
    if oracle is not None:
        data: DataRef = oracle["data"]
        dataset = data.load()
        inputs = [dataset.fingerprint()]
        train_rows = dataset.indices(TRAIN)
        tasks = sample_tasks(dataset.true_labels()[train_rows][None], train_rows, oracle["ways"], oracle["shots"],
                             oracle["queries"], oracle["num_tasks"], seed, "meta-train split")
        tasks_info = {k: oracle[k] for k in ("ways", "shots", "queries", "num_tasks")}
        attrs = {"data": data.as_dict(), "data_fingerprint": dataset.fingerprint(), "supervised": True}
    else:
        if tasks_file is None:
            raise CactusError("cactus meta: give a tasks artifact (TASKS) or --tasks-from labels")
        from cactus.core.store import read_artifact

        header = read_artifact(tasks_file, stage="tasks", arrays=False)
        data = data_of(header)
        dataset = data.load()
        tasks_artifact, tasks = load_tasks(tasks_file, len(dataset))
        check_fingerprint(tasks_artifact, dataset)
        inputs = [tasks_artifact.key]
        tasks_info = None
        attrs = {k: tasks_artifact.attrs[k] for k in ("data", "data_fingerprint") if k in tasks_artifact.attrs}
        attrs["supervised"] = False
    options = dict(options or {})
    encoder_state = None
    if options.get("init_from") is not None:
        from cactus.core.store import read_artifact

        embedded = read_artifact(options.pop("init_from"), stage="embed")
        check_fingerprint(embedded, dataset)
        options["encoder"] = embedded.config["encoder"]
        encoder_state = embedded.group("encoder")
        inputs = [*inputs, embedded.key]
    learner_cfg = learner_config(algo, tasks.ways, options)
    config = {"learner": learner_cfg, "iterations": iterations, "meta_batch": meta_batch, "seed": seed,
              "validation": validation, "validation_tasks": validation_tasks, "validate_every": validate_every,
              "tasks_from": "labels" if oracle is not None else "partitions"}
    if tasks_info:
        config["oracle_tasks"] = tasks_info
    torch_device = resolve_device(device, threads)
    world, torch_device = distributed.setup(torch_device)  # one process unless under torchrun / srun
    if not world.is_main:
        log.set_verbosity(0)
    distributed.split_batch(meta_batch, world)  # refuse an indivisible meta-batch before any work
    key, skipped = up_to_date(STAGE, out, config, inputs, force, lock=world.is_main)
    if world.distributed:
        skipped = distributed.broadcast_flag(skipped)  # rank 0 decides (it holds the lock)
    if skipped:
        return StageResult(STAGE, out, key, True)

    learner = build_learner(learner_cfg, dataset.image_shape, torch_device, seed, encoder_state, chunks)
    batches = TaskBatches(dataset.images, tasks, torch_device)
    train_ids = np.arange(len(tasks))
    validate = None
    if validation == "pseudo":
        held_out = min(validation_tasks, len(tasks) // 10)
        if held_out > 0:
            train_ids, val_ids = train_ids[:-held_out], train_ids[-held_out:]
            validate = lambda: float(accuracy_on(learner, batches, val_ids).mean())  # noqa: E731
    elif validation == "labels":
        validate = _label_validation(dataset, tasks, learner, torch_device, validation_tasks, seed)
    supervised = " (SUPERVISED oracle: true labels)" if oracle is not None else ""
    ranks = f" ({world.size} processes, {meta_batch // world.size} tasks each)" if world.distributed else ""
    log.info(f"meta: {algo} on {len(train_ids)} {tasks.ways}-way {tasks.shots}-shot tasks, "
             f"{iterations} iterations x {meta_batch} tasks on {torch_device}{ranks}{supervised}")
    train_start = time.monotonic()
    curves = meta_train(learner, batches, train_ids, iterations, meta_batch, checkpoint_path(out), key, resume,
                        checkpoint_every_s, validate, validate_every, world=world)
    train_seconds = time.monotonic() - train_start
    if not world.is_main:  # rank 0 writes the artifact
        return StageResult(STAGE, out, key, False, time.monotonic() - started, {"rank": world.rank})
    arrays = {f"weights/{k}": v for k, v in learner.weights().items()}
    arrays.update(curves.arrays())
    attrs.update({"train_seconds": train_seconds, "image_shape": list(dataset.image_shape)})
    key = write_artifact(out, STAGE, config, inputs, arrays, attrs)
    checkpoint_path(out).unlink(missing_ok=True)
    summary = {"algo": algo, "supervised": oracle is not None, "iterations": iterations,
               "train_seconds": round(train_seconds, 1),
               "final_loss": curves.loss[-1] if curves.loss else None,
               "final_validation_accuracy": curves.val_accuracy[-1] if curves.val_accuracy else None}
    return StageResult(STAGE, out, key, False, time.monotonic() - started, summary)


def _label_validation(dataset, tasks, learner, device, n_tasks: int, seed: int):
    """Validation on true-label tasks of the validation classes (only recorded, never trained on)."""
    from cactus.learners.train import TaskBatches, accuracy_on
    from cactus.task_sampling import sample_tasks

    rows = dataset.indices(VAL)
    if len(rows) == 0:
        raise CactusError(f"--validation labels: --data {dataset.spec} has no validation classes")
    val_tasks = sample_tasks(dataset.true_labels()[rows][None], rows, tasks.ways, tasks.shots, tasks.queries,
                             n_tasks, seed + 1, "validation split")
    val_batches = TaskBatches(dataset.images, val_tasks, device)
    ids = np.arange(len(val_tasks))
    return lambda: float(accuracy_on(learner, val_batches, ids).mean())
