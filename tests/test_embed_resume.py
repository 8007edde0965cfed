"""Pre-emption of the neural encoders: a fit stopped midway and resumed equals an uninterrupted fit."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from tests.conftest import stop_at_first_checkpoint

# Tiny settings: 200 digits (8x8), 2 epochs of 6 steps, a few channels. Each fit takes well under a second.
ENCODERS = {
    "contrastive": {"dim": 16, "width": 8, "epochs": 2, "batch_size": 32, "proj_dim": 16},
    "deepcluster": {"dim": 8, "features": 16, "width": 8, "clusters": 10, "epochs": 2, "batch_size": 32},
    "acai": {"dim": 16, "width": 4, "epochs": 2, "batch_size": 32},
    "bigan": {"dim": 8, "width": 4, "epochs": 2, "batch_size": 32},
    "infogan": {"dim": 16, "width": 4, "epochs": 2, "batch_size": 32},
}
STEPS = 12  # 2 epochs x (200 // 32) batches


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """(200, 8, 8, 1) uint8 digits."""
    from sklearn.datasets import load_digits

    return (load_digits().images[:200, :, :, None] * 16).clip(0, 255).astype(np.uint8)


def make(method: str):
    from embeddings import encoder_class

    return encoder_class(method)(**ENCODERS[method], seed=2, device="cpu", threads=1)


def learned(encoder) -> dict[str, list[float]]:
    """The per-epoch figures an encoder records besides its weights."""
    names = ("losses_", "critic_losses_", "recon_errors_", "latent_errors_", "d_losses_")
    return {name: list(getattr(encoder, name)) for name in names if hasattr(encoder, name)}


def sigterm_after(steps: int, monkeypatch) -> None:
    """Deliver a real SIGTERM to this process once ``steps`` steps (counted from the start of training) ran."""
    from cactus.core.training import CheckpointLoop

    after_step = CheckpointLoop.after_step

    def signalling(self, done: int) -> None:
        if done == steps:
            os.kill(os.getpid(), signal.SIGTERM)
        after_step(self, done)

    monkeypatch.setattr(CheckpointLoop, "after_step", signalling)


def policy(checkpoint, **options):
    from cactus.core.training import CheckpointPolicy

    return CheckpointPolicy(checkpoint, "k", **options)


@pytest.mark.parametrize("stop_after", [3, 6, 8])
@pytest.mark.parametrize("method", sorted(ENCODERS))
def test_fit_stopped_then_resumed_equals_an_uninterrupted_fit(method, stop_after, images, tmp_path, monkeypatch):
    import torch

    from cactus.core.training import Stopped
    from embeddings.fit_state import fit_session

    full = make(method).fit(images)
    checkpoint = tmp_path / "e.h5.ckpt"
    with monkeypatch.context() as patch:
        sigterm_after(stop_after, patch)
        with fit_session(policy(checkpoint, every_s=1e9)), pytest.raises(Stopped) as stopped:
            make(method).fit(images)
    assert stopped.value.exit_code == 143
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["epoch"] * (STEPS // 2) + saved["step"] == stop_after
    torch.manual_seed(123)  # the resumed fit must not depend on the RNG state it starts with
    with fit_session(policy(checkpoint, resume=True)):
        resumed = make(method).fit(images)
    np.testing.assert_array_equal(resumed.transform(images), full.transform(images))
    assert learned(resumed) == learned(full)
    assert len(resumed.losses_) == 2


def test_a_fit_without_the_stop_never_touches_the_checkpoint(images, tmp_path):
    from embeddings.fit_state import fit_session

    with fit_session(policy(tmp_path / "e.h5.ckpt", every_s=1e9)):
        make("acai").fit(images)
    assert not (tmp_path / "e.h5.ckpt").exists()
    with fit_session(policy(tmp_path / "e.h5.ckpt", every_s=0.0)):
        make("acai").fit(images)
    assert (tmp_path / "e.h5.ckpt").exists()  # every_s 0: saved after every step


def test_resume_refuses_a_checkpoint_of_another_encoder(images, tmp_path, monkeypatch):
    from cactus.core.errors import CactusError
    from cactus.core.training import Stopped
    from embeddings.fit_state import fit_session

    checkpoint = tmp_path / "e.h5.ckpt"
    with monkeypatch.context() as patch:
        sigterm_after(2, patch)
        with fit_session(policy(checkpoint)), pytest.raises(Stopped):
            make("acai").fit(images)
    with fit_session(policy(checkpoint, resume=True)), pytest.raises(CactusError, match="does not fit"):
        make("infogan").fit(images)


@pytest.mark.parametrize("epoch, step, reason", [(0, 7, "step 7 of an epoch of 6"),
                                                 (10**6, 0, "at step 6000000 is outside \\[0, 12\\]"),
                                                 (-100, 0, "at step -600 is outside \\[0, 12\\]")])
def test_resume_refuses_a_position_outside_the_fit(epoch, step, reason, images, tmp_path):
    import torch

    from cactus.core.errors import CactusError
    from embeddings.fit_state import fit_session

    checkpoint = tmp_path / "e.h5.ckpt"
    with fit_session(policy(checkpoint, every_s=0.0)):
        make("acai").fit(images)
    saved = torch.load(checkpoint, weights_only=True)
    torch.save({**saved, "epoch": epoch, "step": step}, checkpoint)
    with fit_session(policy(checkpoint, resume=True)), pytest.raises(CactusError, match=reason) as refused:
        make("acai").fit(images)
    assert str(refused.value).startswith(f"{checkpoint}: checkpoint") and "\n" not in str(refused.value)


def embed_args(out) -> list[str]:
    return ["embed", "--data", "digits", "--method", "acai", "--dim", "16", "--width", "4", "--epochs", "3",
            "--batch-size", "16", "--threads", "1", "--seed", "1", "-o", str(out)]


def cli(*args: str):
    from click.testing import CliRunner

    from cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def read(path):
    from cactus.core.store import read_artifact

    return read_artifact(path, stage="embed")


def test_embed_stopped_by_sigterm_then_resumed_equals_an_uninterrupted_run(tmp_path):
    import torch

    full = cli(*embed_args(tmp_path / "full.h5"), "--json")
    assert full.exit_code == 0, full.output

    out, checkpoint = tmp_path / "e.h5", tmp_path / "e.h5.ckpt"
    stop_at_first_checkpoint([*embed_args(out)], checkpoint)
    assert not out.exists()
    saved = torch.load(checkpoint, weights_only=True)
    steps_per_epoch = 900 // 16
    assert 0 < saved["epoch"] * steps_per_epoch + saved["step"] < 3 * steps_per_epoch

    resumed = cli(*embed_args(out), "--resume", "--json")
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming from {checkpoint}" in resumed.output
    assert not checkpoint.exists()  # consumed once the artifact is written
    a, b = read(tmp_path / "full.h5"), read(out)
    assert a.key == b.key == json.loads(full.stdout)["key"]
    np.testing.assert_array_equal(b.array("embeddings"), a.array("embeddings"))
    assert b.attrs["history"] == a.attrs["history"]


def test_embed_resume_refuses_a_checkpoint_of_another_configuration(tmp_path):
    from cactus.core.training import save_checkpoint

    save_checkpoint(tmp_path / "e.h5.ckpt", {"key": "0" * 64, "epoch": 0, "step": 3})
    result = cli(*embed_args(tmp_path / "e.h5"), "--resume")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "checkpoint belongs to a different configuration" in result.output.strip().splitlines()[-1]
    assert not (tmp_path / "e.h5").exists()
