"""How a stage option is declared: one dataclass field with metadata, read by everything else.

A stage's settings are a frozen dataclass (:mod:`cactus.stages.configs`). Each field is made by
:func:`option`, whose metadata (:class:`Opt`) says what a user may give and what it means:
help text, kind, choices, valid range, short flags, whether the value enters the artifact key,
and the name the option has in ``cactus run`` when the stage's own name would clash there.
From these fields :mod:`cactus.cli.options` builds each command's click options and ``cactus
run``'s, the TOML config file is checked against those options, the stage computes its key
from the fields marked ``key``, and replay rebuilds the dataclass from a stored config.

A field made by :func:`group` holds a nested declared dataclass (the dataset reference, the
oracle's task shape); its fields appear on the command line without a prefix.

This module imports nothing heavy: ``cactus --help`` builds every command from it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cactus.core.errors import CactusError

META = "cactus"


@dataclass(frozen=True)
class Opt:
    """What one stage option accepts and means (the metadata of its dataclass field).

    kind: int, float, str, bool (a flag), "ints" (a comma-separated list of positive integers) or Path.
    choices: the allowed strings, or a function returning them (an encoder registry read lazily).
    low / high: the valid range (inclusive; ``low_open`` excludes ``low``); floats must be finite.
    key: True when the value enters the artifact key as it is; a string names the part of the key
    the stage builds from it ("learner", "oracle", "encoder", "data"); False when it only changes
    speed, memory or where things go.
    name: the option on the stage's own command [the field name]; run_name: on ``cactus run`` [name].
    """

    help: str
    kind: Any = str
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    short: tuple[str, ...] = ()
    key: bool | str = True
    name: str | None = None
    run_name: str | None = None
    default_help: str | None = None
    metavar: str | None = None

    def allowed(self) -> tuple[str, ...] | None:
        """The choices, resolving a lazily computed list."""
        return self.choices() if callable(self.choices) else self.choices

    def check(self, option: str, value: Any) -> None:
        """Raise a one-line CactusError naming ``option`` when ``value`` is out of range or not a choice."""
        if value is None:
            return
        if self.kind == "ints":
            for item in value:
                self._check_number(option, item)
            return
        if self.kind in (int, float):
            self._check_number(option, value)
        elif self.kind is bool and not isinstance(value, bool):
            raise CactusError(f"{option} {value!r}: expected true or false")
        elif self.kind is str and not isinstance(value, str):
            raise CactusError(f"{option} {value!r}: expected a string")
        choices = self.allowed()
        if choices is not None and value not in choices:
            raise CactusError(f"{option} {value!r}: expected one of {', '.join(choices)}")

    def _check_number(self, option: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CactusError(f"{option} {value!r}: expected a number")
        if isinstance(value, float) and not math.isfinite(value):
            raise CactusError(f"{option} {value}: must be a finite number")
        if self.kind in (int, "ints") and value != int(value):
            raise CactusError(f"{option} {value}: expected an integer")
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            bound = f"greater than {self.low:g}" if self.low_open else f"at least {self.low:g}"
            raise CactusError(f"{option} {value}: must be {bound}")
        if self.high is not None and value > self.high:
            raise CactusError(f"{option} {value}: must be at most {self.high:g}")


def option(default: Any, help: str, **meta: Any) -> Any:
    """A declared stage option: a dataclass field whose metadata is an :class:`Opt`."""
    declared = Opt(help=help, **meta)
    if isinstance(default, (list, tuple)):
        value = tuple(default)
        return dataclasses.field(default_factory=lambda: value, metadata={META: declared})
    return dataclasses.field(default=default, metadata={META: declared})


@dataclass(frozen=True)
class Group:
    """The metadata of a field holding a nested declared dataclass; ``key`` as in :class:`Opt`."""

    cls: type
    key: bool | str = True


def group(cls: type, key: bool | str = True) -> Any:
    """A field holding a nested declared dataclass; its options are listed as the stage's own."""
    return dataclasses.field(default_factory=cls, metadata={META: Group(cls, key)})


@dataclass(frozen=True)
class Declared:
    """One declared option as a command sees it: the field's path in the config and its metadata."""

    path: tuple[str, ...]
    opt: Opt
    default: Any

    @property
    def field(self) -> str:
        return self.path[-1]

    @property
    def name(self) -> str:
        """The option's Python name on the stage's own command (``meta_lr``)."""
        return (self.opt.name or self.field).replace("-", "_")

    @property
    def run_name(self) -> str:
        """The option's Python name on ``cactus run`` (``eval_queries`` for evaluate's ``queries``)."""
        return (self.opt.run_name or self.name).replace("-", "_")

    def flag(self, run: bool = False) -> str:
        """``--meta-lr`` (or its ``cactus run`` spelling)."""
        return "--" + (self.run_name if run else self.name).replace("_", "-")


def declared(cls: type, prefix: tuple[str, ...] = (), key: bool | str | None = None) -> Iterator[Declared]:
    """Every option of a config class, nested groups flattened, in declaration order.

    key: only the options that enter the key this way (a group counts with its own ``key``).
    """
    for field in dataclasses.fields(cls):
        meta = field.metadata.get(META)
        if isinstance(meta, Group):
            if key is None or meta.key == key:
                yield from declared(meta.cls, prefix + (field.name,), None if key is None else True)
            continue
        if not isinstance(meta, Opt) or (key is not None and meta.key != key):
            continue
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = None
        yield Declared(prefix + (field.name,), meta, default)


def value_at(config: Any, path: tuple[str, ...]) -> Any:
    """The value of a (nested) declared field."""
    for name in path:
        config = getattr(config, name)
    return config


def key_config(config: Any, key: bool | str = True) -> dict[str, Any]:
    """The values of ``config``'s options declared with this ``key`` marker, by field name (groups flattened)."""
    return {entry.field: value_at(config, entry.path) for entry in declared(type(config), key=key)}


class Checked:
    """Mixin of the config dataclasses: every value is checked against its declaration on construction.

    So a value out of range is refused wherever it comes from (command line, TOML, ``cactus run``,
    a preset, replay of a stored config, Python): one CactusError line naming the option.
    """

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            meta = field.metadata.get(META)
            if isinstance(meta, Opt):
                value = getattr(self, field.name)
                if meta.kind == "ints" and isinstance(value, list):
                    object.__setattr__(self, field.name, tuple(value))
                    value = tuple(value)
                if meta.kind is Path and isinstance(value, str):
                    value = Path(value)
                    object.__setattr__(self, field.name, value)
                if meta.kind is int and isinstance(value, float) and value.is_integer():  # 5.0 from a JSON config
                    value = int(value)
                    object.__setattr__(self, field.name, value)
                meta.check("--" + (meta.name or field.name).replace("_", "-"), value)


def build(cls: type, values: dict[str, Any], by: str = "name") -> Any:
    """The config ``cls`` from option values keyed by Python name (``by`` "name"), ``cactus run`` name
    ("run") or field name ("field"). Options missing from ``values`` keep their declared default."""
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        meta = field.metadata.get(META)
        if isinstance(meta, Group):
            kwargs[field.name] = build(meta.cls, values, by)
        elif isinstance(meta, Opt):
            entry = Declared((field.name,), meta, None)
            name = {"name": entry.name, "run": entry.run_name, "field": field.name}[by]
            if name in values:
                kwargs[field.name] = values[name]
    return cls(**kwargs)


def configure(cls: type, config: Any = None, fields: dict[str, Any] | None = None) -> Any:
    """A stage's config: ``config`` itself, or ``cls`` built from option values by field name (Python callers).

    An unknown name is a TypeError, as for any function argument.
    """
    fields = fields or {}
    if config is not None:
        if fields:
            raise TypeError(f"give a {cls.__name__} or its fields ({', '.join(fields)}), not both")
        return config
    names = {entry.field for entry in declared(cls)}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no option {', '.join(unknown)}")
    return build(cls, fields, by="field")


def from_stored(cls: type, stored: dict[str, Any], where: Path, stage: str, fixed: dict[str, Any] | None = None,
                old_defaults: dict[str, Any] | None = None, derived: tuple[str, ...] = ()) -> Any:
    """Rebuild ``cls`` from the config an artifact stores (its options declared ``key=True``, by field name).

    fixed: values of other options (by field name, given by the caller); old_defaults: what a key
    missing from an artifact of an older version meant; derived: stored keys the stage computes.
    A key that is neither declared nor derived, or a declared one missing without an old default,
    is one CactusError line telling the user to recompute the artifact.
    """
    if not isinstance(stored, dict):
        raise CactusError(f"{where}: its {stage} config is not a table; recompute it")
    names = [entry.field for entry in declared(cls, key=True)]
    unknown = sorted(set(stored) - set(names) - set(derived))
    if unknown:
        raise CactusError(f"{where}: its {stage} config has {', '.join(unknown)}, not an option of this version "
                          "of cactus; recompute it")
    values = dict(fixed or {})
    for name in names:
        if name in stored:
            values[name] = stored[name]
        elif old_defaults and name in old_defaults:
            values[name] = old_defaults[name]
        else:
            raise CactusError(f"{where}: its {stage} config lacks '{name}' (made by an older cactus); recompute it")
    try:
        return build(cls, values, by="field")
    except CactusError as error:
        raise CactusError(f"{where}: stored config: {error}; recompute it") from None
    except TypeError as error:
        raise CactusError(f"{where}: stored {stage} config does not fit ({error}); recompute it") from None
