"""Messages on stderr, with verbosity set once by the CLI (-q / -v)."""

from __future__ import annotations

import sys

_level = 1  # 0 quiet, 1 normal, 2 verbose


def set_verbosity(level: int) -> None:
    global _level
    _level = level


def verbosity() -> int:
    return _level


def info(message: str) -> None:
    if _level >= 1:
        print(f"cactus: {message}", file=sys.stderr, flush=True)


def debug(message: str) -> None:
    if _level >= 2:
        print(f"cactus: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"cactus: warning: {message}", file=sys.stderr, flush=True)
