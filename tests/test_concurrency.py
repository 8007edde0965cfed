"""Concurrent jobs on one artifact: one computes, the other waits and reuses; stale locks are recovered."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from cactus.core.lock import FileLock, lock_path
from tests.conftest import REPO


@pytest.fixture(scope="module")
def embed_file(tmp_path_factory):
    from cactus.stages.common import DataRef
    from cactus.stages.embed import run_embed

    path = tmp_path_factory.mktemp("embed") / "embeddings.h5"
    run_embed(path, DataRef("digits"), "pca", {"dim": 16})
    return path


def start_cluster(embed_file, out, stderr_file):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["cluster", str(embed_file), "-o", str(out), "-k", "30", "-p", "6", "--json"]
    return subprocess.Popen([sys.executable, "-c", "from cli import main; main()", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=stderr_file.open("w"), text=True)


def test_two_concurrent_cluster_jobs_write_one_artifact_and_one_reuses_it(embed_file, tmp_path):
    from cactus.core.store import read_artifact

    out = tmp_path / "run" / "partitions.h5"
    out.parent.mkdir()
    logs = [tmp_path / f"job{i}.err" for i in range(2)]
    # Hold the lock while both start, so that both find the cache empty and must wait on each other.
    holder = FileLock(out)
    holder.acquire()
    jobs = [start_cluster(embed_file, out, log) for log in logs]
    deadline = time.monotonic() + 60
    while not all("being written by" in log.read_text() for log in logs):
        assert time.monotonic() < deadline and all(job.poll() is None for job in jobs)
        time.sleep(0.1)
    holder.release()
    results = [(job.wait(timeout=120), job.communicate()[0], log.read_text())
               for job, log in zip(jobs, logs, strict=True)]
    assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    summaries = [json.loads(stdout) for _, stdout, _ in results]
    assert sorted(s["skipped"] for s in summaries) == [False, True]
    assert summaries[0]["key"] == summaries[1]["key"]
    reuser = next(err for (_, _, err), s in zip(results, summaries, strict=True) if s["skipped"])
    assert "reusing it" in reuser
    artifact = read_artifact(out, stage="cluster")
    assert artifact.key == summaries[0]["key"] and artifact.array("labels").shape[0] == 6
    assert [p.name for p in out.parent.iterdir()] == ["partitions.h5"]  # no temporary or lock file left


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_stale_lock_from_a_dead_process_is_recovered(embed_file, tmp_path):
    out = tmp_path / "partitions.h5"
    lock_path(out).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "time": 0, "token": "x"}))
    job = start_cluster(embed_file, out, tmp_path / "job.err")
    code, stderr = job.wait(timeout=120), (tmp_path / "job.err").read_text()
    assert code == 0, stderr
    assert "removed a stale lock (its process" in stderr and "is dead" in stderr
    assert out.is_file() and not lock_path(out).exists()


def test_a_lock_not_refreshed_for_too_long_is_stale_even_from_another_host(tmp_path):
    target = tmp_path / "x.h5"
    lock_path(target).write_text(json.dumps({"pid": 1, "host": "elsewhere", "time": 0, "token": "y"}))
    old = time.time() - 3600
    os.utime(lock_path(target), (old, old))
    lock = FileLock(target, stale_after_s=60)
    assert lock.acquire(timeout_s=5) is False
    assert json.loads(lock_path(target).read_text())["pid"] == os.getpid()
    lock.release()
    assert not lock_path(target).exists()


def test_a_live_lock_from_another_host_is_waited_for(tmp_path):
    from cactus.core.errors import CactusError

    target = tmp_path / "x.h5"
    lock_path(target).write_text(json.dumps({"pid": 1, "host": "elsewhere", "time": time.time(), "token": "z"}))
    with pytest.raises(CactusError, match="still locked"):
        FileLock(target, stale_after_s=60).acquire(timeout_s=0.5)
    assert json.loads(lock_path(target).read_text())["token"] == "z"  # never broken


def test_threads_take_the_lock_one_at_a_time(tmp_path):
    import threading

    target = tmp_path / "x.h5"
    inside, overlaps = [], []

    def work() -> None:
        with FileLock(target):
            inside.append(1)
            overlaps.append(len(inside))
            time.sleep(0.05)
            inside.pop()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert np.max(overlaps) == 1 and len(overlaps) == 4


HOLD_SCRIPT = """
import sys, time
from cactus.core.lock import FileLock
with FileLock(sys.argv[1]):
    start = time.time()
    time.sleep(0.3)
    print(start, time.time(), flush=True)
"""


def test_processes_take_the_lock_one_at_a_time(tmp_path):
    """Exclusion between processes (separate pids, as jobs on different nodes are): their held spans never overlap."""
    target = tmp_path / "x.h5"
    jobs = [subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, str(target)], cwd=REPO, stdout=subprocess.PIPE,
                             text=True) for _ in range(3)]
    spans = sorted(tuple(map(float, job.communicate(timeout=60)[0].split())) for job in jobs)
    assert [job.returncode for job in jobs] == [0, 0, 0] and len(spans) == 3
    assert all(earlier[1] <= later[0] for earlier, later in zip(spans, spans[1:], strict=False)), spans
    assert not lock_path(target).exists()


def test_a_lock_that_names_no_owner_is_waited_for_and_the_message_says_so(tmp_path, capsys):
    """A lock file just created and not yet written (or garbled) is not "process ? on ?"."""
    from cactus.core.errors import CactusError

    target = tmp_path / "x.h5"
    lock_path(target).write_text("")
    with pytest.raises(CactusError, match="still locked"):
        FileLock(target, stale_after_s=60).acquire(timeout_s=0.5)
    err = capsys.readouterr().err
    assert "being written by another job (its lock file does not name its owner yet)" in err and "?" not in err
