"""``cactus info``: an artifact's header and array shapes."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cactus.cli.options import json_option
from cactus.cli.output import emit


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@json_option
def info(artifact, as_json):
    """Print an artifact's stage, config, key, inputs and array shapes."""
    from cactus.core.store import read_artifact

    found = read_artifact(artifact, arrays=False)  # metadata only: a crafted shape cannot exhaust memory
    payload = {"path": str(found.path), "stage": found.stage, "key": found.key, "inputs": found.inputs,
               "version": found.version, "created": found.created, "config": found.config,
               "arrays": {name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in found.layout.items()}}
    if as_json:
        emit(payload, True)
        return
    click.echo(f"{found.path}: {found.stage} artifact, cactus {found.version}, created {found.created}")
    click.echo(f"key     {found.key}")
    click.echo(f"inputs  {', '.join(found.inputs) or '-'}")
    click.echo(f"config  {json.dumps(found.config, sort_keys=True)}")
    for name, a in sorted(found.layout.items()):
        click.echo(f"  /{name:<40} {str(a.dtype):<8} {tuple(a.shape)}")
