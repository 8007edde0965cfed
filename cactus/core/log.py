"""Messages on stderr through the standard ``logging`` module, with verbosity set once by the CLI.

Everything goes to the ``cactus`` logger (children such as ``cactus.store`` inherit it). Its one
handler writes ``cactus: message`` and ``cactus: warning: message`` to whatever ``sys.stderr`` is
at the time of the call (so click's test runner and pytest's capture see it). Levels: ``-q`` shows
warnings only (0), the default shows info (1), ``-v`` adds debug lines (2): cache hits and misses
with their keys, bytes written, lock waits.

The functions below are the API the rest of cactus uses; a library user may instead configure the
``cactus`` logger like any other.
"""

from __future__ import annotations

import logging
import sys

LOGGER = logging.getLogger("cactus")
LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


class _StderrHandler(logging.StreamHandler):
    """A StreamHandler bound to the current ``sys.stderr`` at each record, not the one at import."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = "cactus: warning: " if record.levelno >= logging.WARNING else "cactus: "
        return prefix + record.getMessage()


def _install() -> None:
    if not any(isinstance(h, _StderrHandler) for h in LOGGER.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_Format())
        LOGGER.addHandler(handler)
    LOGGER.propagate = False  # one line per message, whatever the root logger does
    if LOGGER.level == logging.NOTSET:
        LOGGER.setLevel(logging.INFO)


_install()


def set_verbosity(level: int) -> None:
    """0: warnings only (-q), 1: normal, 2: debug lines too (-v).

    The CLI calls it once per command; it also undoes a ``logging.config.dictConfig`` run earlier in
    the process (by a library: import-linter does) that disabled existing loggers or removed the handler.
    """
    LOGGER.disabled = False
    _install()
    LOGGER.setLevel(LEVELS[max(0, min(2, level))])


def verbosity() -> int:
    """The current level as 0 (quiet), 1 (normal) or 2 (verbose)."""
    level = LOGGER.getEffectiveLevel()
    return 2 if level <= logging.DEBUG else 1 if level <= logging.INFO else 0


def info(message: str) -> None:
    LOGGER.info(message)


def debug(message: str) -> None:
    LOGGER.debug(message)


def warn(message: str) -> None:
    LOGGER.warning(message)
