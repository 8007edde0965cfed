"""The HDF5 artifact store: round trip, keys, cache decisions, atomic writes, corrupt files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from cactus.core.errors import CactusError
from cactus.core.store import cached_key, compute_key, read_artifact, write_artifact
from cactus.stages.common import up_to_date

INPUT_KEY = compute_key("embed", {"source": "test"}, [])  # input keys are sha256 hex digests


def test_round_trip_keeps_arrays_attributes_and_groups(tmp_path):
    arrays = {"embeddings": np.random.default_rng(0).random((300, 64), dtype=np.float32),
              "weights/conv.weight": np.arange(12, dtype=np.float64).reshape(3, 4)}
    key = write_artifact(tmp_path / "a.h5", "embed", {"b": 1, "a": [1, 2]}, [INPUT_KEY], arrays, {"curve": [1.5, 2.5]})
    artifact = read_artifact(tmp_path / "a.h5", stage="embed")
    assert artifact.key == key == compute_key("embed", {"a": [1, 2], "b": 1}, [INPUT_KEY])
    assert artifact.config == {"a": [1, 2], "b": 1} and artifact.inputs == [INPUT_KEY]
    assert artifact.attrs["curve"] == [1.5, 2.5]
    assert np.array_equal(artifact.array("embeddings"), arrays["embeddings"])
    assert np.array_equal(artifact.group("weights")["conv.weight"], arrays["weights/conv.weight"])
    with h5py.File(tmp_path / "a.h5") as raw:  # plain h5py reads it, config is sorted JSON
        assert raw.attrs["config"] == json.dumps({"a": [1, 2], "b": 1}, sort_keys=True)
        assert raw["embeddings"].compression == "gzip"


def test_key_is_stable_and_changes_with_config_or_inputs():
    base = compute_key("cluster", {"k": 500, "p": 100}, ["x"])
    assert base == compute_key("cluster", {"p": 100, "k": 500}, ["x"])
    assert base != compute_key("cluster", {"k": 501, "p": 100}, ["x"])
    assert base != compute_key("cluster", {"k": 500, "p": 100}, ["y"])
    assert base != compute_key("tasks", {"k": 500, "p": 100}, ["x"])
    assert len(base) == 64 and int(base, 16) >= 0


def test_cache_skips_when_up_to_date_recomputes_on_change_and_on_force(tmp_path, capsys):
    out = tmp_path / "p.h5"
    key, skipped = up_to_date("cluster", out, {"k": 5}, [INPUT_KEY], force=False)
    assert not skipped
    write_artifact(out, "cluster", {"k": 5}, [INPUT_KEY], {"labels": np.zeros((1, 3), np.int32)})
    assert up_to_date("cluster", out, {"k": 5}, [INPUT_KEY], force=False) == (key, True)
    assert "up to date" in capsys.readouterr().err
    assert not up_to_date("cluster", out, {"k": 6}, [INPUT_KEY], force=False)[1]
    assert not up_to_date("cluster", out, {"k": 5}, ["changed"], force=False)[1]
    assert not up_to_date("cluster", out, {"k": 5}, [INPUT_KEY], force=True)[1]


def test_corrupt_and_foreign_files_are_reported_by_path(tmp_path, capsys):
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(200))
    with pytest.raises(CactusError, match="corrupt.h5: corrupt or unreadable artifact"):
        read_artifact(corrupt)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(CactusError, match="foreign.h5: not a cactus artifact"):
        read_artifact(foreign)
    write_artifact(tmp_path / "t.h5", "tasks", {}, [], {})
    with pytest.raises(CactusError, match="is a 'tasks' artifact, expected a 'meta' artifact"):
        read_artifact(tmp_path / "t.h5", stage="meta")
    # a corrupt artifact is a cache miss, with a warning, not a crash
    assert not cached_key(corrupt, "whatever")
    assert "corrupt.h5" in capsys.readouterr().err


def test_a_write_killed_midway_leaves_no_file_under_the_final_name(tmp_path):
    target = tmp_path / "big.h5"
    script = (
        "import numpy as np, sys\n"
        "from cactus.core.store import write_artifact\n"
        "big = {f'a{i}': np.random.default_rng(i).random((1000, 1000)) for i in range(20)}\n"
        "print('writing', flush=True)\n"
        f"write_artifact({str(target)!r}, 'embed', {{}}, [], big)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    time.sleep(0.5)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not target.exists()
    leftovers = list(tmp_path.iterdir())
    assert all(p.name.startswith(".big.h5.") for p in leftovers)  # only the temporary file, never big.h5


def test_verbose_adds_the_store_debug_lines_and_quiet_leaves_only_errors(tmp_path):
    from click.testing import CliRunner

    from cactus.core import log
    from cli import main

    out = tmp_path / "e.h5"
    args = ["embed", "--data", "digits", "--method", "pca", "--dim", "4", "-o", str(out)]
    try:
        verbose = CliRunner().invoke(main, ["-v", *args])
        normal = CliRunner().invoke(main, args)
        again = CliRunner().invoke(main, ["-v", *args])
        quiet = CliRunner().invoke(main, ["-q", *args, "--force"])
    finally:
        log.set_verbosity(1)
    assert [r.exit_code for r in (verbose, normal, again, quiet)] == [0, 0, 0, 0]
    assert "cactus: store: cache miss for" in verbose.stderr and "cactus: store: wrote" in verbose.stderr
    assert "bytes" in verbose.stderr and "cactus: embed: fitting pca" in verbose.stderr
    assert "up to date" in normal.stderr and "store:" not in normal.stderr
    assert f"cactus: store: cache hit for {out}" in again.stderr and "checksums verified" in again.stderr
    assert quiet.stderr == ""


def test_a_write_failing_midway_keeps_the_previous_artifact_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.h5"
    write_artifact(path, "tasks", {}, [], {"x": np.zeros(3)})
    before = path.read_bytes()
    with pytest.raises(TypeError):  # a programming error stays one, but nothing is left behind
        write_artifact(path, "tasks", {}, [], {"x": np.arange(4), "y": np.array([object()])})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["a.h5"]
    with h5py.File(path) as raw:  # every dataset is checksummed
        assert raw["x"].fletcher32 and raw["x"].chunks is not None


def test_the_cli_speaks_even_after_a_library_reconfigured_logging(tmp_path):
    """dictConfig disables existing loggers by default (import-linter calls it): the CLI re-enables its own."""
    import logging.config

    from click.testing import CliRunner

    from cactus.core import log
    from cli import main

    logging.config.dictConfig({"version": 1})
    try:
        result = CliRunner().invoke(main, ["embed", "--data", "digits", "--method", "pca", "--dim", "4", "-o",
                                           str(tmp_path / "e.h5")])
    finally:
        log.set_verbosity(1)
    assert result.exit_code == 0 and "cactus: embed: fitting pca" in result.stderr


def test_a_row_stream_is_written_block_by_block_without_holding_the_array(tmp_path):
    """20 MB of rows in 1 MB blocks: the same file content as the whole array, at a fraction of its memory."""
    import tracemalloc

    from cactus.core.store import RowStream

    rows, width, step = 20_000, 256, 1_000

    def block(start: int) -> np.ndarray:
        return np.random.default_rng(start).random((step, width), dtype=np.float32)

    def blocks():
        for start in range(0, rows, step):
            yield slice(start, start + step), block(start)

    tracemalloc.start()
    write_artifact(tmp_path / "s.h5", "embed", {}, [INPUT_KEY],
                   {"embeddings": RowStream((rows, width), np.dtype(np.float32), blocks)})
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < rows * width * 4 / 4  # the whole array is 20.5 MB
    stored = read_artifact(tmp_path / "s.h5", stage="embed").array("embeddings")
    assert stored.shape == (rows, width) and np.array_equal(stored[3_000:4_000], block(3_000))


def test_a_failing_row_stream_leaves_no_artifact(tmp_path):
    from cactus.core.store import RowStream

    def blocks():
        yield slice(0, 10), np.zeros((10, 4), np.float32)
        raise CactusError("--method x: the encoder produced NaN or infinite embeddings")

    with pytest.raises(CactusError, match="NaN or infinite"):
        write_artifact(tmp_path / "s.h5", "embed", {}, [INPUT_KEY],
                       {"embeddings": RowStream((20, 4), np.dtype(np.float32), blocks)})
    assert list(tmp_path.iterdir()) == []


def test_the_embed_stage_checks_every_block_it_writes(tmp_path):
    """A NaN in the last chunk (after earlier chunks were written) stops the write: no artifact."""
    from cactus.stages.embed import embedding_rows

    class Encoder:
        name = "fake"

        def transform(self, images: np.ndarray) -> np.ndarray:
            out = images.reshape(len(images), -1).astype(np.float32)
            out[images[:, 0, 0, 0] == 9] = np.nan
            return out

    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    stream = embedding_rows(Encoder(), images, chunk=3)
    assert stream.shape == (10, 1)
    with pytest.raises(CactusError, match="fake: the encoder produced NaN or infinite embeddings"):
        write_artifact(tmp_path / "e.h5", "embed", {}, [INPUT_KEY], {"embeddings": stream})
    assert list(tmp_path.iterdir()) == []


def test_read_rows_reads_the_rows_asked_for_in_slabs(tmp_path, monkeypatch):
    """A tenth of 16 MB of rows: equal to slicing the whole array, at a fraction of its memory."""
    import tracemalloc

    import cactus.core.store as store

    monkeypatch.setattr(store, "VERIFY_SLAB_BYTES", 1 << 20)
    table = np.random.default_rng(0).random((16_000, 256), dtype=np.float32)
    write_artifact(tmp_path / "e.h5", "embed", {}, [INPUT_KEY],
                   {"embeddings": table, "split": np.zeros(len(table), np.int8)})
    header = read_artifact(tmp_path / "e.h5", unread=("embeddings",))
    assert "embeddings" not in header.arrays and header.layout["embeddings"].shape == table.shape
    rows = np.sort(np.random.default_rng(1).choice(len(table), 1_600, replace=False))
    tracemalloc.start()
    got = store.read_rows(header, "embeddings", rows)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert np.array_equal(got, table[rows])
    assert peak < table.nbytes / 4


def test_read_rows_refuses_nan_among_the_rows(tmp_path):
    from cactus.core.store import read_rows

    table = np.zeros((50, 4), np.float32)
    table[40, 2] = np.inf
    path = tmp_path / "e.h5"
    write_artifact(path, "embed", {}, [INPUT_KEY], {"embeddings": table, "split": np.zeros(50, np.int8)})
    header = read_artifact(path, unread=("embeddings",))
    assert read_rows(header, "embeddings", np.arange(10)).shape == (10, 4)
    with pytest.raises(CactusError, match=r"e\.h5: corrupt artifact \(/embeddings contains NaN"):
        read_rows(header, "embeddings", np.array([3, 40]))
