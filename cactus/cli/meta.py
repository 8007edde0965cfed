"""``cactus meta``: meta-train ProtoNets or MAML."""

from __future__ import annotations

from pathlib import Path

import click

from cactus.cli.options import force_option, json_option, stage_options
from cactus.cli.output import emit
from cactus.stages.configs import MetaConfig

ORACLE_ONLY = "Oracle only (--tasks-from labels): "


@click.command()
@click.argument("tasks_file", metavar="TASKS", type=click.Path(path_type=Path), required=False)
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Learner artifact to write.")
@click.option("--init-from", type=click.Path(path_type=Path), default=None,
              help="ProtoNets: start from the conv backbone of this embed artifact's encoder "
              "(contrastive, deepcluster) and fine-tune it.")
@stage_options(MetaConfig, help_prefix={"data": ORACLE_ONLY, "oracle": ORACLE_ONLY})
@force_option
@json_option
def meta(tasks_file, out, init_from, force, as_json, **values):
    """Meta-train ProtoNets or MAML on pseudo-tasks (or on true labels: the supervised oracle).

    Under `torchrun --nproc-per-node N` (or `srun` with N tasks) the N processes split each
    meta-batch (--meta-batch a multiple of N) and average their gradients: gloo on CPU, nccl on GPU.
    """
    from cactus.core import distributed
    from cactus.stages.meta import meta_stage
    from cactus.stages.options import build

    config = build(MetaConfig, values)
    try:
        result = meta_stage(out, tasks_file, config, init_from, force)
    except BaseException:
        distributed.teardown()  # under torchrun / srun; a no-op otherwise
        raise
    distributed.teardown(wait=True)
    if result.summary.get("rank"):  # ranks > 0 of a distributed run: rank 0 reports
        return
    emit(result.as_dict(), as_json, None if result.skipped else f"wrote {out}")
