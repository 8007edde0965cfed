"""``cactus meta``: meta-train ProtoNets or MAML."""

from __future__ import annotations

from pathlib import Path

import click

from cactus.cli.options import data_options, data_ref, device_options, force_option, json_option, with_options
from cactus.cli.output import emit
from cactus.core.errors import CactusError


def meta_learner_options(function):
    return with_options([
        click.option("--algo", type=click.Choice(["protonets", "maml"]), default="protonets", show_default=True),
        click.option("--filters", type=int, default=None, help="Conv filters [protonets 64, maml 32]."),
        click.option("--downsample", type=click.Choice(["pool", "stride"]), default=None,
                     help="Max pool or strided conv [protonets pool, maml stride]."),
        click.option("--meta-lr", type=float, default=1e-3, show_default=True),
        click.option("--inner-steps", type=int, default=None, help="MAML inner steps in training [5]."),
        click.option("--test-inner-steps", type=int, default=None, help="MAML inner steps at test [50]."),
        click.option("--inner-lr", type=float, default=None, help="MAML inner learning rate [0.05]."),
        click.option("--first-order", is_flag=True, default=None, help="MAML: first-order approximation."),
        click.option("--learn-inner-lr", is_flag=True, default=None, help="MAML: Meta-SGD per-parameter inner lr."),
        click.option("--iterations", type=int, default=2000, show_default=True),
        click.option("--meta-batch", type=int, default=None, help="Tasks per meta-update [protonets 1, maml 8]."),
        click.option("--init-from", type=click.Path(path_type=Path), default=None,
                     help="ProtoNets: start from the conv backbone of this embed artifact's encoder "
                     "(contrastive, deepcluster) and fine-tune it."),
    ])(function)


LEARNER_KEYS = ("filters", "downsample", "meta_lr", "inner_steps", "test_inner_steps", "inner_lr", "first_order",
                "learn_inner_lr", "init_from")


@click.command()
@click.argument("tasks_file", metavar="TASKS", type=click.Path(path_type=Path), required=False)
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Learner artifact to write.")
@meta_learner_options
@click.option("--tasks-from", type=click.Choice(["partitions", "labels"]), default="partitions", show_default=True,
              help="labels = SUPERVISED oracle on true-label tasks of the meta-train classes.")
@data_options
@click.option("--ways", type=int, default=5, show_default=True, help="Oracle only: task ways.")
@click.option("--shots", type=int, default=1, show_default=True, help="Oracle only: task shots.")
@click.option("--queries", type=int, default=5, show_default=True, help="Oracle only: queries per class.")
@click.option("--num-tasks", type=int, default=10000, show_default=True, help="Oracle only: tasks to sample.")
@click.option("--validation", type=click.Choice(["pseudo", "labels", "none"]), default="pseudo", show_default=True,
              help="Validation curve on held-out pseudo-tasks or true-label tasks of the validation classes.")
@click.option("--validate-every", type=int, default=500, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@with_options(device_options)
@click.option("--resume", is_flag=True, help="Continue from the checkpoint beside --out.")
@click.option("--checkpoint-every", type=float, default=300.0, show_default=True, help="Seconds between checkpoints.")
@click.option("--task-chunk", type=click.IntRange(min=1), default=None,
              help="MAML: run the meta-batch this many tasks at a time (same gradient, less memory, slower).")
@click.option("--query-chunk", type=click.IntRange(min=1), default=None,
              help="MAML: score the query sets this many tasks at a time (same gradient; fewer use less "
                   "memory)  [default: 2 on a CPU, all at once on a GPU]")
@click.option("--recompute", is_flag=True,
              help="MAML, second order: keep one inner step's graph at a time, rebuilding each in the backward "
                   "pass (same gradient, less memory, slower).")
@force_option
@json_option
def meta(tasks_file, out, algo, iterations, meta_batch, tasks_from, data, image_size, split, split_seed, ways, shots,
         queries, num_tasks, validation, validate_every, seed, device, threads, resume, checkpoint_every, task_chunk,
         query_chunk, recompute, force, as_json, **learner_options):
    """Meta-train ProtoNets or MAML on pseudo-tasks (or on true labels: the supervised oracle).

    Under `torchrun --nproc-per-node N` (or `srun` with N tasks) the N processes split each
    meta-batch (--meta-batch a multiple of N) and average their gradients: gloo on CPU, nccl on GPU.
    """
    from cactus.stages.meta import run_meta

    oracle = None
    if tasks_from == "labels":
        if tasks_file is not None:
            raise CactusError("--tasks-from labels: give --data instead of a TASKS artifact")
        oracle = {"data": data_ref(data, image_size, split, split_seed), "ways": ways, "shots": shots,
                  "queries": queries, "num_tasks": num_tasks}
    options = {k: learner_options[k] for k in LEARNER_KEYS if learner_options.get(k) is not None}
    meta_batch = meta_batch or (8 if algo == "maml" else 1)
    from cactus.core import distributed

    try:
        result = run_meta(out, tasks_file, algo, options, iterations, meta_batch, seed, device, threads, validation,
                          100, validate_every, resume, checkpoint_every, force, oracle,
                          {"task_chunk": task_chunk, "query_chunk": query_chunk, "recompute": recompute or None})
    finally:
        distributed.teardown()  # under torchrun / srun; a no-op otherwise
    if result.summary.get("rank"):  # ranks > 0 of a distributed run: rank 0 reports
        return
    emit(result.as_dict(), as_json, None if result.skipped else f"wrote {out}")
