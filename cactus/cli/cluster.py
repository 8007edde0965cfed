"""``cactus cluster`` and ``cactus cluster merge``."""

from __future__ import annotations

from pathlib import Path

import click

from cactus.cli.options import force_option, json_option, stage_options
from cactus.cli.output import emit
from cactus.core.errors import CactusError
from cactus.stages.configs import ClusterConfig


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


@click.command(cls=WithSubcommands)
@click.argument("embeddings", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Partition artifact to write.")
@stage_options(ClusterConfig)
@click.option("--shard", default=None, callback=_shard, metavar="I/N",
              help="Compute only partitions p with p % N == I (a batch array task); join with `cluster merge`.")
@force_option
@json_option
def cluster(embeddings, out, shard, force, as_json, **values):
    """Build P k-means partitions of the meta-train embeddings.

    `cactus cluster merge SHARD... -o OUT` joins the artifacts of `--shard 0/N` ... `--shard N-1/N`
    into the artifact one unsharded run writes.
    """
    from cactus.stages.cluster import run_cluster
    from cactus.stages.options import build

    result = run_cluster(out, embeddings, build(ClusterConfig, values), force=force, shard=shard)
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
