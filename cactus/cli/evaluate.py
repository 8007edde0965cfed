"""``cactus evaluate``: few-shot accuracy on true-label tasks."""

from __future__ import annotations

from pathlib import Path

import click

from cactus.cli.options import json_option, stage_options
from cactus.cli.output import emit, format_report, write_json
from cactus.stages.configs import EvaluateConfig


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--embeddings", "embeddings_path", type=click.Path(path_type=Path), default=None,
              help="cluster-matching: the embed artifact that was clustered.")
@click.option("--runs", "runs_path", type=click.Path(path_type=Path), default=None,
              help="one_shot_classification_all_runs.zip [beside the Omniglot folder].")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None, help="Also write the report as JSON here.")
@stage_options(EvaluateConfig)
@json_option
def evaluate(artifact, embeddings_path, runs_path, out, as_json, **values):
    """Few-shot accuracy (95% interval) on true-label tasks of the test classes."""
    from cactus.stages.evaluate import evaluate_stage
    from cactus.stages.options import build

    if out is not None:  # refuse a bad --out before the evaluation runs, not after
        from cactus.core.overwrite import check_report_path

        check_report_path(out, ("artifact", "learner", "data"))
    report = evaluate_stage(artifact, build(EvaluateConfig, values), embeddings_path, runs_path)
    if out is not None:
        write_json(out, report)
    emit(report, as_json, format_report(report))
