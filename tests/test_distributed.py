"""Distributed meta-training: 2 processes (torchrun, gloo on localhost) equal 1 with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cactus.core.distributed import World, split_batch, world_from_env
from cactus.core.errors import CactusError
from tests.conftest import REPO

ARGS = ("--iterations", "4", "--filters", "8", "--meta-batch", "4", "--threads", "1", "--validate-every", "2",
        "--seed", "1")


@pytest.fixture(scope="module")
def tasks_file(tmp_path_factory):
    from cactus.stages.cluster import run_cluster
    from cactus.stages.common import DataRef
    from cactus.stages.embed import run_embed
    from cactus.stages.tasks import run_tasks

    folder = tmp_path_factory.mktemp("pipeline")
    run_embed(folder / "embeddings.h5", DataRef("digits"), "pca", {"dim": 16})
    run_cluster(folder / "partitions.h5", folder / "embeddings.h5", clusters=30, partitions=3)
    run_tasks(folder / "tasks.h5", folder / "partitions.h5", num_tasks=200)
    return folder / "tasks.h5"


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               str(REPO / "cli.py"), *args]
    return subprocess.run(command, cwd=REPO, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)


def cli(*args: str):
    from click.testing import CliRunner

    from cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_two_gloo_processes_match_one_process(tasks_file, tmp_path):
    import torch

    from cactus.core.store import read_artifact
    from cactus.learners.protonets import ProtoNets
    from cactus.nets import images_to_tensor

    one = cli("meta", tasks_file, "-o", tmp_path / "one.h5", *ARGS, "--json")
    assert one.exit_code == 0, one.output
    two = torchrun(2, "meta", str(tasks_file), "-o", str(tmp_path / "two.h5"), *ARGS, "--json")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "(2 processes, 2 tasks each)" in two.stderr
    assert two.stdout.count('"stage": "meta"') == 1  # rank 0 alone reports ...
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.h5", "two.h5"]  # ... and writes

    a, b = read_artifact(tmp_path / "one.h5"), read_artifact(tmp_path / "two.h5")
    assert a.key == b.key == json.loads(two.stdout)["key"]  # the world size is not part of the result
    np.testing.assert_allclose(b.array("curve/loss"), a.array("curve/loss"), rtol=1e-5)
    np.testing.assert_allclose(b.array("validation/accuracy"), a.array("validation/accuracy"), atol=1e-3)
    weights_a, weights_b = a.group("weights"), b.group("weights")
    assert sorted(weights_a) == sorted(weights_b)
    # Parameters whose true gradient is zero (a conv bias right before batch norm, the norm's shift in a
    # channel that ReLU silences) get float-noise gradients, which Adam rescales to full-size steps: those
    # few entries differ, as between two 1-process runs with different thread counts, and do not change
    # what the net computes (checked below). Every other entry agrees to float tolerance.
    entries = np.concatenate([np.isclose(weights_b[n], weights_a[n], atol=1e-6).ravel()
                              for n in weights_a if not n.endswith(".0.bias")])
    assert entries.mean() > 0.99, entries.mean()

    from sklearn.datasets import load_digits

    images = images_to_tensor(load_digits().images[:64, :, :, None].astype(np.uint8) * 16)
    nets = []
    for weights in (weights_a, weights_b):
        learner = ProtoNets(1, 8, 5, filters=8)
        learner.load_weights(weights)
        nets.append(learner.net)
    with torch.no_grad():
        # Features of size ~1: the noise-driven entries above move a few of them by up to ~5e-4 (15 of
        # 512 on the relaxed k-means partitions); the training losses already agree to 1e-5.
        np.testing.assert_allclose(nets[1](images).numpy(), nets[0](images).numpy(), atol=2e-3)


def test_indivisible_meta_batch_is_a_clear_error():
    assert split_batch(8, World(1, 2)) == slice(4, 8)
    assert split_batch(3, World()) == slice(0, 3)
    with pytest.raises(CactusError, match="--meta-batch 5: not divisible by the 2 processes"):
        split_batch(5, World(0, 2))


def test_world_comes_from_torchrun_or_slurm_variables():
    assert world_from_env({}) == World()
    assert world_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == World(3, 4, 1)
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}
    assert world_from_env(slurm) == World(5, 8, 1)
    assert world_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == World()  # a plain sbatch job
    assert world_from_env({**slurm, "RANK": "0", "WORLD_SIZE": "2"}) == World(0, 2, 0)  # torchrun inside srun
    with pytest.raises(CactusError, match="inconsistent"):
        world_from_env({"RANK": "2", "WORLD_SIZE": "2"})
