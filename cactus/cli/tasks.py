"""``cactus tasks``: pseudo-tasks from the partitions."""

from __future__ import annotations

from pathlib import Path

import click

from cactus.cli.options import force_option, json_option, stage_options
from cactus.cli.output import emit
from cactus.stages.configs import TasksConfig


@click.command()
@click.argument("partitions", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Tasks artifact to write.")
@stage_options(TasksConfig)
@force_option
@json_option
def tasks(partitions, out, force, as_json, **values):
    """Sample N-way K-shot pseudo-tasks from the partitions."""
    from cactus.stages.options import build
    from cactus.stages.tasks import run_tasks

    result = run_tasks(out, partitions, build(TasksConfig, values), force=force)
    emit(result.as_dict(), as_json, None if result.skipped else f"wrote {out}")
