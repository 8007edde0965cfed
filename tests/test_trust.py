"""Issue 18 at the artifact store: each case is one line naming the path, exit 1, nothing left behind.

Overwriting (item 1), a full disk (item 2), corrupt data under an intact header (item 3), inputs that
are not regular files (item 4), a header declaring a huge dataset (item 5), an ``h5:`` input whose
``x`` is a group (item 6).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from cactus.core.errors import CactusError
from cactus.core.overwrite import check_output_path, check_report_path
from cactus.core.store import cached_key, compute_key, read_artifact, write_artifact
from tests.conftest import REPO, run_cli


def cactus(*args: str):
    """``cactus ARGS`` in process (click's runner): (exit code, stdout, stderr)."""
    from click.testing import CliRunner

    from cactus.core import log
    from cli import main

    result = CliRunner().invoke(main, list(args))
    log.set_verbosity(1)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def one_error_line(stderr: str, names: str) -> str:
    """The last stderr line is the only error line, and it names ``names``; no traceback."""
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("cactus: error:")]
    assert "Traceback" not in stderr and len(errors) == 1 and lines[-1] == errors[0], stderr
    assert names in errors[0], errors[0]
    return errors[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".lock")))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict[str, Path]:
    """emb.h5 and parts.h5 of a tiny digits run (PCA to 8 dimensions, 2 partitions of 10 clusters)."""
    folder = tmp_path_factory.mktemp("pipeline")
    paths = {"embed": folder / "emb.h5", "cluster": folder / "parts.h5"}
    assert cactus("embed", "--data", "digits", "--method", "pca", "--dim", "8", "-o", str(paths["embed"]))[0] == 0
    assert cactus("cluster", str(paths["embed"]), "-k", "10", "-p", "2", "-o", str(paths["cluster"]))[0] == 0
    return paths


@pytest.fixture
def run(pipeline, tmp_path) -> dict[str, Path]:
    """Fresh copies of the pipeline's artifacts in this test's folder."""
    return {stage: Path(shutil.copy(path, tmp_path / path.name)) for stage, path in pipeline.items()}


# ---- 1. --out replaces only an artifact of the same stage ---------------------------------------------


@pytest.mark.parametrize("force", [False, True])
def test_out_refuses_to_replace_an_artifact_of_another_stage(run, tmp_path, force):
    before = run["embed"].read_bytes()
    code, _, err = cactus("cluster", str(run["embed"]), "-k", "10", "-p", "2", "-o", str(run["embed"]),
                          *(["--force"] if force else []))
    assert code == 1
    assert "refusing to replace it" in one_error_line(err, str(run["embed"]))
    assert run["embed"].read_bytes() == before and leftovers(tmp_path) == []
    code, _, err = cactus("tasks", str(run["cluster"]), "--num-tasks", "20", "-o", str(run["cluster"]))
    assert code == 1 and "is a cactus 'cluster' artifact" in one_error_line(err, str(run["cluster"]))


def test_out_refuses_to_replace_an_unrelated_file(run, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    code, _, err = cactus("cluster", str(run["embed"]), "-k", "10", "-p", "2", "-o", str(notes))
    assert code == 1 and "not a cactus artifact" in one_error_line(err, str(notes))
    assert notes.read_text() == "my notes\n" and leftovers(tmp_path) == []


def test_a_stage_refuses_its_out_before_computing(run, tmp_path, monkeypatch):
    """The refusal comes before the work: the encoder is never fitted when --out is a foreign file."""
    from click.testing import CliRunner

    import embeddings.pca
    from cli import main

    def must_not_fit(*_args, **_kwargs):
        raise AssertionError("the encoder was fitted before --out was checked")

    monkeypatch.setattr(embeddings.pca.PCAEncoder, "fit", must_not_fit)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    result = CliRunner().invoke(main, ["embed", "--data", "digits", "--method", "pca", "--dim", "4", "-o", str(notes)])
    assert result.exit_code == 1, result.output
    assert "not a cactus artifact" in one_error_line(result.stderr, str(notes))
    assert notes.read_text() == "my notes\n"


def test_out_replaces_an_artifact_of_the_same_stage(run):
    code, _, err = cactus("cluster", str(run["embed"]), "-k", "12", "-p", "2", "-o", str(run["cluster"]))
    assert code == 0, err
    assert read_artifact(run["cluster"], stage="cluster").config["clusters"] == 12


def test_what_an_output_path_may_replace(run, tmp_path):
    check_output_path(tmp_path / "new.h5", "cluster")  # nothing there
    (tmp_path / "empty.h5").touch()
    check_output_path(tmp_path / "empty.h5", "cluster")
    check_output_path(run["cluster"], "cluster")
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(run["cluster"].read_bytes()[:1000])  # truncated: treated as missing
    check_output_path(damaged, "cluster")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as file:
        file["x"] = np.zeros(3)
    (tmp_path / "folder.h5").mkdir()
    refused = {run["embed"]: "is a cactus 'embed' artifact", foreign: "HDF5 file that is not a cactus artifact",
               tmp_path / "folder.h5": "is a folder"}
    for path, why in refused.items():
        with pytest.raises(CactusError, match=why):
            check_output_path(path, "cluster")
    with pytest.raises(CactusError, match="is a cactus 'embed' artifact"):
        cached_key(run["embed"], "0" * 64, stage="cluster")  # the cache check refuses before anything is computed


def test_a_json_report_replaces_only_a_report(run, tmp_path):
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"artifact": "a.h5", "learner": "knn", "data": "digits", "results": []}))
    check_report_path(report, ("artifact", "learner", "data"))
    other = tmp_path / "config.json"
    other.write_text(json.dumps({"epochs": 3}))
    for path in (other, run["embed"]):
        with pytest.raises(CactusError, match="refusing to replace it with a JSON report"):
            check_report_path(path, ("artifact", "learner", "data"))


def test_evaluate_checks_its_out_before_evaluating(run, tmp_path):
    """The artifact does not even exist: a check made after the evaluation would name it instead (item 10)."""
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    for out in (run["embed"], notes):
        before = out.read_bytes()
        code, _, err = cactus("evaluate", str(tmp_path / "missing.h5"), "--out", str(out))
        assert code == 1 and "refusing to replace it with a JSON report" in one_error_line(err, str(out))
        assert out.read_bytes() == before


# ---- 2. a full disk -----------------------------------------------------------------------------------

LIMITED_WRITES = """
import errno, sys
import cactus.core.h5file as h5file

LIMIT = int(sys.argv[1])

class Limited:
    '''A real file that runs out of space after LIMIT bytes, as a full disk does.'''
    def __init__(self, path, mode):
        self.handle, self.left = open(path, mode), LIMIT
    def write(self, data):
        self.left -= len(memoryview(data).cast("B"))
        if self.left < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.handle.write(data)
    def __getattr__(self, name):
        return getattr(self.handle, name)

h5file.open = Limited
sys.argv = [sys.argv[0], *sys.argv[2:]]
from cli import main
main()
"""


def assert_clean_no_space(result, out: Path, before: bytes) -> None:
    assert result.returncode == 1, (result.returncode, result.stderr)  # not 139 (a segfault at exit)
    line = one_error_line(result.stderr, str(out))
    assert "no space left on device" in line, line
    assert out.read_bytes() == before and leftovers(out.parent) == []


def test_a_full_disk_is_one_line_and_leaves_the_previous_artifact(run, tmp_path):
    before = run["cluster"].read_bytes()
    result = subprocess.run([sys.executable, "-c", LIMITED_WRITES, "20000", "cluster", str(run["embed"]), "-k", "10",
                             "-p", "6", "-o", str(run["cluster"])], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert_clean_no_space(result, run["cluster"], before)


def test_a_full_disk_while_creating_the_lock_leaves_no_lock(tmp_path, monkeypatch):
    from cactus.core import lock

    def no_space(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lock.json, "dump", no_space)
    with pytest.raises(CactusError, match="cannot create lock file .no space left on device"):
        lock.acquire(tmp_path / "x.h5")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 40 KiB tmpfs (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_real_full_tmpfs(run, tiny_tmpfs):
    out = tiny_tmpfs / "parts.h5"
    first = run_cli("cluster", str(run["embed"]), "-k", "10", "-p", "1", "-o", str(out))
    assert first.returncode == 0, first.stderr
    before = out.read_bytes()
    result = run_cli("cluster", str(run["embed"]), "-k", "10", "-p", "8", "-o", str(out), timeout=300)
    assert_clean_no_space(result, out, before)


# ---- 3. corrupt data under an intact header is recomputed ---------------------------------------------


def flip_a_data_byte(path: Path, name: str) -> None:
    with h5py.File(path, "r") as file:
        chunk = file[name].id.get_chunk_info(0)
    data = bytearray(path.read_bytes())
    data[chunk.byte_offset + chunk.size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_flipped_data_chunk_is_a_cache_miss_and_is_recomputed(run, tmp_path):
    args = ["cluster", str(run["embed"]), "-k", "10", "-p", "2", "-o", str(run["cluster"])]
    key = read_artifact(run["cluster"]).key
    flip_a_data_byte(run["cluster"], "labels")
    assert read_artifact(run["cluster"], arrays=False).key == key  # the header is intact
    with pytest.raises(CactusError, match="parts.h5: corrupt artifact ./labels: a data chunk fails its checksum"):
        read_artifact(run["cluster"])
    code, _, err = cactus(*args)
    assert code == 0 and "corrupt artifact" in err and "recomputing" in err and "up to date" not in err
    assert read_artifact(run["cluster"]).key == key  # whole again
    code, _, err = cactus(*args)
    assert code == 0 and "up to date" in err and "corrupt" not in err


def test_an_artifact_without_checksums_is_still_read_and_cached(tmp_path):
    """Artifacts written before checksums: contiguous datasets, no filters."""
    path = tmp_path / "old.h5"
    write_artifact(path, "tasks", {"n": 1}, [], {})
    labels = np.arange(12, dtype=np.int32).reshape(3, 4)
    with h5py.File(path, "r+") as file:
        file.create_dataset("labels", data=labels)
        assert file["labels"].chunks is None and not file["labels"].fletcher32
    assert np.array_equal(read_artifact(path).array("labels"), labels)
    assert cached_key(path, compute_key("tasks", {"n": 1}, []))


# ---- 4. only regular files are read --------------------------------------------------------------------


def test_devices_fifos_and_folders_are_refused_before_reading(tmp_path):
    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    (tmp_path / "folder.h5").mkdir()
    for path, kind in ((Path("/dev/zero"), "a character device"), (fifo, "a FIFO"), (tmp_path / "folder.h5",
                                                                                      "a folder")):
        with pytest.raises(CactusError, match=f"{path}: is {kind}"):
            read_artifact(path)
    result = run_cli("embed", "--data", "digits", "--encoder", str(fifo), "-o", str(tmp_path / "x.h5"), timeout=120)
    assert result.returncode == 1 and "is a FIFO" in one_error_line(result.stderr, str(fifo))


# ---- 5. a small file declaring a huge dataset ---------------------------------------------------------


def memory_bomb(template: Path, path: Path) -> None:
    """A copy of the header of ``template`` over one dataset of 10^6 x 10^5 float64 (745 GiB) never written."""
    with h5py.File(template, "r") as source, h5py.File(path, "w") as bomb:
        for name, value in source.attrs.items():
            bomb.attrs[name] = value
        bomb.create_dataset("embeddings", shape=(10**6, 10**5), dtype=np.float64, chunks=(1000, 1000),
                            compression="gzip")


def test_a_header_declaring_745_gib_is_refused_before_reading(run, tmp_path):
    bomb = tmp_path / "bomb.h5"
    memory_bomb(run["embed"], bomb)
    assert bomb.stat().st_size < 10_000
    code, out, err = cactus("info", str(bomb))  # metadata only
    assert code == 0 and "(1000000, 100000)" in out, err
    with pytest.raises(CactusError, match=r"bomb.h5: corrupt artifact \(/embeddings declares float64 "
                                          r"\(1000000, 100000\) \(745.1 GiB\) but the file stores"):
        read_artifact(bomb)
    code, _, err = cactus("cluster", str(bomb), "-k", "10", "-p", "2", "-o", str(tmp_path / "p.h5"))
    assert code == 1 and "745.1 GiB" in one_error_line(err, str(bomb))
    header = read_artifact(bomb, arrays=False)
    assert not cached_key(bomb, header.key)  # the cache check refuses it too, without reading 745 GiB


def test_shapes_that_do_not_fit_the_stage_are_refused_before_reading(run):
    path = run["cluster"]
    with h5py.File(path, "r+") as file:
        del file["rows"]
        file.create_dataset("rows", shape=(5,), dtype=np.int64)
    with pytest.raises(CactusError, match=r"/labels \(2, \d+\) do not fit /rows \(5,\)"):
        read_artifact(path)


# ---- the table: one row per case, asserted here and printed by bench/bad_inputs.py ----------------------


def _notes(folder: Path) -> Path:
    notes = folder / "notes.txt"
    notes.write_text("my notes\n")
    return notes


def _fifo(folder: Path) -> Path:
    fifo = folder / "pipe.npy"
    os.mkfifo(fifo)
    return fifo


def _bomb(run: dict[str, Path], folder: Path) -> Path:
    memory_bomb(run["embed"], folder / "bomb.h5")
    return folder / "bomb.h5"


def _flipped(run: dict[str, Path]) -> Path:
    flip_a_data_byte(run["cluster"], "labels")
    return run["cluster"]


def _group_x(folder: Path) -> Path:
    with h5py.File(folder / "images.h5", "w") as file:
        file.create_group("x")["inner"] = np.zeros((4, 8, 8), np.uint8)
    return folder / "images.h5"


def _cluster(run, out, *more) -> list[str]:
    return ["cluster", str(run["embed"]), "-k", "10", "-p", "2", "-o", str(out), *more]


# (description, build(run, folder) -> (cactus arguments, what the error line names), expected text, in a subprocess)
# A subprocess where a regression would hang (reading a device or a FIFO) or crash (a full disk).
TRUST_CASES: list[tuple[str, Callable[[dict[str, Path], Path], tuple[list[str], str]], str, bool]] = [
    ("`cluster --out` onto its own embed input", lambda r, f: (_cluster(r, r["embed"]), str(r["embed"])),
     "is a cactus 'embed' artifact; refusing to replace it", False),
    ("`cluster --force --out` onto its own embed input", lambda r, f: (_cluster(r, r["embed"], "--force"),
                                                                      str(r["embed"])),
     "refusing to replace it", False),
    ("`tasks --out` onto its own partitions input",
     lambda r, f: (["tasks", str(r["cluster"]), "--num-tasks", "20", "-o", str(r["cluster"])], str(r["cluster"])),
     "is a cactus 'cluster' artifact; refusing to replace it", False),
    ("`cluster --out notes.txt`", lambda r, f: (_cluster(r, _notes(f)), "notes.txt"),
     "is a file that is not a cactus artifact", False),
    ("`evaluate --out` onto an artifact (checked before evaluating)",
     lambda r, f: (["evaluate", str(r["embed"]), "--num-tasks", "5", "--out", str(r["cluster"])], str(r["cluster"])),
     "refusing to replace it with a JSON report", False),
    ("`cluster` onto a full disk (writes fail after 20 KB)",
     lambda r, f: (["--full-disk", *_cluster(r, r["cluster"], "-p", "6")], str(r["cluster"])),
     "no space left on device", True),
    ("`info /dev/zero`", lambda r, f: (["info", "/dev/zero"], "/dev/zero"), "is a character device", True),
    ("`embed --method load --path /dev/zero`",
     lambda r, f: (["embed", "--data", "digits", "--method", "load", "--path", "/dev/zero", "-o", str(f / "x.h5")],
                   "--path /dev/zero"), "not a regular file", True),
    ("`embed --method load --path` a FIFO",
     lambda r, f: (["embed", "--data", "digits", "--method", "load", "--path", str(_fifo(f)), "-o", str(f / "x.h5")],
                   "pipe.npy"), "is a FIFO (named pipe)", True),
    ("`cluster` on a folder given as the embed artifact",
     lambda r, f: (_cluster({"embed": f}, f / "p.h5"), str(f)), "is a folder", False),
    ("`cluster` on a 7 KB file declaring a 745 GiB dataset",
     lambda r, f: (_cluster({"embed": _bomb(r, f)}, f / "p.h5"), "bomb.h5"), "745.1 GiB", False),
    ("`evaluate` a partition artifact with one flipped data byte",
     lambda r, f: (["evaluate", str(_flipped(r)), "--learner", "cluster-matching", "--embeddings", str(r["embed"]),
                    "--num-tasks", "5"], "parts.h5"), "/labels: a data chunk fails its checksum", False),
    ("`embed --data h5:FILE` whose `x` is a group",
     lambda r, f: (["embed", "--data", f"h5:{_group_x(f)}", "--method", "pca", "--dim", "2", "-o", str(f / "e.h5")],
                   "images.h5"), "'x' is an HDF5 group, not an array", False),
]


def run_trust_case(run: dict[str, Path], folder: Path, build, in_subprocess: bool) -> tuple[int, str, str]:
    """Build the case in ``folder`` and run it: (exit code, stderr, the name the error must contain)."""
    args, names = build(run, folder)
    if not in_subprocess:
        code, _, err = cactus(*args)
        return code, err, names
    full_disk = args[0] == "--full-disk"
    command = ["-c", LIMITED_WRITES, "20000", *args[1:]] if full_disk else ["-c", "from cli import main; main()", *args]
    done = subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    return done.returncode, done.stderr, names


@pytest.mark.parametrize("description, build, expected, in_subprocess", TRUST_CASES, ids=[c[0] for c in TRUST_CASES])
def test_trust_case_is_one_line_exit_1_and_leaves_nothing(run, tmp_path, description, build, expected, in_subprocess):
    code, err, names = run_trust_case(run, tmp_path, build, in_subprocess)
    assert code == 1, (code, err)
    assert expected in one_error_line(err, names)
    assert leftovers(tmp_path) == []


# ---- 3b. diverged training is an error, not an artifact ----------------------------------------------


def test_diverged_meta_training_is_an_error_and_writes_nothing(run, tmp_path):
    """MAML with an absurd inner learning rate: NaN losses stop the run before anything is written."""
    tasks = tmp_path / "tasks.h5"
    assert cactus("tasks", str(run["cluster"]), "--num-tasks", "40", "-o", str(tasks))[0] == 0
    learner = tmp_path / "learner.h5"
    code, _, err = cactus("meta", str(tasks), "--algo", "maml", "--inner-lr", "1000", "--iterations", "5",
                          "--filters", "8", "--validation", "none", "--device", "cpu", "-o", str(learner))
    assert code == 1
    line = one_error_line(err, "diverged")
    assert "--meta-lr" in line or "--inner-lr" in line
    assert not learner.exists() and leftovers(tmp_path) == []


# ---- 9. replay is bit-identical whatever the replaying shell's thread count --------------------------


def test_replay_uses_the_recorded_thread_count_and_gives_the_same_weights(run, tmp_path):
    """The original trains on 2 threads; the replay runs where torch would default to 1 (OMP_NUM_THREADS=1).

    A replay forced onto 1 thread gives other weights: the thread count does change the sums here.
    """
    import numpy as np

    from tests.conftest import run_cli

    first = tmp_path / "first"
    first.mkdir()
    for name in ("emb.h5", "parts.h5"):
        shutil.copy(run["embed" if name == "emb.h5" else "cluster"], first / name)
    assert cactus("tasks", str(first / "parts.h5"), "--num-tasks", "60", "-o", str(first / "tasks.h5"))[0] == 0
    made = run_cli("meta", str(first / "tasks.h5"), "--iterations", "6", "--filters", "16", "--validation", "none",
                   "--threads", "2", "--device", "cpu", "-o", str(first / "learner.h5"), env={"OMP_NUM_THREADS": "2"})
    assert made.returncode == 0, made.stderr
    original = read_artifact(first / "learner.h5")
    assert original.attrs["torch_threads"] == 2

    def replay(out: Path, *threads: str):
        done = run_cli("run", "--config", str(first / "learner.h5"), "--out-dir", str(out), "--device", "cpu",
                       "--eval-tasks", "5", "--eval-shots", "1", *threads, env={"OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr
        return read_artifact(out / "learner.h5").group("weights")

    weights = original.group("weights")
    same = replay(tmp_path / "again")
    assert weights and all(np.array_equal(weights[name], same[name]) for name in weights)
    forced = replay(tmp_path / "one-thread", "--threads", "1")
    assert any(not np.array_equal(weights[name], forced[name]) for name in weights)
