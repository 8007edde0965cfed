"""Config files (TOML) for the CLI, and where each effective option value came from.

A config file has one table per command, named as on the command line; a nested group's
commands are sub-tables, and top-level keys set the main group's own options::

    verbose = true
    [run]
    partitions = 20
    eval-shots = [1, 5]
    [rule.meta-train]
    outer-steps = 500

Keys may be spelled as the option (``meta-lr``) or as its Python name (``meta_lr``); lists
become comma-separated strings for options that take one string (``--eval-shots 1,5``).
Precedence, lowest first: the option's default < a ``cactus run --preset`` < the file < the
environment (``CACTUS_<COMMAND>_<OPTION>``) < the command line. The file is handed to click as
its ``default_map``, so click's own resolution order gives exactly this.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from cactus.core.errors import CactusError

SOURCE_NAMES = {
    click.core.ParameterSource.COMMANDLINE: "command line",
    click.core.ParameterSource.ENVIRONMENT: "environment",
    click.core.ParameterSource.DEFAULT_MAP: "file",
    click.core.ParameterSource.DEFAULT: "default",
    click.core.ParameterSource.PROMPT: "prompt",
}


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a missing file or a syntax error is one CactusError line naming it."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise CactusError(f"--config {path}: no such file") from None
    except OSError as error:
        raise CactusError(f"--config {path}: cannot read ({error.strerror})") from None
    except tomllib.TOMLDecodeError as error:
        raise CactusError(f"--config {path}: not valid TOML ({error})") from None
    except UnicodeDecodeError:
        hint = "; to replay an artifact give it to the command: cactus run --config FILE.h5" \
            if Path(path).suffix.lower() in (".h5", ".hdf5") else ""
        raise CactusError(f"--config {path}: not a TOML file (not UTF-8 text){hint}") from None


def _param_for(command: click.Command, key: str) -> click.Parameter | None:
    """The parameter a config key names: ``meta-lr``, ``meta_lr`` or ``--meta-lr``."""
    wanted = key.lstrip("-").replace("_", "-")
    for param in command.params:
        if param.name is None or param.name == "help":
            continue
        names = {param.name.replace("_", "-")} | {o.lstrip("-") for o in param.opts if o.startswith("--")}
        if wanted in names:
            return param
    return None


def _convert(param: click.Parameter, value: Any) -> Any:
    """A TOML list for a one-string option (``eval-shots = [1, 5]``) becomes ``"1,5"``."""
    from cactus.cli.options import DeclaredType

    if isinstance(param.type, DeclaredType):
        return value  # checked against its declaration when click converts it
    if isinstance(value, list) and param.nargs == 1 and not getattr(param, "multiple", False):
        return ",".join(str(v) for v in value)
    return value


def to_default_map(command: click.Command, table: dict[str, Any], where: str) -> dict[str, Any]:
    """Check a config table against ``command`` and key it by parameter name (click's default_map).

    An unknown key or command is an error naming the file and the key, never silently ignored.
    """
    result: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict) and isinstance(command, click.Group):
            sub = command.commands.get(key)
            if sub is None:
                raise CactusError(f"--config {where}: [{key}] is not a cactus command "
                                  f"(expected one of {', '.join(sorted(command.commands))})")
            result[key] = to_default_map(sub, value, where)
            continue
        param = _param_for(command, key)
        if param is None or "--config" in param.opts:
            section = command.name if command.name and command.name != "main" else "top level"
            raise CactusError(f"--config {where}: '{key}' is not an option of {section}")
        result[param.name] = _convert(param, value)
    return result


def load_into(ctx: click.Context, path: Path, command: click.Command | None = None) -> None:
    """Read ``path`` and merge it into ``ctx.default_map`` (the whole file, or one command's table)."""
    table = read_toml(path)
    mapped = to_default_map(command or ctx.command, table, str(path))
    ctx.default_map = _merge(dict(ctx.default_map or {}), mapped)
    ctx.meta["cactus.config_file"] = str(path)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = _merge(dict(base[key]), value)
        else:
            base[key] = value
    return base


def config_option_callback(ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    """Eager callback of the main group's ``--config``: the file becomes click's default_map."""
    if value is not None and not ctx.resilient_parsing:
        try:
            load_into(ctx, Path(value))
        except CactusError as error:
            click.echo(f"cactus: error: {error}", err=True)
            ctx.exit(1)
    return value


# -- the effective configuration ------------------------------------------------------------


def resolve_command(root: click.Group, words: list[str]) -> tuple[list[str], click.Command, list[str]]:
    """Split ``words`` into a command path and that command's own arguments."""
    path: list[str] = []
    command: click.Command = root
    rest = list(words)
    while rest and isinstance(command, click.Group) and rest[0] in command.commands:
        path.append(rest[0])
        command = command.commands[rest.pop(0)]
    if not path:
        wanted = rest[0] if rest else ""
        raise CactusError(f"cactus config show {wanted}: not a cactus command "
                          f"(expected one of {', '.join(sorted(root.commands))})")
    return path, command, rest


def effective(root_ctx: click.Context, path: list[str], command: click.Command,
              args: list[str]) -> list[dict[str, Any]]:
    """Every option of ``command`` with its effective value and where that value came from.

    ``root_ctx`` carries the config file's default_map and the ``CACTUS`` environment prefix;
    ``args`` are command-line arguments as the user would give them to the command.
    """
    parent = root_ctx
    for name in path[:-1]:  # intermediate groups: their context carries the nested default_map
        group = parent.command.commands[name] if isinstance(parent.command, click.Group) else None
        parent = group.make_context(name, [], parent=parent, resilient_parsing=True)
    ctx = command.make_context(path[-1], list(args), parent=parent, resilient_parsing=True)
    file_name = root_ctx.meta.get("cactus.config_file")
    rows = []
    for param in command.params:
        option = display_name(param)
        if option in ("help", "config", "version"):
            continue
        source = ctx.get_parameter_source(param.name)
        where = SOURCE_NAMES.get(source, str(source))
        if where == "file" and file_name:
            where = f"file {file_name}"
        elif where == "environment":
            envvar = param.envvar or (f"{ctx.auto_envvar_prefix}_{param.name.upper()}" if ctx.auto_envvar_prefix
                                      else None)
            where = f"environment {envvar}" if envvar else where
        value = ctx.params.get(param.name)
        if value is getattr(click.core, "UNSET", None):  # click >= 8.3: a missing value
            value = None
        rows.append({"option": option, "value": _plain(value), "source": where})
    _mark_preset(path, rows, ctx)
    return rows


def display_name(param: click.Parameter) -> str:
    """The name a user writes: the first long option without dashes (``--json`` -> ``json``)."""
    long_names = [o[2:] for o in param.opts if o.startswith("--")]
    return long_names[0] if long_names else (param.name or "").replace("_", "-")


def _mark_preset(path: list[str], rows: list[dict[str, Any]], ctx: click.Context) -> None:
    """``cactus run --preset``: options left at their default take the preset's value."""
    if path != ["run"]:
        return
    values = {row["option"]: row for row in rows}
    preset, budget = values.get("preset", {}).get("value"), values.get("budget", {}).get("value") or "cpu"
    if not preset:
        return
    from cactus.stages.presets import preset_values

    params = {param.name: param for param in ctx.command.params}
    for name, value in preset_values(preset, budget).items():
        row = values.get(name.replace("_", "-"))
        if row is not None and row["source"] == "default":
            row.update(value=_plain(params[name].type_cast_value(ctx, value)), source=f"preset {preset} ({budget})")


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def as_toml(sections: dict[str, list[dict[str, Any]]]) -> str:
    """The effective config as a TOML file, written by tomli-w, each value's source as a comment.

    Options without a value (None has no TOML form) are listed commented out.
    """
    import re

    import tomli_w

    lines: list[str] = []
    for section, rows in sections.items():
        nested: dict[str, Any] = {"x": 0}
        for name in reversed(section.split(".")):  # [rule.meta-train]: the table meta-train inside rule
            nested = {name: nested}
        lines.append(tomli_w.dumps(nested).splitlines()[0])
        for row in rows:
            if row["value"] is None:
                lines.append(f"# {row['option']} =  (unset; {row['source']})")
            else:  # one line per option (tomli-w spreads arrays over lines; its strings hold no raw newline)
                pair = re.sub(r"\n\s*", " ", tomli_w.dumps({row["option"]: row["value"]}).strip())
                lines.append(f"{pair}  # {row['source']}")
        lines.append("")
    return "\n".join(lines)


def run_config_callback(ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    """Eager callback of ``cactus run --config``: a TOML file sets this command's options (its [run]
    table, or its top-level keys), an artifact (.h5) is kept as the thing to replay."""
    if value is None:
        return value
    path = Path(value)
    if path.suffix.lower() in (".h5", ".hdf5"):
        if not path.is_file() and not ctx.resilient_parsing:
            click.echo(f"cactus: error: --config {path}: no such artifact", err=True)
            ctx.exit(1)
        return path
    try:
        table = read_toml(path)
        name = ctx.info_name or "run"
        if isinstance(table.get(name), dict):
            table = table[name]
        ctx.default_map = _merge(dict(ctx.default_map or {}), to_default_map(ctx.command, table, str(path)))
        ctx.meta["cactus.config_file"] = str(path)
    except CactusError as error:
        if not ctx.resilient_parsing:  # `cactus config show run --config F` reads F too; completion ignores it
            click.echo(f"cactus: error: {error}", err=True)
            ctx.exit(1)
    return None
