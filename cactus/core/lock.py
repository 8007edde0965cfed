"""Lock files beside artifacts, so that concurrent jobs never write the same file twice.

Why not ``fcntl``/``flock`` (or the ``filelock`` package's default lock, built on them): cactus runs
as batch jobs on HPC clusters, where two jobs writing one artifact usually sit on different nodes
sharing an NFS or Lustre folder. There ``flock`` is local to a node or silently a no-op, and
``fcntl`` locks depend on a lock daemon and the mount options; a node that dies holding one can
leave it held with nobody able to tell. An ``O_EXCL`` lock file works on every shared file system
cactus meets, and, written with its owner's host and pid, lets a waiter say who it waits for and
take over the lock of a job that died (tests/test_concurrency.py: exclusion between processes,
takeover from a dead pid, takeover from another host after ``stale_after_s``, no takeover of a
live one).

``out.h5.lock`` is created with ``O_CREAT | O_EXCL`` and holds one JSON line: pid, hostname,
creation time and a random token. The holder refreshes its modification time every
``REFRESH_S`` seconds from a daemon thread. A waiter takes the lock over when it is stale:
its pid is dead on this host, or it was not refreshed for ``stale_after_s`` seconds (a holder on
another host that died, or a frozen file system). A stale lock is first renamed to a unique name
(atomic), so two waiters cannot both break it and both win.

Stages use it through :func:`acquire` / :func:`release` keyed by the artifact path: a lock the
process already holds is re-entrant, and every lock still held is released at exit.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path

from cactus.core import log
from cactus.core.atomic import os_reason
from cactus.core.errors import CactusError

REFRESH_S = 30.0
STALE_AFTER_S = float(os.environ.get("CACTUS_LOCK_STALE_S", "600"))
POLL_S = 0.25


def lock_path(target: Path) -> Path:
    """``out.h5`` -> ``out.h5.lock``."""
    target = Path(target)
    return target.with_name(target.name + ".lock")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    except (OverflowError, ValueError):
        return False
    return True


def read_holder(path: Path) -> dict | None:
    """The lock's content ({pid, host, time, token}), {} when unreadable, None when there is no lock."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def owner(holder: dict) -> str:
    """Who holds a lock, as far as its file says: "process 12 on node7", or that it does not say."""
    pid, host = holder.get("pid"), holder.get("host")
    if isinstance(pid, int) and isinstance(host, str) and host:
        return f"process {pid} on {host}"
    return "another job (its lock file does not name its owner yet)"


def stale_reason(path: Path, holder: dict, stale_after_s: float) -> str | None:
    """Why the lock at ``path`` may be taken over, or None when its holder looks alive."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    pid, host = holder.get("pid"), holder.get("host")
    if host == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
        return f"its process {pid} is dead"
    if age > stale_after_s:
        return f"not refreshed for {age:.0f} s"
    if not holder and age > 5.0:  # empty or garbled and not being written right now
        return "it is unreadable"
    return None


class FileLock:
    """An exclusive lock on ``target`` (the artifact path); ``acquire`` waits, ``release`` frees."""

    def __init__(self, target: Path, stale_after_s: float = STALE_AFTER_S, refresh_s: float = REFRESH_S) -> None:
        self.target = Path(target)
        self.path = lock_path(self.target)
        self.stale_after_s = stale_after_s
        self.refresh_s = min(refresh_s, stale_after_s / 4)
        self.token = secrets.token_hex(8)
        self.waited = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as error:
            raise CactusError(f"{self.path}: cannot create lock file ({os_reason(error)})") from None
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(),
                           "token": self.token}, handle)
        except OSError as error:  # a full disk: the empty lock file must not stay behind
            self.path.unlink(missing_ok=True)
            raise CactusError(f"{self.path}: cannot create lock file ({os_reason(error)})") from None
        return True

    def _break(self, holder: dict, reason: str) -> None:
        """Move a stale lock aside; put it back if it turns out to be a fresh one."""
        aside = self.path.with_name(f"{self.path.name}.stale.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        moved = read_holder(aside)
        if moved != holder and moved is not None:  # another waiter already replaced it: restore
            try:
                os.link(aside, self.path)
            except OSError:
                pass
        else:
            log.warn(f"{self.path}: removed a stale lock ({reason})")
        aside.unlink(missing_ok=True)

    def acquire(self, timeout_s: float | None = None) -> bool:
        """Wait until the lock is ours; returns whether we had to wait for another job."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CactusError(f"{self.target}: cannot create its folder ({error.strerror})") from None
        started = time.monotonic()
        announced = False
        while not self._try_create():
            holder = read_holder(self.path)
            if holder is None:
                continue
            reason = stale_reason(self.path, holder, self.stale_after_s)
            if reason is not None:
                self._break(holder, reason)
                continue
            if not announced:
                log.info(f"{self.target}: being written by {owner(holder)}; waiting for it (lock {self.path})")
                announced = True
            self.waited = True
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise CactusError(f"{self.path}: still locked after {timeout_s:.0f} s; is another job writing it?")
            time.sleep(POLL_S)
        self._stop.clear()
        self._thread = threading.Thread(target=self._refresh, name=f"lock-refresh {self.path.name}", daemon=True)
        self._thread.start()
        return self.waited

    def _refresh(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        """Remove the lock file if it is still ours."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)
        holder = read_holder(self.path)
        if holder and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *_exc) -> None:
        self.release()


_held: dict[Path, FileLock] = {}


def acquire(target: Path) -> bool:
    """Lock the artifact ``target`` for this process (re-entrant); returns whether it waited."""
    target = Path(target).absolute()
    if target in _held:
        return False
    lock = FileLock(target)
    waited = lock.acquire()
    _held[target] = lock
    return waited


def release(target: Path) -> None:
    """Release this process's lock on ``target``, if it holds one."""
    lock = _held.pop(Path(target).absolute(), None)
    if lock is not None:
        lock.release()


@atexit.register
def release_all() -> None:
    """Release every lock this process holds: when a command ends, however it ends, and at exit."""
    for target in list(_held):
        release(target)
