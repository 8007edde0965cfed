"""``cactus report RUN_DIR``: an HTML page with the run's figures, written beside its artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import click


def _int_list(ctx, param, value):
    from cactus.cli.options import int_list as parse

    return parse(ctx, param, value)


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--out", "-o", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="The HTML page to write [RUN_DIR/report.html]; figures go beside it.")
@click.option("--map", "map_method", type=click.Choice(["auto", "pca", "tsne"]), default="auto", show_default=True,
              help="2-D map of the embedding: PCA, or t-SNE on a subsample (slower); auto = t-SNE up to 2000 "
              "meta-train images, else PCA.")
@click.option("--map-points", type=int, default=None, help="Points in the map [5000 for PCA, 2000 for t-SNE].")
@click.option("--tasks-shown", type=int, default=3, show_default=True, help="Pseudo-tasks drawn.")
@click.option("--evaluate/--no-evaluate", default=True, show_default=True,
              help="Evaluate the learner if the run folder has no up-to-date evaluation.json.")
@click.option("--eval-ways", default=None, callback=_int_list, help="Ways to evaluate [5; Omniglot 5,20].")
@click.option("--eval-shots", default=None, callback=_int_list, help="Shots to evaluate [1,5].")
@click.option("--eval-tasks", type=int, default=1000, show_default=True)
@click.option("--inline", is_flag=True, help="Embed the figures in the page (base64) instead of files beside it.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the samples drawn.")
@click.option("--device", default="auto", show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def report(run_dir, out, map_method, map_points, tasks_shown, evaluate, eval_ways, eval_shots, eval_tasks, inline,
           seed, device, threads, as_json):
    """Draw what a run did: embedding map, pseudo-tasks, cluster sizes, agreement with true classes,
    training curves and the evaluation (beside the paper's numbers on Omniglot), as one HTML page."""
    from cactus.core import log
    from cactus.report.build import build_report

    summary = build_report(run_dir, out, map_method, map_points, tasks_shown, evaluate, eval_ways, eval_shots,
                           eval_tasks, seed, device, threads, inline)
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
    else:
        log.info(f"report: {len(summary['figures'])} figures")
        click.echo(f"wrote {summary['report']}")
