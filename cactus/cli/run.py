"""``cactus run``: every stage in turn with sensible defaults (or a preset), then the evaluation."""

from __future__ import annotations

import re
import time
from pathlib import Path

import click

from cactus.cli.config_file import run_config_callback

SPLITS = ["default", "classes", "lake", "files", "images"]


def default_out_dir(spec: str, preset: str | None = None) -> Path:
    """runs/<preset or dataset name>: ``omniglot:/data/omniglot`` -> runs/omniglot."""
    kind, _, path = spec.partition(":")
    name = kind if not path else f"{kind}-{Path(path).stem}" if kind in ("npz", "h5", "folder", "idx") else kind
    return Path("runs") / re.sub(r"[^A-Za-z0-9_.-]+", "_", preset or name)


def apply_preset(ctx: click.Context, values: dict, preset: str | None, budget: str) -> dict:
    """Options the user left at their default take the preset's value."""
    from cactus.stages.presets import preset_values

    chosen = preset_values(preset, budget)
    for name, value in chosen.items():
        source = ctx.get_parameter_source(name) if name in values else None
        if name not in values or source in (None, click.core.ParameterSource.DEFAULT):
            values[name] = value
    return values


@click.command()
@click.option("--preset", default=None, help="cactus-omniglot | cactus-omniglot-protonets | ours-omniglot")
@click.option("--budget", type=click.Choice(["cpu", "paper"]), default="cpu", show_default=True,
              help="With --preset: cpu = within an hour on 2 cores; paper = the paper's iterations.")
@click.option("--data", default="digits", show_default=True,
              help="digits | omniglot:PATH | idx:PATH | folder:PATH | npz:PATH | h5:PATH")
@click.option("--image-size", type=int, default=None)
@click.option("--split", default="default", show_default=True, type=click.Choice(SPLITS))
@click.option("--split-seed", type=int, default=0, show_default=True)
@click.option("--out-dir", type=click.Path(path_type=Path), default=None,
              help="Folder for the artifacts [runs/<preset or data>].")
@click.option("--method", default="pca", show_default=True, help="Encoder for the embed stage.")
@click.option("--dim", type=int, default=None, help="Embedding dimension [64, at most half the pixels].")
@click.option("--quick", is_flag=True, default=False, help="The encoder's quick setting.")
@click.option("--epochs", type=int, default=None, help="Encoder training epochs.")
@click.option("--clusters", type=int, default=None, help="k [500, fewer on small data].")
@click.option("--partitions", type=int, default=100, show_default=True)
@click.option("--ways", type=int, default=5, show_default=True, help="Ways of the meta-training tasks.")
@click.option("--shots", type=int, default=1, show_default=True)
@click.option("--queries", type=int, default=5, show_default=True, help="Queries per class in meta-training.")
@click.option("--algo", type=click.Choice(["protonets", "maml"]), default="protonets", show_default=True)
@click.option("--filters", type=int, default=None)
@click.option("--downsample", type=click.Choice(["pool", "stride"]), default=None)
@click.option("--meta-lr", type=float, default=1e-3, show_default=True)
@click.option("--inner-steps", type=int, default=None)
@click.option("--test-inner-steps", type=int, default=None)
@click.option("--inner-lr", type=float, default=None)
@click.option("--init-from-encoder", is_flag=True, default=False,
              help="ProtoNets start from the trained encoder's backbone (contrastive, deepcluster).")
@click.option("--iterations", type=int, default=2000, show_default=True)
@click.option("--meta-batch", type=int, default=None, help="[protonets 1, maml 8]")
@click.option("--eval-ways", default="5", show_default=True)
@click.option("--eval-shots", default="1,5", show_default=True)
@click.option("--eval-queries", type=int, default=5, show_default=True)
@click.option("--eval-tasks", type=int, default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--force", is_flag=True, help="Recompute every stage.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("--report", "write_report", is_flag=True, help="Also write OUT_DIR/report.html (see cactus report).")
@click.option("--config", "replay", type=click.Path(path_type=Path, dir_okay=False), default=None, is_eager=True,
              callback=run_config_callback,
              help="FILE.toml: options of this command ([run] table); FILE.h5: replay the stages that made it.")
@click.pass_context
def run(ctx, preset, budget, **values):
    """Run embed -> cluster -> tasks -> meta -> evaluate on one dataset and print the evaluation."""
    import json

    from cactus.cli.options import int_list
    from cactus.cli.output import format_report, write_json
    from cactus.core import log
    from cactus.stages.cluster import run_cluster
    from cactus.stages.common import DataRef
    from cactus.stages.embed import run_embed
    from cactus.stages.evaluate import run_evaluate
    from cactus.stages.meta import run_meta
    from cactus.stages.tasks import run_tasks

    v = apply_preset(ctx, dict(values), preset, budget)
    if v["replay"] is not None:
        from cactus.cli.replay import replay_run

        return replay_run(v)
    started = time.monotonic()
    eval_ways, eval_shots = int_list(None, None, v["eval_ways"]), int_list(None, None, v["eval_shots"])
    out_dir = v["out_dir"] or default_out_dir(v["data"], preset)
    ref = DataRef(v["data"], v["image_size"], v["split"], v["split_seed"])
    dataset = ref.load()
    encoder_options = {"dim": v["dim"] or min(64, int(dataset.images[0].size) // 2), "seed": v["seed"]}
    if v["quick"]:
        encoder_options["quick"] = True
    if v["epochs"] is not None:
        encoder_options["epochs"] = v["epochs"]
    if v["method"] != "pca":
        encoder_options["threads"] = v["threads"]
    meta_batch = v["meta_batch"] or (8 if v["algo"] == "maml" else 1)
    learner_options = {k: v[k] for k in ("filters", "downsample", "meta_lr", "inner_steps", "test_inner_steps",
                                         "inner_lr") if v[k] is not None}
    files = {name: out_dir / f"{name}.h5" for name in ("embeddings", "partitions", "tasks", "learner")}
    if v["init_from_encoder"]:
        learner_options["init_from"] = files["embeddings"]
    stages = [run_embed(files["embeddings"], ref, v["method"], encoder_options, force=v["force"])]
    stages.append(run_cluster(files["partitions"], files["embeddings"], v["clusters"], v["partitions"], v["seed"],
                              min_cluster_size=v["shots"] + v["queries"], min_clusters=v["ways"], force=v["force"]))
    num_tasks = max(1000, v["iterations"] * meta_batch + 100)
    stages.append(run_tasks(files["tasks"], files["partitions"], v["ways"], v["shots"], v["queries"], num_tasks,
                            v["seed"], v["force"]))
    stages.append(run_meta(files["learner"], files["tasks"], v["algo"], learner_options, v["iterations"], meta_batch,
                           v["seed"], v["device"], v["threads"], force=v["force"]))
    for stage in stages:
        log.info(f"{stage.stage}: {'reused' if stage.skipped else f'{stage.seconds:.1f} s'} -> {stage.path}")
    reports = [
        run_evaluate(path, learner, eval_ways, eval_shots, v["eval_queries"], v["eval_tasks"], v["seed"],
                     v["device"], v["threads"])
        for path, learner in ((files["learner"], None), (files["embeddings"], "knn"))
    ]
    summary = {"out_dir": str(out_dir), "preset": preset, "budget": budget if preset else None,
               "stages": [s.as_dict() for s in stages], "evaluation": reports,
               "seconds": round(time.monotonic() - started, 1)}
    write_json(out_dir / "evaluation.json", summary)
    if v["write_report"]:
        from cactus.report.build import build_report

        log.info(f"report: wrote {build_report(out_dir, device=v['device'], threads=v['threads'])['report']}")
    if v["as_json"]:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
    else:
        for report in reports:
            click.echo(format_report(report))
