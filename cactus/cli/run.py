"""``cactus run``: every stage in turn with sensible defaults (or a preset), then the evaluation.

Its options are generated from the stages' declarations (:mod:`cactus.stages.configs`): every
option of every stage command, under its run name (evaluate's ``--ways`` is ``--eval-ways``,
cluster's ``--iterations`` is ``--kmeans-iterations``); an option several stages share
(``--seed``, ``--device``, the dataset, the task shape) is given to each of them.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from cactus.cli.config_file import run_config_callback
from cactus.cli.options import run_options
from cactus.stages.configs import STAGE_CONFIGS
from cactus.stages.presets import BUDGETS, PRESETS

#: What `cactus run` uses for a stage option left unset: the pipeline fits each stage to the next.
DERIVED = {
    "dim": "64, at most half the pixels",
    "min_cluster_size": "shots + queries",
    "min_clusters": "ways",
    "num_tasks": "iterations x meta-batch + 100, at least 1000",
}


def default_out_dir(spec: str, preset: str | None = None) -> Path:
    """runs/<preset or dataset name>: ``omniglot:/data/omniglot`` -> runs/omniglot."""
    kind, _, path = spec.partition(":")
    name = kind if not path else f"{kind}-{Path(path).stem}" if kind in ("npz", "h5", "folder", "idx") else kind
    return Path("runs") / re.sub(r"[^A-Za-z0-9_.-]+", "_", preset or name)


def apply_preset(ctx: click.Context, values: dict, preset: str | None, budget: str) -> dict:
    """Options the user left at their default take the preset's value (checked like a given value)."""
    from cactus.core.errors import CactusError
    from cactus.stages.presets import preset_values

    params = {param.name: param for param in ctx.command.params}
    for name, value in preset_values(preset, budget).items():
        if name not in params:
            raise CactusError(f"--preset {preset}: sets {name}, which is not an option of cactus run")
        source = ctx.get_parameter_source(name)
        if source in (None, click.core.ParameterSource.DEFAULT):
            values[name] = params[name].type_cast_value(ctx, value)
    return values


def resolve(values: dict[str, Any], pixels: int) -> dict[str, Any]:
    """The stage configs of one run: the run's option values with the :data:`DERIVED` ones filled in."""
    from cactus.stages.configs import MetaConfig
    from cactus.stages.options import build

    v = dict(values)
    if v["dim"] is None:
        v["dim"] = min(64, pixels // 2)
    if v["min_cluster_size"] is None:
        v["min_cluster_size"] = v["shots"] + v["queries"]
    if v["min_clusters"] is None:
        v["min_clusters"] = v["ways"]
    if v["num_tasks"] is None:
        batch = MetaConfig(algo=v["algo"], meta_batch=v["meta_batch"]).batch
        v["num_tasks"] = max(1000, v["iterations"] * batch + 100)
    return {stage: build(cls, v, by="run") for stage, cls in STAGE_CONFIGS.items()}


@click.command()
@click.option("--preset", default=None, metavar="NAME",
              help=f"Named settings for every option not given: {' | '.join(sorted(PRESETS))}.")
@click.option("--budget", type=click.Choice(list(BUDGETS)), default="cpu", show_default=True,
              help="With --preset: cpu = within an hour on 2 cores; paper = the paper's iterations.")
@click.option("--out-dir", type=click.Path(path_type=Path), default=None,
              help="Folder for the artifacts [runs/<preset or data>].")
@run_options(STAGE_CONFIGS, DERIVED)
@click.option("--init-from-encoder", is_flag=True, default=False,
              help="meta: ProtoNets start from the trained encoder's backbone (contrastive, deepcluster).")
@click.option("--force", is_flag=True, help="Recompute every stage.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("--report", "write_report", is_flag=True, help="Also write OUT_DIR/report.html (see cactus report).")
@click.option("--config", "replay", type=click.Path(path_type=Path, dir_okay=False), default=None, is_eager=True,
              callback=run_config_callback,
              help="FILE.toml: options of this command ([run] table); FILE.h5: replay the stages that made it.")
@click.pass_context
def run(ctx, preset, budget, out_dir, init_from_encoder, force, as_json, write_report, replay, **values):
    """Run embed -> cluster -> tasks -> meta -> evaluate on one dataset and print the evaluation.

    With --tasks-from labels the meta stage is the SUPERVISED oracle (true-label tasks of the
    meta-train classes) and no cluster / tasks stage runs.
    """
    import json

    from cactus.cli.output import format_report, write_json
    from cactus.core import log
    from cactus.stages.cluster import run_cluster
    from cactus.stages.embed import embed_stage
    from cactus.stages.evaluate import evaluate_stage
    from cactus.stages.meta import meta_stage
    from cactus.stages.tasks import run_tasks

    v = apply_preset(ctx, dict(values), preset, budget)
    if replay is not None:
        from cactus.cli.replay import replay_run

        return replay_run(replay, out_dir, force, as_json, write_report, v)
    started = time.monotonic()
    out_dir = out_dir or default_out_dir(v["data"], preset)
    from cactus.stages.common import DataRef
    from cactus.stages.options import build

    dataset = build(DataRef, v, by="run").load()
    configs = resolve(v, int(dataset.images[0].size))
    files = {name: out_dir / f"{name}.h5" for name in ("embeddings", "partitions", "tasks", "learner")}
    stages = [embed_stage(files["embeddings"], configs["embed"], force=force)]
    meta = configs["meta"]
    tasks_file = None
    if meta.tasks_from == "partitions":
        stages.append(run_cluster(files["partitions"], files["embeddings"], configs["cluster"], force=force))
        stages.append(run_tasks(files["tasks"], files["partitions"], configs["tasks"], force=force))
        tasks_file = files["tasks"]
    init_from = files["embeddings"] if init_from_encoder else None
    stages.append(meta_stage(files["learner"], tasks_file, meta, init_from, force))
    for stage in stages:
        log.info(f"{stage.stage}: {'reused' if stage.skipped else f'{stage.seconds:.1f} s'} -> {stage.path}")
    evaluation = configs["evaluate"]
    reports = [evaluate_stage(files["learner"], replace(evaluation, learner=None)),
               evaluate_stage(files["embeddings"], replace(evaluation, learner=evaluation.learner or "knn"))]
    summary = {"out_dir": str(out_dir), "preset": preset, "budget": budget if preset else None,
               "stages": [s.as_dict() for s in stages], "evaluation": reports,
               "seconds": round(time.monotonic() - started, 1)}
    write_json(out_dir / "evaluation.json", summary)
    if write_report:
        from cactus.report.build import build_report

        log.info(f"report: wrote {build_report(out_dir, device=v['device'], threads=v['threads'])['report']}")
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
    else:
        for report in reports:
            click.echo(format_report(report))
