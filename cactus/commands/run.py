"""``cactus run``: every stage in turn with sensible defaults, then the evaluation."""

from __future__ import annotations

import re
from pathlib import Path

import click

from cactus.errors import CactusError


def default_out_dir(spec: str) -> Path:
    """runs/<dataset name>: ``omniglot:/data/omniglot`` -> runs/omniglot."""
    kind, _, path = spec.partition(":")
    name = kind if not path else f"{kind}-{Path(path).stem}" if kind in ("npz", "h5", "folder", "idx") else kind
    return Path("runs") / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


@click.command()
@click.option("--data", default="digits", show_default=True,
              help="digits | omniglot:PATH | idx:PATH | folder:PATH | npz:PATH | h5:PATH")
@click.option("--image-size", type=int, default=None)
@click.option("--split", default="default", show_default=True,
              type=click.Choice(["default", "classes", "lake", "files", "images"]))
@click.option("--split-seed", type=int, default=0, show_default=True)
@click.option("--out-dir", type=click.Path(path_type=Path), default=None,
              help="Folder for the artifacts [runs/<data>].")
@click.option("--method", default="pca", show_default=True, help="Encoder for the embed stage.")
@click.option("--dim", type=int, default=None, help="Embedding dimension [64, at most half the pixels].")
@click.option("--clusters", type=int, default=None, help="k [500, fewer on small data].")
@click.option("--partitions", type=int, default=100, show_default=True)
@click.option("--ways", type=int, default=5, show_default=True, help="Ways of the meta-training tasks.")
@click.option("--shots", type=int, default=1, show_default=True)
@click.option("--queries", type=int, default=5, show_default=True)
@click.option("--algo", type=click.Choice(["protonets", "maml"]), default="protonets", show_default=True)
@click.option("--iterations", type=int, default=2000, show_default=True)
@click.option("--meta-batch", type=int, default=None, help="[protonets 1, maml 8]")
@click.option("--eval-ways", default="5", show_default=True)
@click.option("--eval-shots", default="1,5", show_default=True)
@click.option("--eval-tasks", type=int, default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--force", is_flag=True, help="Recompute every stage.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def run(data, image_size, split, split_seed, out_dir, method, dim, clusters, partitions, ways, shots, queries, algo,
        iterations, meta_batch, eval_ways, eval_shots, eval_tasks, seed, device, threads, force, as_json):
    """Run embed -> cluster -> tasks -> meta -> evaluate on one dataset and print the evaluation."""
    import json

    from cactus import log
    from cactus.evaluate import run_evaluate
    from cactus.stages.cluster import run_cluster
    from cactus.stages.common import DataRef
    from cactus.stages.embed import run_embed
    from cactus.stages.meta import run_meta
    from cactus.stages.tasks import run_tasks
    from cli import _int_list, format_report

    eval_ways_list = _int_list(None, None, eval_ways)
    eval_shots_list = _int_list(None, None, eval_shots)
    out_dir = out_dir or default_out_dir(data)
    ref = DataRef(data, image_size, split, split_seed)
    dataset = ref.load()
    pixels = int(dataset.images[0].size)
    options = {"dim": dim or min(64, pixels // 2), "seed": seed}
    meta_batch = meta_batch or (8 if algo == "maml" else 1)
    stages = []
    stages.append(run_embed(out_dir / "embeddings.h5", ref, method, options, force=force))
    min_size = shots + queries
    stages.append(run_cluster(out_dir / "partitions.h5", out_dir / "embeddings.h5", clusters, partitions, seed,
                              min_cluster_size=min_size, min_clusters=ways, force=force))
    num_tasks = max(1000, iterations * meta_batch + 100)
    stages.append(run_tasks(out_dir / "tasks.h5", out_dir / "partitions.h5", ways, shots, queries, num_tasks, seed,
                            force))
    stages.append(run_meta(out_dir / "learner.h5", out_dir / "tasks.h5", algo, {}, iterations, meta_batch, seed,
                           device, threads, force=force))
    for stage in stages:
        log.info(f"{stage.stage}: {'reused' if stage.skipped else f'{stage.seconds:.1f} s'} -> {stage.path}")
    reports = []
    for learner_file, learner in ((out_dir / "learner.h5", None), (out_dir / "embeddings.h5", "knn")):
        reports.append(run_evaluate(learner_file, learner, eval_ways_list, eval_shots_list, queries, eval_tasks, seed,
                                    device, threads))
    if as_json:
        click.echo(json.dumps({"out_dir": str(out_dir), "stages": [s.as_dict() for s in stages],
                               "evaluation": reports}, indent=2, sort_keys=True))
    else:
        for report in reports:
            click.echo(format_report(report))
    if not reports:
        raise CactusError("nothing was evaluated")
