"""``cactus config show``: the effective options of a command and where each value came from."""

from __future__ import annotations

import json

import click


def _commands(group: click.Group, prefix: list[str]) -> list[list[str]]:
    """Every leaf command path under ``group`` (``[['run'], ['rule', 'meta-train'], ...]``)."""
    paths = []
    for name, command in sorted(group.commands.items()):
        if name in ("config", "report") and not prefix:
            continue  # not pipeline commands: nothing worth configuring in a file
        if isinstance(command, click.Group):
            paths.extend(_commands(command, prefix + [name]))
        else:
            paths.append(prefix + [name])
    return paths


@click.group()
def config() -> None:
    """Config files: `cactus --config run.toml COMMAND` reads one [COMMAND] table of options each.

    Precedence, lowest first: default < preset (cactus run) < file < environment CACTUS_* < command line.
    """


@config.command(context_settings={"ignore_unknown_options": True})
@click.argument("words", nargs=-1, type=click.UNPROCESSED, metavar="[COMMAND [OPTIONS]...]")
@click.option("--json", "as_json", is_flag=True, help="Print {command: {option: {value, source}}} as JSON.")
@click.pass_context
def show(ctx, words, as_json):
    """Print the effective config of COMMAND (all commands without one) as TOML, with each value's source.

    Options given after COMMAND count as its command line: ``cactus config show run --partitions 5``.
    The output is itself a valid config file: ``cactus config show run > run.toml``.
    """
    from cactus.cli.config_file import as_toml, effective, resolve_command

    root = ctx.find_root()
    if words:
        path, command, args = resolve_command(root.command, list(words))
        targets = [(path, command, args)]
    else:
        targets = []
        for path in _commands(root.command, []):
            command = root.command
            for name in path:
                command = command.commands[name]
            targets.append((path, command, []))
    sections = {".".join(path): effective(root, path, command, args) for path, command, args in targets}
    if as_json:
        payload = {name: {row["option"]: {"value": row["value"], "source": row["source"]} for row in rows}
                   for name, rows in sections.items()}
        click.echo(json.dumps(payload, indent=2, sort_keys=True))
    else:
        click.echo(as_toml(sections).rstrip())
