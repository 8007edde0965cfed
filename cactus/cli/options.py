"""Click options generated from the stage declarations, and the few options every command shares.

:func:`stage_options` turns the fields of a stage's config dataclass (:mod:`cactus.stages.configs`)
into that command's click options; :func:`run_options` turns the fields of every stage into
``cactus run``'s, one option per run name. Each value is checked against its declaration (kind,
range, choices) while click parses it, so a bad value from the command line, the environment or
a TOML file is a click usage error naming the option (exit 2), never a traceback.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click

from cactus.core.errors import CactusError
from cactus.stages.options import Declared, Opt, declared


def int_list(_ctx, param, value):
    """Callback: ``"5,20"`` -> [5, 20] (positive integers)."""
    if value is None:
        return None
    try:
        numbers = [int(v) for v in str(value).split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None
    if not numbers or min(numbers) < 1:
        raise click.BadParameter(f"{value!r}: give positive integers such as 5,20")
    return numbers


class OutOfRange(click.BadParameter):
    """A value that parses but is outside its declared range or kind: bad input (exit 1), as a CactusError is.

    A value that does not parse at all (``--partitions abc``) stays click's usage error (exit 2).
    """

    exit_code = 1


class DeclaredType(click.ParamType):
    """A number, a list of integers or a string, checked against its declaration (:class:`Opt`)."""

    def __init__(self, opt: Opt, flag: str) -> None:
        self.opt, self.flag = opt, flag
        self.name = {int: "integer", float: "float", "ints": "list"}.get(opt.kind, "text")

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return {int: "INTEGER", float: "FLOAT", "ints": "N[,N...]"}.get(self.opt.kind, "TEXT")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None:
            return None
        try:
            parsed = self._parse(value)
        except CactusError as error:
            self.fail(str(error).removeprefix(f"{self.flag} "), param, ctx)
        try:
            self.opt.check(self.flag, parsed)
        except CactusError as error:
            raise OutOfRange(str(error).removeprefix(f"{self.flag} "), ctx=ctx, param=param) from None
        return parsed

    def _parse(self, value: Any) -> Any:
        kind = self.opt.kind
        if kind == "ints":
            items = value if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v.strip()]
            if not items:
                raise CactusError(f"{self.flag} {value!r}: give integers such as 5,20")
            return tuple(self._number(v, int) for v in items)
        if kind in (int, float):
            return self._number(value, kind)
        if kind is Path:
            return Path(value)
        return value if isinstance(value, str) else str(value)

    def _number(self, value: Any, kind: type) -> int | float:
        if isinstance(value, bool):
            raise CactusError(f"{self.flag} {value!r}: expected a number")
        if isinstance(value, str):
            try:
                number = float(value) if kind is float else int(value.strip())
            except ValueError:
                raise CactusError(f"{self.flag} {value!r}: expected {'a number' if kind is float else 'an integer'}")\
                    from None
        elif isinstance(value, (int, float)):
            number = value
        else:
            raise CactusError(f"{self.flag} {value!r}: expected a number")
        if kind is int and isinstance(number, float):
            if not math.isfinite(number) or number != int(number):
                raise CactusError(f"{self.flag} {value!r}: expected an integer")
            number = int(number)
        return float(number) if kind is float else number


def _range_text(opt: Opt) -> str | None:
    if opt.low is None and opt.high is None:
        return None
    low = f"{'>' if opt.low_open else '>='}{opt.low:g}" if opt.low is not None else ""
    high = f"<={opt.high:g}" if opt.high is not None else ""
    return " and ".join(p for p in (low, high) if p)


def make_option(entry: Declared, run: bool = False, default: Any = ..., default_help: str | None = None,
                help_prefix: str = "") -> Callable:
    """The click option of one declared field (``run``: under its ``cactus run`` name, without short flags)."""
    opt = entry.opt
    name = entry.run_name if run else entry.name
    flag = "--" + name.replace("_", "-")
    value = entry.default if default is ... else default
    if isinstance(value, tuple) and opt.kind == "ints":
        value = ",".join(str(v) for v in value)
    extra = default_help if default_help is not None else opt.default_help
    notes = [n for n in (_range_text(opt), extra) if n]
    help_text = help_prefix + opt.help + (f"  [{'; '.join(notes)}]" if notes else "")
    names = [flag, *(() if run else opt.short), name]
    kwargs: dict[str, Any] = {"help": help_text, "default": value, "show_default": value not in (None, False)}
    if opt.kind is bool:
        return click.option(*names, is_flag=True, **kwargs)
    choices = opt.allowed()
    if choices is not None:
        return click.option(*names, type=click.Choice(list(choices)), **kwargs)
    return click.option(*names, type=DeclaredType(opt, flag), metavar=opt.metavar, **kwargs)


def stage_options(cls: type, skip: Iterable[str] = (), help_prefix: dict[str, str] | None = None) -> Callable:
    """Decorator adding every declared option of the config class ``cls`` (less ``skip``) to a command."""
    prefixes = help_prefix or {}
    options = [make_option(entry, help_prefix=prefixes.get(entry.path[0], "")) for entry in declared(cls)
               if entry.name not in skip]
    return with_options(options)


def run_entries(configs: dict[str, type]) -> dict[str, list[tuple[str, Declared]]]:
    """{run name: [(stage, declaration), ...]}: the stages' options as ``cactus run`` merges them.

    Options of several stages under one run name (``seed``, ``device``, the dataset, the task
    shape) are one option of ``cactus run`` given to each of them; they must be declared alike.
    """
    merged: dict[str, list[tuple[str, Declared]]] = {}
    for stage, cls in configs.items():
        for entry in declared(cls):
            merged.setdefault(entry.run_name, []).append((stage, entry))
    for name, entries in merged.items():
        first = entries[0][1]
        for stage, entry in entries[1:]:
            same = (entry.opt.kind, entry.default, entry.opt.allowed(), entry.opt.low, entry.opt.low_open) == (
                first.opt.kind, first.default, first.opt.allowed(), first.opt.low, first.opt.low_open)
            if not same:
                raise TypeError(f"cactus run --{name.replace('_', '-')}: {stage} declares it unlike "
                                f"{entries[0][0]}; give one of them its own run_name")
    return merged


def run_options(configs: dict[str, type], derived: dict[str, str]) -> Callable:
    """Decorator adding one option per run name; ``derived``: {run name: how run derives it when not given}."""
    options = []
    for name, entries in run_entries(configs).items():
        entry = entries[0][1]
        stages = sorted({stage for stage, _ in entries}, key=list(configs).index)
        prefix = f"{'/'.join(stages)}: "
        if name in derived:
            options.append(make_option(entry, run=True, default=None, default_help=derived[name], help_prefix=prefix))
        else:
            options.append(make_option(entry, run=True, help_prefix=prefix))
    return with_options(options)


json_option = click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
force_option = click.option("--force", is_flag=True, help="Recompute even if the artifact is up to date.")


def with_options(options):
    def apply(function):
        for option in reversed(options):
            function = option(function)
        return function
    return apply
