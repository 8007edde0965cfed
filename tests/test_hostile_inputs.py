"""Hostile inputs: mutated artifacts fed to every command get a clean one-line error, never a crash.

Real artifacts of a small digits pipeline are damaged (truncated, random bytes, wrong dtype or shape,
out-of-range indices, missing attributes or arrays, NaN, garbage JSON) and given to `cactus info`,
`cluster`, `tasks`, `meta` and `evaluate`, in process (click's CliRunner) to keep it fast. Each run
must either succeed or exit 1 with one `cactus: error:` line naming the damaged file.

`python bench/bad_inputs.py` writes the table of named cases to bench/results/bad_inputs.md (tests only assert).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]


def build_pipeline(folder: Path) -> dict[str, Path]:
    """embeddings.h5, partitions.h5, tasks.h5, learner.h5 of a tiny run on scikit-learn's digits."""
    from cactus.stages.cluster import run_cluster
    from cactus.stages.common import DataRef
    from cactus.stages.embed import run_embed
    from cactus.stages.meta import run_meta
    from cactus.stages.tasks import run_tasks

    paths = {name: folder / f"{name}.h5" for name in ("embeddings", "partitions", "tasks", "learner")}
    run_embed(paths["embeddings"], DataRef("digits"), "pca", {"dim": 16})
    run_cluster(paths["partitions"], paths["embeddings"], clusters=30, partitions=3)
    run_tasks(paths["tasks"], paths["partitions"], num_tasks=100)
    run_meta(paths["learner"], paths["tasks"], options={"filters": 8}, iterations=2, validation="none",
             threads=1, device="cpu")
    return paths


def commands(kind: str, path: Path, clean: dict[str, Path], out: Path) -> list[list[str]]:
    """The commands that read an artifact of this kind."""
    runs = [["info", str(path)]]
    if kind == "embeddings":
        runs += [["cluster", str(path), "-o", str(out / "p.h5"), "-k", "30", "-p", "2", "--force"],
                 ["evaluate", str(path), "--num-tasks", "20", "--shots", "1"]]
    elif kind == "partitions":
        runs += [["tasks", str(path), "-o", str(out / "t.h5"), "--num-tasks", "20", "--force"],
                 ["evaluate", str(path), "--learner", "cluster-matching", "--embeddings", str(clean["embeddings"]),
                  "--num-tasks", "20", "--shots", "1"]]
    elif kind == "tasks":
        runs += [["meta", str(path), "-o", str(out / "l.h5"), "--iterations", "2", "--filters", "8",
                  "--validation", "none", "--threads", "1", "--device", "cpu", "--force"]]
    elif kind == "learner":
        runs += [["evaluate", str(path), "--num-tasks", "10", "--shots", "1", "--device", "cpu"]]
    return runs


def run(args: list[str]):
    from click.testing import CliRunner

    from cli import main

    return CliRunner().invoke(main, args)


def outcome(result, path: Path) -> str:
    """'ok', or the one error line; fails the test on a traceback, a crash or an error not naming the file."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        trace = "".join(traceback.format_exception(result.exception))
        pytest.fail(f"uncaught {type(result.exception).__name__} for {path}:\n{trace}")
    if result.exit_code == 0:
        return "ok"
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.stderr
    errors = [line for line in lines if line.startswith("cactus: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    # The damaged file is named, or the option its damage defeats (k-means on constant embeddings).
    assert path.name in errors[0] or ": --" in errors[0], errors[0]
    return errors[0]


# ---- mutations: each edits one artifact file in place -----------------------------------------------


def h5_edit(path: Path, edit: Callable) -> None:
    import h5py

    with h5py.File(path, "r+") as file:
        edit(file)


def replace(name: str, make: Callable[[np.ndarray], np.ndarray]) -> Callable:
    def edit(file) -> None:
        value = file[name][()]
        del file[name]
        file.create_dataset(name, data=make(value))
    return edit


def truncate(fraction: float) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])
    return mutate


def scribble(offset_fraction: float, length: int, seed: int) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        data = bytearray(path.read_bytes())
        start = int(len(data) * offset_fraction)
        noise = np.random.default_rng(seed).integers(0, 256, length, dtype=np.uint8).tobytes()
        data[start : start + length] = noise[: max(0, len(data) - start)]
        path.write_bytes(bytes(data))
    return mutate


ARRAYS = {"embeddings": ["embeddings", "split"], "partitions": ["labels", "rows"],
          "tasks": ["support", "query", "partition"], "learner": ["weights/features.0.0.weight", "curve/loss"]}
ATTRIBUTES = ["format", "stage", "config", "key", "inputs", "version", "created", "x_data", "x_data_fingerprint"]


def array_mutation(name: str, how: str, value: float) -> Callable[[Path], None]:
    makes = {
        "float": lambda a: a.astype(np.float64) + 0.5,
        "int": lambda a: a.astype(np.int64) if a.dtype.kind == "f" else a.astype(np.int8),
        "string": lambda a: np.array([b"hostile"] * max(1, a.size)),
        "flat": lambda a: a.reshape(-1),
        "transpose": lambda a: a.T if a.ndim > 1 else a[:-1],
        "empty": lambda a: np.zeros((0,) + a.shape[1:], dtype=a.dtype),
        "scalar": lambda a: np.asarray(_as_int(value, a.dtype), dtype=a.dtype) if a.dtype.kind in "iu"
        else np.asarray(value, dtype=np.float32),
        "fill": lambda a: np.full_like(a, value if a.dtype.kind == "f" else _as_int(value, a.dtype)),
        "nan": lambda a: np.where(np.arange(a.size).reshape(a.shape) == a.size // 2, np.nan, a)
        if a.dtype.kind == "f" else a,
        "poke": lambda a: _poke(a, value),
    }

    def mutate(path: Path) -> None:
        h5_edit(path, replace(name, makes[how]))
    return mutate


def _poke(a: np.ndarray, value: float) -> np.ndarray:
    """One entry set to ``value`` (an out-of-range index, a huge number...)."""
    a = a.copy()
    if a.size:
        flat = a.reshape(-1)
        info = np.iinfo(a.dtype) if a.dtype.kind in "iu" else None
        flat[len(flat) // 3] = _as_int(value, a.dtype) if info else value
    return a


def _as_int(value: float, dtype) -> int:
    """``value`` as the nearest integer the integer ``dtype`` holds (NaN -> 0)."""
    info = np.iinfo(dtype)
    if np.isnan(value):
        return 0
    if value >= info.max:  # compared as Python numbers: float(int64 max) would round past it
        return int(info.max)
    return int(info.min) if value <= info.min else int(value)


def delete_array(name: str) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        h5_edit(path, lambda file: file.__delitem__(name))
    return mutate


def attribute_mutation(name: str, how: str) -> Callable[[Path], None]:
    def edit(file) -> None:
        if name not in file.attrs:
            return
        if how == "delete":
            del file.attrs[name]
        elif how == "garbage":
            file.attrs[name] = "{not json"
        elif how == "number":
            file.attrs[name] = 7
        elif how == "wrong-json":
            file.attrs[name] = '["a", 1]'
    return lambda path: h5_edit(path, edit)


NAMED_CASES: list[tuple[str, str, Callable[[Path], None]]] = [
    ("embeddings", "truncated to half", truncate(0.5)),
    ("embeddings", "truncated to 100 bytes", truncate(100 / 1e6)),
    ("embeddings", "empty file", truncate(0.0)),
    ("embeddings", "4 KiB of random bytes in the middle", scribble(0.5, 4096, 0)),
    ("embeddings", "random bytes over the HDF5 superblock", scribble(0.0, 64, 1)),
    ("embeddings", "one NaN in /embeddings", array_mutation("embeddings", "nan", 0)),
    ("embeddings", "/embeddings stored as strings", array_mutation("embeddings", "string", 0)),
    ("embeddings", "/embeddings flattened to 1-D", array_mutation("embeddings", "flat", 0)),
    ("embeddings", "/embeddings with no rows", array_mutation("embeddings", "empty", 0)),
    ("embeddings", "/split missing", delete_array("split")),
    ("embeddings", "/split with one row too few", array_mutation("split", "transpose", 0)),
    ("embeddings", "attribute 'format' missing", attribute_mutation("format", "delete")),
    ("embeddings", "attribute 'config' not JSON", attribute_mutation("config", "garbage")),
    ("embeddings", "attribute 'inputs' a number", attribute_mutation("inputs", "number")),
    ("embeddings", "dataset reference 'data' missing", attribute_mutation("x_data", "delete")),
    ("embeddings", "dataset reference 'data' wrong JSON", attribute_mutation("x_data", "wrong-json")),
    ("partitions", "/labels as float", array_mutation("labels", "float", 0)),
    ("partitions", "/labels transposed", array_mutation("labels", "transpose", 0)),
    ("partitions", "a cluster label of 10^6", array_mutation("labels", "poke", 1e6)),
    ("partitions", "a cluster label of -7", array_mutation("labels", "poke", -7)),
    ("partitions", "a row index past the dataset", array_mutation("rows", "poke", 10**7)),
    ("partitions", "a negative row index", array_mutation("rows", "poke", -3)),
    ("partitions", "/rows missing", delete_array("rows")),
    ("tasks", "a support index past the dataset", array_mutation("support", "poke", 10**6)),
    ("tasks", "a negative query index", array_mutation("query", "poke", -1)),
    ("tasks", "/support as float", array_mutation("support", "float", 0)),
    ("tasks", "/query with the wrong width", array_mutation("query", "transpose", 0)),
    ("tasks", "attribute 'stage' deleted", attribute_mutation("stage", "delete")),
    ("tasks", "data fingerprint changed", attribute_mutation("x_data_fingerprint", "wrong-json")),
    ("learner", "a conv weight of the wrong shape", array_mutation("weights/features.0.0.weight", "flat", 0)),
    ("learner", "a conv weight missing", delete_array("weights/features.0.0.weight")),
    ("learner", "NaN in a conv weight", array_mutation("weights/features.0.0.weight", "nan", 0)),
    ("learner", "config not JSON", attribute_mutation("config", "garbage")),
    ("learner", "truncated to 90 %", truncate(0.9)),
]

mutation_strategy = st.one_of(
    st.builds(truncate, st.floats(0.0, 0.999)),
    st.builds(scribble, st.floats(0.0, 0.999), st.integers(1, 4096), st.integers(0, 2**16)),
    st.builds(lambda kind_name, how, value: (kind_name, array_mutation(kind_name[1], how, value)),
              st.sampled_from([(k, n) for k, names in ARRAYS.items() for n in names]),
              st.sampled_from(["float", "int", "string", "flat", "transpose", "empty", "scalar", "fill", "nan",
                               "poke"]),
              st.sampled_from([np.nan, np.inf, -1.0, -(2.0**40), 0.0, 1e6, 2.0**31, 3.0])),
    st.builds(lambda kind_name: (kind_name, delete_array(kind_name[1])),
              st.sampled_from([(k, n) for k, names in ARRAYS.items() for n in names])),
    st.builds(attribute_mutation, st.sampled_from(ATTRIBUTES), st.sampled_from(["delete", "garbage", "number",
                                                                                 "wrong-json"])),
)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return build_pipeline(tmp_path_factory.mktemp("clean"))


def try_mutation(pipeline: dict[str, Path], kind: str, mutate: Callable[[Path], None]) -> list[str]:
    """Copy the clean artifact, damage it, run every command that reads it; the outcomes."""
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        path = folder / pipeline[kind].name
        shutil.copy(pipeline[kind], path)
        mutate(path)
        return [outcome(run(args), path) for args in commands(kind, path, pipeline, folder)]


# Known gaps in cactus/evaluate.py (reported to its owner): cluster-matching indexes the embeddings with
# /rows unchecked (IndexError), and a torch load_state_dict error spans several lines.
@pytest.mark.parametrize("kind, description, mutate", NAMED_CASES, ids=[c[1] for c in NAMED_CASES])
def test_named_bad_input_gets_a_clean_error(pipeline, kind, description, mutate):
    results = try_mutation(pipeline, kind, mutate)
    assert any(r != "ok" for r in results), f"{description}: accepted by every command"


def test_a_scribbled_key_byte_is_a_clean_error(pipeline, tmp_path):
    """Found by the random-damage test: one bad byte inside the key string (h5py then decodes a lone
    surrogate, which printing it would crash on)."""
    import h5py

    path = tmp_path / "tasks.h5"
    shutil.copy(pipeline["tasks"], path)
    with h5py.File(path, "r") as source:
        key = source.attrs["key"]
    data = bytearray(path.read_bytes())
    data[data.find(key.encode()) + 10] = 0xFF
    path.write_bytes(bytes(data))
    for args in commands("tasks", path, pipeline, tmp_path):
        assert "sha256" in outcome(run(args), path)


HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


def _random_damage(pipeline, kind, mutation) -> None:
    if isinstance(mutation, tuple):  # array mutations carry the artifact they apply to
        (kind, _), mutation = mutation
    try_mutation(pipeline, kind, mutation)


# The default suite replays the same 60 examples every run (derandomize), so CI cannot turn red by
# chance; the slow test draws fresh ones each time to keep searching.
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=HEALTH)
@given(kind=st.sampled_from(list(ARRAYS)), mutation=mutation_strategy)
def test_random_damage_never_crashes(pipeline, kind, mutation):
    _random_damage(pipeline, kind, mutation)


@pytest.mark.slow
@settings(max_examples=500, deadline=None, suppress_health_check=HEALTH)
@given(kind=st.sampled_from(list(ARRAYS)), mutation=mutation_strategy)
def test_random_damage_never_crashes_long(pipeline, kind, mutation):
    _random_damage(pipeline, kind, mutation)

