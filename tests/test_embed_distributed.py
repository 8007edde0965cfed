"""Distributed encoder training: 2 gloo processes on localhost equal 1 process with the same batch and seed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.test_distributed import cli, torchrun

COMMON = ("--data", "digits", "--epochs", "1", "--batch-size", "32", "--threads", "1", "--seed", "1", "--json")
CASES = {  # method: (options, tolerance on the embeddings)
    # NT-Xent over the gathered views and synced batch norm; AdamW amplifies float noise a little in 28 steps.
    "contrastive": (("--dim", "16", "--width", "8"), 1e-4),
    "acai": (("--dim", "16", "--width", "4"), 1e-6),
}


@pytest.mark.parametrize("method", sorted(CASES))
def test_two_gloo_processes_match_one_process(method, tmp_path):
    from cactus.core.store import read_artifact

    options, tolerance = CASES[method]
    args = ("embed", "--method", method, *options, *COMMON)
    one = cli(*args, "-o", tmp_path / "one.h5")
    assert one.exit_code == 0, one.output
    two = torchrun(2, *args, "-o", str(tmp_path / "two.h5"))
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count('"stage": "embed"') == 1  # rank 0 alone reports ...
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.h5", "two.h5"]  # ... and writes (no checkpoint left)

    a, b = read_artifact(tmp_path / "one.h5"), read_artifact(tmp_path / "two.h5")
    assert a.key == b.key == json.loads(two.stdout)["key"]  # the world size is not part of the result
    np.testing.assert_allclose(b.attrs["history"]["loss"], a.attrs["history"]["loss"], rtol=1e-6)
    assert np.abs(a.array("embeddings")).max() > 100 * tolerance
    np.testing.assert_allclose(b.array("embeddings"), a.array("embeddings"), atol=tolerance)


@pytest.mark.parametrize("method", ["deepcluster", "bigan", "infogan", "pca"])
def test_encoders_that_cannot_split_exactly_refuse_several_processes(method, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = cli("embed", "--method", method, "--data", "digits", "-o", tmp_path / "e.h5")
    assert result.exit_code == 1 and "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert f"--method {method}: cannot train on 2 processes exactly as on one" in last
    assert "run it as a single process" in last
    assert not (tmp_path / "e.h5").exists()


def test_a_batch_that_does_not_split_over_the_ranks_is_a_clear_error():
    from cactus.core.distributed import World
    from cactus.core.errors import CactusError
    from cactus.core.training import CheckpointPolicy
    from embeddings.acai import ACAIEncoder
    from embeddings.fit_state import fit_session

    images = np.zeros((40, 8, 8, 1), dtype=np.uint8)
    two_ranks = CheckpointPolicy(world=World(0, 2))
    with fit_session(two_ranks), pytest.raises(CactusError, match="--batch-size 15: not divis"):
        ACAIEncoder(dim=16, width=4, epochs=1, batch_size=15, device="cpu").fit(images)
