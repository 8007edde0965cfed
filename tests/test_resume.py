"""Pre-emption: `cactus meta` killed with SIGTERM midway, then --resume, equals an uninterrupted run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import stop_at_first_checkpoint

META = ("--iterations", "60", "--filters", "8", "--validate-every", "25", "--threads", "1", "--seed", "3")


class Result:
    """What a CliRunner run gives, shaped like subprocess.CompletedProcess."""

    def __init__(self, result) -> None:
        self.returncode, self.stdout, self.stderr = result.exit_code, result.stdout, result.stderr


def cli(*args: str) -> Result:
    """Run ``cactus ARGS`` in this process (torch is imported once: much faster than a subprocess)."""
    from click.testing import CliRunner

    from cli import main

    return Result(CliRunner().invoke(main, list(args)))


@pytest.fixture(scope="module")
def tasks_file(tmp_path_factory):
    from cactus.stages.cluster import run_cluster
    from cactus.stages.common import DataRef
    from cactus.stages.embed import run_embed
    from cactus.stages.tasks import run_tasks

    folder = tmp_path_factory.mktemp("pipeline")
    run_embed(folder / "embeddings.h5", DataRef("digits"), "pca", {"dim": 16})
    run_cluster(folder / "partitions.h5", folder / "embeddings.h5", clusters=30, partitions=3)
    run_tasks(folder / "tasks.h5", folder / "partitions.h5", num_tasks=300)
    return folder / "tasks.h5"


def read(path):
    from cactus.core.store import read_artifact

    return read_artifact(path, stage="meta")


def test_meta_stopped_by_sigterm_then_resumed_equals_an_uninterrupted_run(tasks_file, tmp_path):
    import torch

    full = cli("meta", str(tasks_file), "-o", str(tmp_path / "full.h5"), *META, "--json")
    assert full.returncode == 0, full.stderr

    out = tmp_path / "learner.h5"
    checkpoint = tmp_path / "learner.h5.ckpt"
    stop_at_first_checkpoint(["meta", str(tasks_file), "-o", str(out), *META], checkpoint)
    assert not out.exists()
    stopped_at = torch.load(checkpoint, weights_only=True)["iteration"]
    assert 0 < stopped_at < 60

    resumed = cli("meta", str(tasks_file), "-o", str(out), *META, "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {checkpoint} at iteration {stopped_at}" in resumed.stderr
    assert not checkpoint.exists()  # consumed once the artifact is written

    a, b = read(tmp_path / "full.h5"), read(out)
    assert a.key == b.key == json.loads(full.stdout)["key"] == json.loads(resumed.stdout)["key"]
    assert sorted(a.arrays) == sorted(b.arrays)
    assert any(name.startswith("weights/") for name in a.arrays)
    for name in a.arrays:
        np.testing.assert_array_equal(a.arrays[name], b.arrays[name], err_msg=name)
    assert len(a.array("curve/loss")) == 6 and len(a.array("validation/accuracy")) == 3


def test_resume_refuses_a_checkpoint_of_another_configuration(tasks_file, tmp_path):
    from cactus.core.training import save_checkpoint

    save_checkpoint(tmp_path / "learner.h5.ckpt", {"key": "0" * 64, "iteration": 3})
    result = cli("meta", str(tasks_file), "-o", str(tmp_path / "learner.h5"), *META, "--resume")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "checkpoint belongs to a different configuration" in result.stderr.strip().splitlines()[-1]


def test_resume_reports_a_corrupt_checkpoint_by_name(tasks_file, tmp_path):
    (tmp_path / "learner.h5.ckpt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    result = cli("meta", str(tasks_file), "-o", str(tmp_path / "learner.h5"), *META, "--resume")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "learner.h5.ckpt: unreadable checkpoint" in result.stderr.strip().splitlines()[-1]


def test_resume_refuses_a_malformed_checkpoint_in_one_line(tasks_file, tmp_path):
    """A checkpoint of this configuration whose fields are missing or whose iteration is outside [0, 60]."""
    import torch

    from cactus.core.training import save_checkpoint

    out, checkpoint = tmp_path / "learner.h5", tmp_path / "learner.h5.ckpt"
    args = ["meta", str(tasks_file), "-o", str(out), *META, "--checkpoint-every", "0", "--iterations", "2"]
    assert cli(*args).returncode == 0
    key = read(out).key  # --iterations is part of the key: write checkpoints for 2 iterations
    out.unlink()
    good = {"key": key, "iteration": 1, "learner": {"net": {}, "optimiser": {}}, "curves": {}, "window": [],
            "torch_rng": {"cpu": torch.get_rng_state()}}
    cases = {"at step 1000000 is outside [0, 2]": {**good, "iteration": 10**6},
             "at step -100 is outside [0, 2]": {**good, "iteration": -100},
             "does not fit this meta-learner (no field 'iteration')": {"key": key},
             "does not fit this meta-learner (no field 'learner')": {"key": key, "iteration": 1},
             "does not fit this meta-learner (no field 'net')": {**good, "learner": {}}}
    for reason, state in cases.items():
        save_checkpoint(checkpoint, state)
        result = cli(*args, "--resume")
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        lines = result.stderr.strip().splitlines()
        assert lines[-1] == f"cactus: error: {checkpoint}: checkpoint {reason}; delete it to start over", lines
        assert not out.exists()
