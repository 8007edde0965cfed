"""``cactus meta``: meta-train ProtoNets or MAML on the tasks (or, as the oracle, on true labels)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from cactus.core import log
from cactus.core.errors import CactusError
from cactus.core.store import write_artifact
from cactus.core.training import checkpoint_path
from cactus.datasets.dataset import TRAIN, VAL
from cactus.stages.common import DataRef, StageResult, check_fingerprint, data_of, torch_threads, up_to_date
from cactus.stages.configs import MetaConfig
from cactus.stages.options import configure, key_config

STAGE = "meta"


def run_meta(out: Path, tasks_file: Path | None, algo: str | MetaConfig = "protonets",
             options: dict[str, Any] | None = None, *, force: bool = False, **fields) -> StageResult:
    """Python API: :func:`meta_stage` with the settings given by field name.

    ``algo`` (or a whole :class:`MetaConfig`), ``options``: the learner's hyper-parameters
    ({"filters": 8, "init_from": EMBED_ARTIFACT, ...}) and ``fields`` the other settings
    (``iterations=5, validation="none", device="cpu"``), all named as in :class:`MetaConfig`.
    """
    if isinstance(algo, MetaConfig):
        return meta_stage(out, tasks_file, configure(MetaConfig, algo, fields), (options or {}).get("init_from"),
                          force)
    options = dict(options or {})
    init_from = options.pop("init_from", None)
    return meta_stage(out, tasks_file, configure(MetaConfig, None, {"algo": algo, **options, **fields}), init_from,
                      force)


def meta_stage(out: Path, tasks_file: Path | None, settings: MetaConfig, init_from: Path | None = None,
               force: bool = False) -> StageResult:
    """Meta-train and write /weights/*, /curve/* and /validation/*.

    ``settings.tasks_from == "labels"`` (the supervised oracle) replaces ``tasks_file`` with
    true-label tasks of the meta-train classes of ``settings.data``. ``init_from``: an embed
    artifact whose encoder ProtoNets start from. The key hashes the learner's config (from the
    options declared key="learner"), the options declared key=True (``meta_batch`` resolved) and,
    for the oracle, its task shape; ``task_chunk`` / ``query_chunk`` / ``recompute`` (MAML's memory
    knobs, same meta-gradient), ``device``, ``threads`` and the checkpoint options are not part of it.
    """
    from cactus.core import distributed
    from cactus.core.device import resolve_device
    from cactus.learners.registry import build_learner, learner_config
    from cactus.learners.train import TaskBatches, accuracy_on, meta_train
    from cactus.stages.tasks import load_tasks
    from cactus.task_sampling import sample_tasks

    started = time.monotonic()
    settings = replace(settings, meta_batch=settings.batch)
    algo, iterations, meta_batch, seed = settings.algo, settings.iterations, settings.meta_batch, settings.seed
    device, threads, validation = settings.device, settings.threads, settings.validation
    validation_tasks, validate_every = settings.validation_tasks, settings.validate_every
    oracle = None
    if settings.tasks_from == "labels":
        if tasks_file is not None:
            raise CactusError("--tasks-from labels: give --data instead of a TASKS artifact")
        oracle = {"data": settings.data, **key_config(settings, "oracle")}
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
    options = settings.learner_options()
    encoder_state = None
    if init_from is not None:
        from cactus.core.store import read_artifact

        embedded = read_artifact(init_from, stage="embed")
        check_fingerprint(embedded, dataset)
        options["encoder"] = embedded.config["encoder"]
        encoder_state = embedded.group("encoder")
        inputs = [*inputs, embedded.key]
    learner_cfg = learner_config(algo, tasks.ways, options)
    config = {"learner": learner_cfg, **key_config(settings)}
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

    learner = build_learner(learner_cfg, dataset.image_shape, torch_device, seed, encoder_state, settings.chunks())
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
    curves = meta_train(learner, batches, train_ids, iterations, meta_batch, checkpoint_path(out), key, settings.resume,
                        settings.checkpoint_every, validate, validate_every, world=world)
    train_seconds = time.monotonic() - train_start
    if not world.is_main:  # rank 0 writes the artifact
        return StageResult(STAGE, out, key, False, time.monotonic() - started, {"rank": world.rank})
    arrays = {f"weights/{k}": v for k, v in learner.weights().items()}
    diverged = sorted(name for name, value in arrays.items() if not np.isfinite(value).all())
    if diverged:
        raise CactusError(f"meta: training diverged ({diverged[0]} holds NaN or infinite weights); lower --meta-lr "
                          f"(or MAML's --inner-lr); {out} was not written")
    arrays.update(curves.arrays())
    attrs.update({"train_seconds": train_seconds, "image_shape": list(dataset.image_shape),
                  "torch_threads": torch_threads()})
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
