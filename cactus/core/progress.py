"""Progress: a tqdm bar on a terminal, plain periodic lines in batch logs, nothing when quiet."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from cactus.core import log

T = TypeVar("T")


class Progress:
    """Wrap an iterable; call :meth:`set` with named figures (a loss) to show beside it."""

    def __init__(self, iterable: Iterable[T], total: int | None, description: str, every_s: float = 30.0):
        self.iterable = iterable
        self.total = total
        self.description = description
        self.every_s = every_s
        self.figures: dict[str, float] = {}
        self._bar = None
        if log.verbosity() >= 1 and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=description, leave=False, dynamic_ncols=True)

    def set(self, **figures: float) -> None:
        self.figures.update(figures)
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in self.figures.items()}, refresh=False)

    def __iter__(self) -> Iterator[T]:
        last = time.monotonic()
        done = 0
        try:
            for item in self.iterable:
                yield item
                done += 1
                if self._bar is not None:
                    self._bar.update(1)
                elif log.verbosity() >= 1 and time.monotonic() - last >= self.every_s:
                    last = time.monotonic()
                    shown = " ".join(f"{k}={v:.4g}" for k, v in self.figures.items())
                    of = f"/{self.total}" if self.total else ""
                    log.info(f"{self.description}: {done}{of} {shown}".rstrip())
        finally:
            if self._bar is not None:
                self._bar.close()
