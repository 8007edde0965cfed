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
from cactus.stages.presets import PRESETS, preset_values

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


def format_floors(learner: dict, embedding: dict, pixels: dict) -> str:
    """The learner's accuracy beside the two floors, one row per (ways, shots)."""
    def by_setting(report: dict) -> dict:
        return {(r["ways"], r["shots"]): r["accuracy"] for r in report.get("results", [])}

    embed_name = "embed 1-NN" if embedding["learner"] == "knn" else f"embed {embedding['learner']}"
    rows = [f"  {'setting':<14} {learner['learner']:>10} {embed_name:>11} {'pixels 1-NN':>12}"]
    mine, emb, pix = by_setting(learner), by_setting(embedding), by_setting(pixels)
    nan = float("nan")
    for (ways, shots), accuracy in mine.items():
        rows.append(f"  {f'{ways}-way {shots}-shot':<14} {accuracy:>9.2f}% {emb.get((ways, shots), nan):>10.2f}%"
                    f" {pix.get((ways, shots), nan):>11.2f}%")
    return "floors (the run's embedding, 1-NN on raw pixels):\n" + "\n".join(rows)


def pixel_floor(out: Path, embed, evaluation, image_shape: tuple[int, int, int], force: bool) -> dict:
    """1-NN on raw pixels (the ``pixels`` encoder) of the run's dataset: the floor beside every result.

    Images of more than ``MAX_FLOOR_PIXELS`` values (its embedding is that wide) are shrunk to the largest
    square side that fits (84x84 RGB -> 64x64); the report says at which ``image_size``.
    """
    from cactus.stages.configs import EmbedConfig
    from cactus.stages.embed import embed_stage
    from cactus.stages.evaluate import evaluate_stage
    from cactus.stages.planner import MAX_FLOOR_PIXELS

    height, width, channels = image_shape
    data = embed.data
    if height * width * channels > MAX_FLOOR_PIXELS:
        data = replace(data, image_size=int((MAX_FLOOR_PIXELS / channels) ** 0.5))
    settings = EmbedConfig(data=data, method="pixels", seed=embed.seed, device=embed.device, threads=embed.threads)
    report = evaluate_stage(embed_stage(out, settings, force=force).path, replace(evaluation, learner="knn"))
    return {**report, "image_size": data.image_size} if data is not embed.data else report


def is_default(ctx: click.Context, name: str) -> bool:
    """Whether the user left option ``name`` at its default (not given on the line, in a file or the env)."""
    return ctx.get_parameter_source(name) in (None, click.core.ParameterSource.DEFAULT)


def fill_defaults(ctx: click.Context, values: dict, settings: dict[str, Any], origin: str) -> dict:
    """Options the user left at their default take the value in ``settings`` (checked like a given value)."""
    from cactus.core.errors import CactusError

    params = {param.name: param for param in ctx.command.params}
    for name, value in settings.items():
        if name not in params:
            raise CactusError(f"{origin}: sets {name}, which is not an option of cactus run")
        if is_default(ctx, name):
            values[name] = params[name].type_cast_value(ctx, value)
    return values


def apply_preset(ctx: click.Context, values: dict, preset: str | None, budget: str) -> dict:
    """Options the user left at their default take the preset's value (checked like a given value)."""
    from cactus.stages.presets import preset_values

    return fill_defaults(ctx, values, preset_values(preset, budget), f"--preset {preset}")


def plan_run(ctx: click.Context, values: dict, dataset, budget_text: str, started: float):
    """The planner's recipe for ``dataset`` (:mod:`cactus.stages.planner`), probing throughput for a time budget.

    Fills the options the user did not give; returns the :class:`~cactus.stages.planner.Plan`.
    """
    from cactus.stages.planner import DataShape, parse_budget, plan
    from embeddings.augment import STROKES_ABOVE, extreme_fraction

    budget = parse_budget(budget_text)
    images = train_images(dataset)
    shape = DataShape(len(images), *(int(d) for d in images.shape[1:]), extreme_fraction(images) > STROKES_ABOVE)
    names = ("method", "epochs", "clusters", "ways", "shots", "queries", "algo", "iterations", "image_size",
             "train_size")
    given = {name: values[name] for name in names if not is_default(ctx, name)}
    threads, device = values["threads"], device_name(values["device"])
    planned = plan(shape, budget, given=given, threads=threads, device=device, eval_tasks=values["eval_tasks"])
    if budget.name == "time" and "algo" in planned.values:
        from cactus.stages.probe import measure

        speed = measure(images, {**values, **planned.values}, values["device"], threads, values["seed"])
        spent = max(process_seconds(), time.monotonic() - started)
        planned = plan(shape, budget, speed, given, threads, device, spent, values["eval_tasks"])
    fill_defaults(ctx, values, planned.values, "the planner")
    planned.values.update({name: values[name] for name in planned.values})  # a given option wins: show it
    return planned


def process_seconds() -> float:
    """Seconds since this process started (Python's start-up and imports included; 0 where /proc is missing)."""
    import os

    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def train_images(dataset):
    """The meta-train images (N, H, W, C) uint8 the planner sizes the recipe by (never their labels).

    A dataset without a split (a test's stub) counts all its images.
    """
    from cactus.datasets.dataset import TRAIN

    return dataset.images[dataset.indices(TRAIN)] if hasattr(dataset, "indices") else dataset.images


def device_name(device: str) -> str:
    """``auto`` resolved to cuda or cpu (torch is imported only then)."""
    if device != "auto":
        return device
    from cactus.core.device import auto_device_name

    return auto_device_name()


def widest_ways(dataset, ways: int = 20) -> tuple[int, ...]:
    """Evaluation ways: 5 and the widest the test classes allow (at most ``ways``); (5,) with fewer classes."""
    from cactus.datasets.dataset import TEST

    if not getattr(dataset, "has_labels", False):
        return (5,)
    import numpy as np

    classes = len(np.unique(dataset.true_labels()[dataset.indices(TEST)]))
    return (5, min(ways, classes)) if classes > 5 else (5,)


def check_encoder(embed) -> None:
    """Build the planned encoder once (no training), so an option it cannot use is refused before any stage."""
    from embeddings import encoder_class

    encoder_class(embed.method).from_params(embed.encoder_options())


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
@click.option("--budget", default="cpu", show_default=True, metavar="quick|cpu|paper|job|TIME",
              help="quick = minutes; cpu = within an hour on 2 cores; paper = the paper's iterations; a TIME "
                   "such as 90s, 45m, 2h (measured throughput; the whole run ends within it); job = the SLURM "
                   "job's time left (SLURM_JOB_END_TIME). Presets take cpu or paper.")
@click.option("--dry-run", is_flag=True, help="Print the planned recipe (one table) and exit without training.")
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
def run(ctx, preset, budget, dry_run, out_dir, init_from_encoder, force, as_json, write_report, replay, **values):
    """Run embed -> cluster -> tasks -> meta -> evaluate on one dataset and print the evaluation.

    Without --preset the recipe is planned from the data (meta-train images, resolution,
    channels) and --budget: every option not given is filled in (see --dry-run). Beside the
    learner's accuracy it prints two floors: the run's embedding with 1-NN and raw pixels with 1-NN.

    With --tasks-from labels the meta stage is the SUPERVISED oracle (true-label tasks of the
    meta-train classes) and no cluster / tasks stage runs.
    """

    from cactus.cli.output import finish_run, format_report
    from cactus.core import log
    from cactus.stages.cluster import run_cluster
    from cactus.stages.embed import embed_stage
    from cactus.stages.evaluate import evaluate_stage
    from cactus.stages.meta import meta_stage
    from cactus.stages.tasks import run_tasks

    values["init_from_encoder"] = init_from_encoder
    v = apply_preset(ctx, dict(values), preset, budget)
    if replay is not None:
        from cactus.cli.replay import replay_run

        v.pop("init_from_encoder")
        return replay_run(replay, out_dir, force, as_json, write_report, v)
    started = time.monotonic()
    if preset is None:
        from cactus.stages.planner import parse_budget

        parse_budget(budget)  # a bad --budget is refused before the dataset loads
    out_dir = out_dir or default_out_dir(v["data"], preset)
    from cactus.core.device import allocated_threads
    from cactus.stages.common import DataRef
    from cactus.stages.options import build

    threads_from = "--threads"
    if v["threads"] is None:
        v["threads"], threads_from = allocated_threads()
    dataset = build(DataRef, v, by="run").load()
    planned = None if preset else plan_run(ctx, v, dataset, budget, started)
    if is_default(ctx, "eval_ways") and not (preset and "eval_ways" in PRESETS[preset]):
        v["eval_ways"] = widest_ways(dataset)
    device = device_name(v["device"])
    recipe = f"preset {preset} ({budget})" if preset else planned.summary()
    log.info(f"run: {recipe}; {v['threads']} threads ({threads_from}), device {device}")
    check_encoder(resolve({k: x for k, x in v.items() if k != "init_from_encoder"},
                          int(dataset.images[0].size))["embed"])  # a bad setting fails now, not after loading
    if dry_run:
        click.echo(planned.table() if planned else f"preset {preset} ({budget}): "
                   + ", ".join(f"{k}={v[k]}" for k in sorted(preset_values(preset, budget)) if k in v))
        return
    if planned is not None and "image_size" in planned.values and planned.resized_from is not None:  # resized
        dataset = None  # the full-size images go before the resized ones load
        dataset = build(DataRef, v, by="run").load()
    init_from_encoder = bool(v.pop("init_from_encoder"))
    configs = resolve(v, int(dataset.images[0].size))
    files = {name: out_dir / f"{name}.h5" for name in ("embeddings", "partitions", "tasks", "learner")}
    # the floor first: it takes seconds, and a run stopped later has still shown it
    floor = pixel_floor(out_dir / "pixels.h5", configs["embed"], configs["evaluate"], tuple(dataset.images.shape[1:]),
                        force)
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
    summary = {"out_dir": str(out_dir), "preset": preset, "budget": budget,
               "plan": planned.as_dict() if planned else None,
               "stages": [s.as_dict() for s in stages], "evaluation": reports,
               "floors": {"pixels_knn": floor, "embedding": reports[1]},
               "threads": v["threads"], "device": device,
               "seconds": round(time.monotonic() - started, 1), "process_seconds": round(process_seconds(), 1)}
    finish_run(out_dir, summary, [format_report(reports[0]), format_floors(reports[0], reports[1], floor)], as_json,
               write_report, v["device"], v["threads"])
