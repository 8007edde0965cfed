"""Shared fixtures: where the real data lives, and a small cactus CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
OMNIGLOT = SHARED_DATA / "omniglot"

needs_omniglot = pytest.mark.skipif(not (OMNIGLOT / "images_background.zip").exists(),
                                    reason="../shared/data/omniglot is not beside the checkout")


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600):
    """Run ``cactus ARGS`` in a subprocess, as a user would; returns the CompletedProcess."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-c", "from cli import main; main()", *args], cwd=cwd or REPO,
                          env=environment, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def omniglot():
    """The real Omniglot dataset at 28x28 with the default split (decoded once, then cached)."""
    if not (OMNIGLOT / "images_background.zip").exists():
        pytest.skip("../shared/data/omniglot is not beside the checkout")
    from cactus.datasets.dataset import load_dataset

    return load_dataset(f"omniglot:{OMNIGLOT}")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tests run single-threaded: BLAS / OpenMP threads that spin on 2 shared cores only slow them down."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield


def omniglot_subset(train_images: int, test_classes: int):
    """(train images (n, 28, 28, 1) uint8, test images, test labels) from the real default split."""
    import numpy as np

    from cactus.datasets.dataset import load_dataset

    if not (OMNIGLOT / "images_background.zip").exists():
        pytest.skip(f"no Omniglot at {OMNIGLOT}")
    ds = load_dataset(f"omniglot:{OMNIGLOT}")
    rng = np.random.default_rng(0)
    train = ds.images[rng.choice(ds.indices(0), train_images, replace=False)]
    test_rows = ds.indices(2)
    labels = ds.true_labels()[test_rows]
    keep = np.isin(labels, rng.choice(np.unique(labels), test_classes, replace=False))
    return train, ds.images[test_rows[keep]], labels[keep]


def stop_at_first_checkpoint(args: list[str], checkpoint: Path) -> str:
    """Start ``cactus ARGS --checkpoint-every 0``, send SIGTERM once its first checkpoint exists, and check
    the stop: exit 143, one "stopped by SIGTERM ... rerun with --resume" message, the checkpoint kept.
    Returns the job's stderr."""
    import signal
    import time

    job = subprocess.Popen([sys.executable, "-c", "from cli import main; main()", *args, "--checkpoint-every", "0"],
                           cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not checkpoint.exists():  # --checkpoint-every 0: the first step has run once it exists
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()
        time.sleep(0.02)
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 143, stderr
    assert "stopped by SIGTERM" in stderr and "rerun with --resume" in stderr and "Traceback" not in stderr
    assert checkpoint.is_file()
    return stderr
