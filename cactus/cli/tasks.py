"""``cactus tasks``: pseudo-tasks from the partitions."""

from __future__ import annotations

from pathlib import Path

import click

from cactus.cli.options import force_option, json_option
from cactus.cli.output import emit


@click.command()
@click.argument("partitions", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Tasks artifact to write.")
@click.option("--ways", "-n", type=int, default=5, show_default=True)
@click.option("--shots", "-k", type=int, default=1, show_default=True)
@click.option("--queries", "-q", type=int, default=5, show_default=True)
@click.option("--num-tasks", type=int, default=10000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@force_option
@json_option
def tasks(partitions, out, ways, shots, queries, num_tasks, seed, force, as_json):
    """Sample N-way K-shot pseudo-tasks from the partitions."""
    from cactus.stages.tasks import run_tasks

    result = run_tasks(out, partitions, ways, shots, queries, num_tasks, seed, force)
    emit(result.as_dict(), as_json, None if result.skipped else f"wrote {out}")
