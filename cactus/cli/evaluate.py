"""``cactus evaluate``: few-shot accuracy on true-label tasks."""

from __future__ import annotations

from pathlib import Path

import click

from cactus.cli.options import device_options, int_list, json_option, with_options
from cactus.cli.output import emit, format_report, write_json


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--learner", default=None,
              type=click.Choice(["protonets", "maml", "knn", "linear", "mlp", "ridge", "cluster-matching"]),
              help="For an embed artifact: knn (default), linear, mlp, ridge; for a cluster artifact: "
              "cluster-matching; a meta artifact uses its own learner.")
@click.option("--embeddings", "embeddings_path", type=click.Path(path_type=Path), default=None,
              help="cluster-matching: the embed artifact that was clustered.")
@click.option("--ways", default="5", show_default=True, callback=int_list, help="Comma-separated, e.g. 5,20.")
@click.option("--shots", default="1,5", show_default=True, callback=int_list, help="Comma-separated, e.g. 1,5.")
@click.option("--queries", type=int, default=5, show_default=True)
@click.option("--num-tasks", type=int, default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the evaluation tasks.")
@click.option("--benchmark", type=click.Choice(["tasks", "omniglot-lake-runs"]), default="tasks", show_default=True,
              help="omniglot-lake-runs: Lake et al.'s 20 runs of 20-way 1-shot (train on --split lake).")
@click.option("--runs", "runs_path", type=click.Path(path_type=Path), default=None,
              help="one_shot_classification_all_runs.zip [beside the Omniglot folder].")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None, help="Also write the report as JSON here.")
@with_options(device_options)
@json_option
def evaluate(artifact, learner, embeddings_path, ways, shots, queries, num_tasks, seed, benchmark, runs_path, out,
             device, threads, as_json):
    """Few-shot accuracy (95% interval) on true-label tasks of the test classes."""
    from cactus.stages.evaluate import run_evaluate

    if out is not None:  # refuse a bad --out before the evaluation runs, not after
        from cactus.core.overwrite import check_report_path

        check_report_path(out, ("artifact", "learner", "data"))
    report = run_evaluate(artifact, learner, ways, shots, queries, num_tasks, seed, device, threads, embeddings_path,
                          benchmark, runs_path)
    if out is not None:
        write_json(out, report)
    emit(report, as_json, format_report(report))
