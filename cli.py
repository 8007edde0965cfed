"""The ``cactus`` command line: thin click commands over :mod:`cactus.stages`.

Heavy modules (torch, faiss, h5py, sklearn) are imported inside the command bodies so that
``cactus --help`` answers at once. Every option can also come from ``CACTUS_<COMMAND>_<OPTION>``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cactus import __version__, log
from cactus.config import config_option_callback
from cactus.errors import CactusError


def _int_list(_ctx, param, value):
    if value is None:
        return None
    try:
        numbers = [int(v) for v in str(value).split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None
    if not numbers or min(numbers) < 1:
        raise click.BadParameter(f"{value!r}: give positive integers such as 5,20")
    return numbers


class CactusGroup(click.Group):
    """Turns user errors into one line on stderr and a non-zero exit code, never a traceback."""

    def invoke(self, ctx):
        from cactus.checkpoint import Stopped

        try:
            return super().invoke(ctx)
        except CactusError as error:
            click.echo(f"cactus: error: {error}", err=True)
            sys.exit(1)
        except Stopped as stopped:
            click.echo(f"cactus: {stopped}", err=True)
            sys.exit(stopped.exit_code)
        except KeyboardInterrupt:
            click.echo("cactus: interrupted", err=True)
            sys.exit(130)


def emit(payload: dict, as_json: bool, human: str | None = None) -> None:
    """--json prints the machine-readable summary on stdout; otherwise a short human line."""
    if as_json:
        click.echo(json.dumps(payload, indent=2, sort_keys=True))
    elif human is not None:
        click.echo(human)


def data_options(function):
    for decorator in reversed([
        click.option("--data", default="digits", show_default=True,
                     help="digits | omniglot:PATH | idx:PATH | folder:PATH | npz:PATH | h5:PATH"),
        click.option("--image-size", type=int, default=None, help="Resize images to SIZE x SIZE (Omniglot: 28)."),
        click.option("--split", default="default", show_default=True,
                     type=click.Choice(["default", "classes", "lake", "files", "images"]),
                     help="How images are split into meta-train / validation / test."),
        click.option("--split-seed", type=int, default=0, show_default=True, help="Seed of the class split."),
    ]):
        function = decorator(function)
    return function


def data_ref(data, image_size, split, split_seed):
    from cactus.stages.common import DataRef

    return DataRef(data, image_size, split, split_seed)


json_option = click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
force_option = click.option("--force", is_flag=True, help="Recompute even if the artifact is up to date.")
device_options = [
    click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda"),
    click.option("--threads", type=int, default=None, help="CPU threads for torch."),
]


def with_options(options):
    def apply(function):
        for option in reversed(options):
            function = option(function)
        return function
    return apply


@click.group(cls=CactusGroup, context_settings={"auto_envvar_prefix": "CACTUS", "help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cactus")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), is_eager=True,
              expose_value=False, callback=config_option_callback, envvar="CACTUS_CONFIG",
              help="TOML file with one [COMMAND] table of options each (see `cactus config show`).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")
@click.option("-v", "--verbose", is_flag=True, help="More detail on stderr.")
def main(quiet: bool, verbose: bool) -> None:
    """Unsupervised meta-learning: CACTUs and a meta-learned unsupervised update rule.

    Pipeline: embed -> cluster -> tasks -> meta -> evaluate (or `cactus run` for all of them);
    `cactus report RUN_DIR` draws what happened. Options come from the command line, then
    CACTUS_<COMMAND>_<OPTION>, then --config FILE.toml, then the defaults.

    \b
    Shell completion (bash; zsh_source / fish_source for the others):
      eval "$(_CACTUS_COMPLETE=bash_source cactus)"
    """
    log.set_verbosity(0 if quiet else 2 if verbose else 1)


ENCODER_OPTIONS = ("dim", "epochs", "batch_size", "lr", "seed", "device", "threads", "width", "depth", "steps", "rule",
                   "quick", "path")


@main.command()
@data_options
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Embedding artifact to write.")
@click.option("--method", default="pca", show_default=True, help="Encoder: pca, acai, bigan, deepcluster, ...")
@click.option("--encoder", "encoder_file", type=click.Path(path_type=Path), default=None,
              help="Reuse the encoder stored in this embed artifact instead of training one.")
@click.option("--dim", type=int, default=None, help="Embedding dimension.")
@click.option("--epochs", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--width", type=int, default=None, help="learned-rule: base MLP width.")
@click.option("--depth", type=int, default=None, help="learned-rule: base MLP depth.")
@click.option("--steps", type=int, default=None, help="learned-rule: unsupervised steps.")
@click.option("--rule", type=str, default=None, help="learned-rule: rule artifact (default: the shipped one).")
@click.option("--quick", is_flag=True, default=None, help="The encoder's quick setting (minutes on a CPU).")
@click.option("--path", type=str, default=None,
              help="load: embeddings you already have (.npy/.npz/.h5, one row per image) or a TorchScript encoder.")
@with_options(device_options)
@click.option("--resume", is_flag=True, help="Continue training from the checkpoint beside --out.")
@click.option("--checkpoint-every", type=float, default=300.0, show_default=True,
              help="Seconds between checkpoints of a neural encoder's training.")
@force_option
@json_option
def embed(data, image_size, split, split_seed, out, method, encoder_file, resume, checkpoint_every, force, as_json,
          **options):
    """Fit an unsupervised encoder on the meta-train images and embed every image.

    The neural encoders checkpoint beside --out (OUT.ckpt) and on SIGTERM/SIGINT; --resume
    continues to the same result. Under `torchrun --nproc-per-node N` contrastive and acai split
    each mini-batch over the N processes (--batch-size a multiple of N); the others refuse.
    """
    from cactus import distributed
    from cactus.stages.embed import run_embed

    given = {k: v for k, v in options.items() if k in ENCODER_OPTIONS and v is not None}
    if not given.get("device") or given.get("device") == "auto":
        given.pop("device", None)
    try:
        result = run_embed(out, data_ref(data, image_size, split, split_seed), method, given, encoder_file, force,
                           resume, checkpoint_every)
    finally:
        distributed.teardown()  # under torchrun / srun; a no-op otherwise
    if result.summary.get("rank"):  # ranks > 0 of a distributed run: rank 0 reports
        return
    emit(result.as_dict(), as_json, None if result.skipped else f"wrote {out}")


class WithSubcommands(click.Command):
    """A command whose first argument may name a subcommand: ``cactus cluster merge ...``."""

    subcommands: dict[str, click.Command] = {}

    def make_context(self, info_name, args, parent=None, **extra):
        if args and args[0] in self.subcommands:
            name = args[0]
            prefix = f"{parent.auto_envvar_prefix}_{info_name}_{name}".upper() if parent and \
                parent.auto_envvar_prefix else None
            return self.subcommands[name].make_context(f"{info_name} {name}", list(args[1:]), parent=parent,
                                                       auto_envvar_prefix=prefix, **extra)
        return super().make_context(info_name, args, parent=parent, **extra)


def _shard(_ctx, _param, value):
    from cactus.stages.cluster import parse_shard

    try:
        return parse_shard(value)
    except CactusError as error:
        reason = str(error).split(": ", 1)[-1]
        raise click.BadParameter(reason) from None


@main.command(cls=WithSubcommands)
@click.argument("embeddings", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Partition artifact to write.")
@click.option("--clusters", "-k", type=int, default=None, help="Clusters per partition [500, fewer on small data].")
@click.option("--partitions", "-p", type=int, default=100, show_default=True, help="Number of partitions P.")
@click.option("--min-cluster-size", type=int, default=2, show_default=True,
              help="Clusters with fewer members are dropped.")
@click.option("--min-clusters", type=int, default=None, help="Redraw a partition with fewer surviving clusters.")
@click.option("--iterations", type=int, default=None, help="k-means iterations [8 relaxed, 20 faiss].")
@click.option("--engine", type=click.Choice(["relaxed", "faiss"]), default="relaxed", show_default=True,
              help="k-means solver: over-relaxed Lloyd (cactus.kmeans) or faiss's Lloyd.")
@click.option("--threads", type=int, default=None,
              help="Partitions clustered at once [OMP_NUM_THREADS, else every available CPU].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--shard", default=None, callback=_shard, metavar="I/N",
              help="Compute only partitions p with p % N == I (a batch array task); join with `cluster merge`.")
@force_option
@json_option
def cluster(embeddings, out, clusters, partitions, min_cluster_size, min_clusters, iterations, engine, threads, seed,
            shard, force, as_json):
    """Build P k-means partitions of the meta-train embeddings.

    `cactus cluster merge SHARD... -o OUT` joins the artifacts of `--shard 0/N` ... `--shard N-1/N`
    into the artifact one unsharded run writes.
    """
    from cactus.stages.cluster import run_cluster

    result = run_cluster(out, embeddings, clusters, partitions, seed, min_cluster_size, min_clusters, iterations,
                         force, shard, engine, threads)
    emit(result.as_dict(), as_json, None if result.skipped else f"wrote {out}")


@click.command("merge")
@click.argument("shards", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Partition artifact to write.")
@force_option
@json_option
def cluster_merge(shards, out, force, as_json):
    """Join the shards of `cactus cluster --shard I/N` into one partition artifact."""
    from cactus.stages.cluster import merge_shards

    result = merge_shards(out, list(shards), force)
    emit(result.as_dict(), as_json, None if result.skipped else f"wrote {out}")


cluster.subcommands = {"merge": cluster_merge}


@main.command()
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


def meta_learner_options(function):
    return with_options([
        click.option("--algo", type=click.Choice(["protonets", "maml"]), default="protonets", show_default=True),
        click.option("--filters", type=int, default=None, help="Conv filters [protonets 64, maml 32]."),
        click.option("--downsample", type=click.Choice(["pool", "stride"]), default=None,
                     help="Max pool or strided conv [protonets pool, maml stride]."),
        click.option("--meta-lr", type=float, default=1e-3, show_default=True),
        click.option("--inner-steps", type=int, default=None, help="MAML inner steps in training [5]."),
        click.option("--test-inner-steps", type=int, default=None, help="MAML inner steps at test [50]."),
        click.option("--inner-lr", type=float, default=None, help="MAML inner learning rate [0.05]."),
        click.option("--first-order", is_flag=True, default=None, help="MAML: first-order approximation."),
        click.option("--learn-inner-lr", is_flag=True, default=None, help="MAML: Meta-SGD per-parameter inner lr."),
        click.option("--iterations", type=int, default=2000, show_default=True),
        click.option("--meta-batch", type=int, default=None, help="Tasks per meta-update [protonets 1, maml 8]."),
        click.option("--init-from", type=click.Path(path_type=Path), default=None,
                     help="ProtoNets: start from the conv backbone of this embed artifact's encoder "
                     "(contrastive, deepcluster) and fine-tune it."),
    ])(function)


LEARNER_KEYS = ("filters", "downsample", "meta_lr", "inner_steps", "test_inner_steps", "inner_lr", "first_order",
                "learn_inner_lr", "init_from")


@main.command()
@click.argument("tasks_file", metavar="TASKS", type=click.Path(path_type=Path), required=False)
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Learner artifact to write.")
@meta_learner_options
@click.option("--tasks-from", type=click.Choice(["partitions", "labels"]), default="partitions", show_default=True,
              help="labels = SUPERVISED oracle on true-label tasks of the meta-train classes.")
@data_options
@click.option("--ways", type=int, default=5, show_default=True, help="Oracle only: task ways.")
@click.option("--shots", type=int, default=1, show_default=True, help="Oracle only: task shots.")
@click.option("--queries", type=int, default=5, show_default=True, help="Oracle only: queries per class.")
@click.option("--num-tasks", type=int, default=10000, show_default=True, help="Oracle only: tasks to sample.")
@click.option("--validation", type=click.Choice(["pseudo", "labels", "none"]), default="pseudo", show_default=True,
              help="Validation curve on held-out pseudo-tasks or true-label tasks of the validation classes.")
@click.option("--validate-every", type=int, default=500, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@with_options(device_options)
@click.option("--resume", is_flag=True, help="Continue from the checkpoint beside --out.")
@click.option("--checkpoint-every", type=float, default=300.0, show_default=True, help="Seconds between checkpoints.")
@click.option("--task-chunk", type=click.IntRange(min=1), default=None,
              help="MAML: run the meta-batch this many tasks at a time (same gradient, less memory, slower).")
@click.option("--query-chunk", type=click.IntRange(min=1), default=None,
              help="MAML: score the query sets this many tasks at a time (same gradient; fewer use less "
                   "memory)  [default: 2 on a CPU, all at once on a GPU]")
@click.option("--recompute", is_flag=True,
              help="MAML, second order: keep one inner step's graph at a time, rebuilding each in the backward "
                   "pass (same gradient, less memory, slower).")
@force_option
@json_option
def meta(tasks_file, out, algo, iterations, meta_batch, tasks_from, data, image_size, split, split_seed, ways, shots,
         queries, num_tasks, validation, validate_every, seed, device, threads, resume, checkpoint_every, task_chunk,
         query_chunk, recompute, force, as_json, **learner_options):
    """Meta-train ProtoNets or MAML on pseudo-tasks (or on true labels: the supervised oracle).

    Under `torchrun --nproc-per-node N` (or `srun` with N tasks) the N processes split each
    meta-batch (--meta-batch a multiple of N) and average their gradients: gloo on CPU, nccl on GPU.
    """
    from cactus.stages.meta import run_meta

    oracle = None
    if tasks_from == "labels":
        if tasks_file is not None:
            raise CactusError("--tasks-from labels: give --data instead of a TASKS artifact")
        oracle = {"data": data_ref(data, image_size, split, split_seed), "ways": ways, "shots": shots,
                  "queries": queries, "num_tasks": num_tasks}
    options = {k: learner_options[k] for k in LEARNER_KEYS if learner_options.get(k) is not None}
    meta_batch = meta_batch or (8 if algo == "maml" else 1)
    from cactus import distributed

    try:
        result = run_meta(out, tasks_file, algo, options, iterations, meta_batch, seed, device, threads, validation,
                          100, validate_every, resume, checkpoint_every, force, oracle,
                          {"task_chunk": task_chunk, "query_chunk": query_chunk, "recompute": recompute or None})
    finally:
        distributed.teardown()  # under torchrun / srun; a no-op otherwise
    if result.summary.get("rank"):  # ranks > 0 of a distributed run: rank 0 reports
        return
    emit(result.as_dict(), as_json, None if result.skipped else f"wrote {out}")


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--learner", default=None,
              type=click.Choice(["protonets", "maml", "knn", "linear", "mlp", "ridge", "cluster-matching"]),
              help="For an embed artifact: knn (default), linear, mlp, ridge; for a cluster artifact: "
              "cluster-matching; a meta artifact uses its own learner.")
@click.option("--embeddings", "embeddings_path", type=click.Path(path_type=Path), default=None,
              help="cluster-matching: the embed artifact that was clustered.")
@click.option("--ways", default="5", show_default=True, callback=_int_list, help="Comma-separated, e.g. 5,20.")
@click.option("--shots", default="1,5", show_default=True, callback=_int_list, help="Comma-separated, e.g. 1,5.")
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
    from cactus.evaluate import run_evaluate

    report = run_evaluate(artifact, learner, ways, shots, queries, num_tasks, seed, device, threads, embeddings_path,
                          benchmark, runs_path)
    if out is not None:
        write_json(out, report)
    emit(report, as_json, format_report(report))


def write_json(path: Path, payload: dict) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    import os

    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        partial.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise CactusError(f"--out {path}: cannot write ({error.strerror})") from None


def format_report(report: dict) -> str:
    tag = "  [SUPERVISED oracle]" if report["supervised"] else ""
    lines = [f"{report['learner']} on {report['data']} ({report['artifact']}){tag}"]
    if report.get("benchmark") == "omniglot-lake-runs":
        runs = " ".join(f"{e:.0f}" for e in report["per_run_error"].values())
        lines.append(f"  Lake et al. 20 runs of 20-way 1-shot: error {report['error']:.2f}% (per run: {runs})")
    for r in report.get("results", []):
        lines.append(f"  {r['ways']:>3}-way {r['shots']}-shot: {r['accuracy']:6.2f}% +- {r['ci95']:.2f} "
                     f"({r['tasks']} tasks, {r['queries']} queries)")
    return "\n".join(lines)


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@json_option
def info(artifact, as_json):
    """Print an artifact's stage, config, key, inputs and array shapes."""
    from cactus.store import read_artifact

    found = read_artifact(artifact)
    payload = {"path": str(found.path), "stage": found.stage, "key": found.key, "inputs": found.inputs,
               "version": found.version, "created": found.created, "config": found.config,
               "arrays": {name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in found.arrays.items()}}
    if as_json:
        emit(payload, True)
        return
    click.echo(f"{found.path}: {found.stage} artifact, cactus {found.version}, created {found.created}")
    click.echo(f"key     {found.key}")
    click.echo(f"inputs  {', '.join(found.inputs) or '-'}")
    click.echo(f"config  {json.dumps(found.config, sort_keys=True)}")
    for name, a in sorted(found.arrays.items()):
        click.echo(f"  /{name:<40} {str(a.dtype):<8} {tuple(a.shape)}")


from cactus.commands.config import config  # noqa: E402
from cactus.commands.report import report  # noqa: E402
from cactus.commands.rule import rule  # noqa: E402
from cactus.commands.run import run  # noqa: E402

main.add_command(run)
main.add_command(rule)
main.add_command(report)
main.add_command(config)

if __name__ == "__main__":
    main()
