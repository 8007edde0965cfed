"""cactus/core/training.py: the one checkpoint / signal layer of meta, embed and rule meta-train."""

from __future__ import annotations

import os
import signal

import pytest

from cactus.core.errors import CactusError
from cactus.core.training import CheckpointLoop, CheckpointPolicy, Stopped, load_checkpoint, save_checkpoint


def test_the_exit_code_is_128_plus_the_signal(tmp_path):
    assert Stopped("SIGTERM", tmp_path / "x.ckpt", 3).exit_code == 143
    assert Stopped("SIGINT", tmp_path / "x.ckpt", 3).exit_code == 130
    message = str(Stopped("SIGTERM", tmp_path / "x.ckpt", 3))
    assert message == f"stopped by SIGTERM at step 3; checkpoint saved to {tmp_path / 'x.ckpt'}; rerun with --resume"


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_then_stops_and_the_handlers_come_back(sig, code, tmp_path):
    before = signal.getsignal(sig)
    policy = CheckpointPolicy(tmp_path / "x.ckpt", "k", every_s=1e9)
    done = 0
    with pytest.raises(Stopped) as stopped, policy.running(lambda: {"done": done}) as loop:
        for done in range(1, 10):
            if done == 4:
                os.kill(os.getpid(), sig)
            loop.after_step(done)
    assert stopped.value.exit_code == code and stopped.value.step == 4
    assert load_checkpoint(tmp_path / "x.ckpt", "k") == {"done": 4, "key": "k"}
    assert signal.getsignal(sig) is before


def test_checkpoints_every_n_seconds(tmp_path):
    saved = []
    never = CheckpointPolicy(tmp_path / "never.ckpt", "k", every_s=1e9)
    with never.running(lambda: {"n": len(saved)}) as loop:
        for done in range(1, 4):
            loop.after_step(done)
    assert not (tmp_path / "never.ckpt").exists()
    always = CheckpointPolicy(tmp_path / "always.ckpt", "k", every_s=0.0)
    with always.running(lambda: saved.append(1) or {"n": len(saved)}) as loop:
        for done in range(1, 4):
            loop.after_step(done)
    assert len(saved) == 3 and load_checkpoint(tmp_path / "always.ckpt", "k")["n"] == 3


def test_without_a_path_nothing_is_saved_and_signals_are_left_alone():
    before = signal.getsignal(signal.SIGTERM)
    with CheckpointPolicy().running(lambda: pytest.fail("nothing to save")) as loop:
        assert signal.getsignal(signal.SIGTERM) is before
        loop.after_step(1)
    assert CheckpointPolicy().restore("trainer", 10, lambda s: 0, lambda s: None) is None


def test_only_rank_0_writes(tmp_path):
    from cactus.core.distributed import World

    loop = CheckpointLoop(CheckpointPolicy(tmp_path / "x.ckpt", "k", world=World(1, 2)), lambda: {"n": 1})
    loop.save()
    assert not (tmp_path / "x.ckpt").exists()


def restore(path, total=10, apply=lambda s: None):
    return CheckpointPolicy(path, "k", resume=True).restore("trainer", total, lambda s: int(s["done"]), apply)


def test_restore_applies_a_good_checkpoint_and_skips_a_missing_one(tmp_path):
    path = tmp_path / "x.ckpt"
    assert restore(path) is None  # no file: start from the beginning
    save_checkpoint(path, {"key": "k", "done": 10})
    applied = []
    assert restore(path, apply=applied.append) == {"key": "k", "done": 10} == applied[0]
    assert CheckpointPolicy(path, "k").restore("trainer", 10, lambda s: 0, applied.append) is None  # no --resume


@pytest.mark.parametrize("state, reason", [
    ({"key": "other", "done": 1}, "checkpoint belongs to a different configuration; delete it or drop --resume"),
    ({"key": "k", "done": 10**6}, "checkpoint at step 1000000 is outside [0, 10]; delete it to start over"),
    ({"key": "k", "done": -100}, "checkpoint at step -100 is outside [0, 10]; delete it to start over"),
    ({"key": "k"}, "checkpoint does not fit this trainer (no field 'done'); delete it to start over"),
    ({"key": "k", "done": "abc"}, "checkpoint does not fit this trainer (ValueError: invalid literal for int() with "
                                  "base 10: 'abc'); delete it to start over"),
])
def test_restore_refuses_a_bad_checkpoint_in_one_line_naming_the_file(state, reason, tmp_path):
    path = tmp_path / "x.ckpt"
    save_checkpoint(path, state)
    with pytest.raises(CactusError) as refused:
        restore(path)
    assert str(refused.value) == f"{path}: {reason}"


def test_a_field_that_does_not_load_is_one_line(tmp_path):
    path = tmp_path / "x.ckpt"
    save_checkpoint(path, {"key": "k", "done": 1})

    def apply(saved):
        raise RuntimeError("Error(s) in loading state_dict:\n\tsize mismatch for weight")

    with pytest.raises(CactusError) as refused:
        restore(path, apply=apply)
    assert str(refused.value) == (f"{path}: checkpoint does not fit this trainer (RuntimeError: Error(s) in loading "
                                  "state_dict:); delete it to start over")


def test_an_unreadable_checkpoint_is_named(tmp_path):
    path = tmp_path / "x.ckpt"
    path.write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(CactusError, match="x.ckpt: unreadable checkpoint"):
        restore(path)


@pytest.fixture(scope="module")
def tasks_file(tmp_path_factory):
    from cactus.stages.cluster import run_cluster
    from cactus.stages.common import DataRef
    from cactus.stages.embed import run_embed
    from cactus.stages.tasks import run_tasks

    folder = tmp_path_factory.mktemp("pipeline")
    run_embed(folder / "embeddings.h5", DataRef("digits"), "pca", {"dim": 16})
    run_cluster(folder / "partitions.h5", folder / "embeddings.h5", clusters=30, partitions=3)
    run_tasks(folder / "tasks.h5", folder / "partitions.h5", num_tasks=100)
    return folder / "tasks.h5"


COMMANDS = {
    "meta": lambda tasks, out: ["meta", tasks, "-o", out, "--iterations", "20", "--filters", "4", "--threads", "1"],
    "embed": lambda tasks, out: ["embed", "--data", "digits", "--method", "acai", "--dim", "16", "--width", "4",
                                 "--epochs", "1", "--batch-size", "32", "--threads", "1", "-o", out],
    "rule": lambda tasks, out: ["rule", "meta-train", "--data", "digits", "--image-size", "0", "--out", out,
                                "--width-range", "8,12", "--depth-range", "1,2", "--unroll", "4", "--unroll-min", "2",
                                "--window", "2", "--outer-steps", "20", "--batch-size", "16", "--pool-classes", "4",
                                "--ways", "3", "--shots", "1", "--queries", "1", "--hidden", "4", "--blocks", "1",
                                "--threads", "1"],
}


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_trainer_stops_with_the_same_exit_code(command, sig, code, tasks_file, tmp_path, monkeypatch):
    """meta, embed and rule meta-train, sent a real signal after step 2: a checkpoint, one line, 128 + signal."""
    from click.testing import CliRunner

    from cli import main

    after_step = CheckpointLoop.after_step

    def signalling(self, done: int) -> None:
        if done == 2:
            os.kill(os.getpid(), sig)
        after_step(self, done)

    monkeypatch.setattr(CheckpointLoop, "after_step", signalling)
    out = tmp_path / "out.h5"
    result = CliRunner().invoke(main, [str(a) for a in COMMANDS[command](tasks_file, out)])
    assert result.exit_code == code, result.output
    assert result.stderr.strip().splitlines()[-1] == (
        f"cactus: stopped by {sig.name} at step 2; checkpoint saved to {out}.ckpt; rerun with --resume")
    assert (tmp_path / "out.h5.ckpt").is_file() and not out.exists()


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    path = tmp_path / "x.ckpt"
    save_checkpoint(path, {"key": "k", "done": 1})

    def full(self, data) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(CactusError) as refused:
        save_checkpoint(path, {"key": "k", "done": 2})
    assert str(refused.value) == f"{path}: cannot write checkpoint (no space left on device)"
    monkeypatch.undo()
    assert load_checkpoint(path, "k") == {"key": "k", "done": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.ckpt"]  # no temporary file left


@pytest.mark.parametrize("value", ["nan", "-1", "abc"])
def test_rule_meta_train_checks_the_interval_as_meta_and_embed_do(value):
    from click.testing import CliRunner

    from cli import main

    outcomes = []
    for command in (["rule", "meta-train", "--data", "digits"], ["meta", "t.h5", "-o", "m.h5"],
                    ["embed", "--data", "digits", "-o", "e.h5"]):
        result = CliRunner().invoke(main, [*command, "--checkpoint-every", value])
        outcomes.append((result.exit_code, result.stderr.strip().splitlines()[-1].split(" (see ")[0]))
    assert outcomes[0] == outcomes[1] == outcomes[2], outcomes
    assert outcomes[0][0] in (1, 2) and "--checkpoint-every" in outcomes[0][1]
