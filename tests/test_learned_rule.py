"""The learned unsupervised update rule: meta-gradients, neuron-locality, rule files, the encoder,
and meta-training checkpoints."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cactus.core.errors import CactusError  # noqa: E402
from cactus.update_rule.config import RuleConfig  # noqa: E402
from embeddings import learned_rule as lr  # noqa: E402

OMNIGLOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"


@pytest.fixture(scope="module")
def omniglot_small():
    """(images (N, 28, 28, 1) uint8, labels (N,)) of 20 meta-train characters (400 images)."""
    if not OMNIGLOT.is_dir():
        pytest.skip("Omniglot not found beside the checkout")
    from cactus.datasets.dataset import TRAIN, load_dataset

    ds = load_dataset(f"omniglot:{OMNIGLOT}")
    rows = ds.indices(TRAIN)
    labels = ds.true_labels()[rows]
    keep = rows[np.isin(labels, np.unique(labels)[:20])]
    return ds.images[keep], ds.true_labels()[keep]


def _tiny_state(sizes, hidden, seed=0):
    return lr.init_base(sizes, hidden, torch.Generator().manual_seed(seed), dtype=torch.float64)


def _write_rule(path: Path, hidden: int = 8, blocks: int = 1, seed: int = 0, unroll: int = 20) -> dict:
    from cactus.core.store import write_artifact

    torch.manual_seed(seed)
    net = lr.make_update_network(hidden, blocks)
    theta = lr.theta_state(net)
    config = RuleConfig(hidden=hidden, blocks=blocks, unroll=unroll, unroll_min=10, window=5).as_dict()
    write_artifact(path, stage="rule", config=config, inputs=[],
                   arrays={**{f"theta/{k}": v for k, v in theta.items()},
                           "curve/step": np.arange(3), "curve/meta_objective": np.array([1.0, 0.9, 0.8])})
    return theta


def test_meta_gradient_matches_finite_differences():
    """d(meta-objective)/d(theta) through two unsupervised steps, autograd vs central differences (float64)."""
    torch.manual_seed(0)
    net = lr.make_update_network(hidden=4, blocks=1).double()
    generator = torch.Generator().manual_seed(1)
    x_train = torch.rand(2, 8, 6, generator=generator, dtype=torch.float64)
    support = torch.rand(6, 6, generator=generator, dtype=torch.float64)
    query = torch.rand(6, 6, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])

    def objective() -> torch.Tensor:
        state = _tiny_state([6, 5, 4], hidden=4)
        for batch in x_train:
            state = lr.unsupervised_step(net, state, batch)
        return lr.meta_objective(state.weights, support, labels, query, labels, ways=3)

    loss = objective()
    loss.backward()
    checked = 0
    for name, param in net.named_parameters():
        flat, grad = param.data.view(-1), param.grad.view(-1)
        for index in range(min(2, flat.numel())):
            original = float(flat[index])
            with torch.no_grad():
                flat[index] = original + 1e-6
                up = float(objective())
                flat[index] = original - 1e-6
                down = float(objective())
                flat[index] = original
            numeric = (up - down) / 2e-6
            assert abs(numeric - float(grad[index])) <= 1e-5 + 1e-3 * abs(numeric), name
            checked += 1
    assert checked >= 8
    assert float(net.inp.weight.grad.abs().sum()) > 0  # the signal really reaches theta


def test_update_is_neuron_local():
    """Permuting the units of a hidden layer permutes the update (rows of W1/V1, columns of W2/V2)."""
    torch.manual_seed(0)
    net = lr.make_update_network(hidden=6, blocks=2).double()
    state = _tiny_state([7, 5, 4], hidden=6)
    state.memory[1] = torch.randn(5, 6, dtype=torch.float64)
    x0 = torch.rand(10, 7, dtype=torch.float64)
    perm = torch.tensor([3, 0, 4, 1, 2])
    permuted = lr.BaseState(
        [state.weights[0][perm], state.weights[1][:, perm]],
        [state.feedback[0][perm], state.feedback[1][:, perm]],
        [state.memory[0], state.memory[1][perm], state.memory[2]],
    )
    with torch.no_grad():
        new = lr.unsupervised_step(net, state, x0)
        new_permuted = lr.unsupervised_step(net, permuted, x0)
    torch.testing.assert_close(new_permuted.weights[0], new.weights[0][perm])
    torch.testing.assert_close(new_permuted.weights[1], new.weights[1][:, perm])
    torch.testing.assert_close(new_permuted.feedback[0], new.feedback[0][perm])
    torch.testing.assert_close(new_permuted.memory[1], new.memory[1][perm])
    assert not torch.allclose(new.weights[0], state.weights[0])  # the step did change the weights


def test_rule_state_stays_finite_with_a_large_memory_gain():
    """The running statistics are bounded, so a theta whose memory loop has gain > 1 cannot overflow."""
    torch.manual_seed(0)
    net = lr.make_update_network(hidden=8, blocks=1)
    with torch.no_grad():
        net.memory.weight.mul_(50.0)
    state = lr.init_base([20, 16, 12], hidden=8, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(200):
            state = lr.unsupervised_step(net, state, torch.rand(16, 20, generator=generator))
    assert all(bool(torch.isfinite(t).all()) for t in state.tensors())
    assert max(float(m.abs().max()) for m in state.memory) <= 1.0


def test_ridge_loss_matches_numpy_closed_form():
    rng = np.random.default_rng(0)
    support, query = rng.normal(size=(6, 4)), rng.normal(size=(5, 4))
    ys, yq = np.eye(3)[[0, 1, 2, 0, 1, 2]], np.eye(3)[[0, 1, 2, 1, 0]]
    mean = support.mean(0)
    xs = (support - mean) / np.linalg.norm(support - mean, axis=1, keepdims=True)
    xq = (query - mean) / np.linalg.norm(query - mean, axis=1, keepdims=True)
    v = np.linalg.solve(xs.T @ xs + np.eye(4), xs.T @ ys)  # primal form
    expected = ((xq @ v - yq) ** 2).sum(1).mean()
    got = lr.ridge_loss(*(torch.as_tensor(a) for a in (support, ys, query, yq)))
    assert abs(float(got) - expected) < 1e-10


def test_theta_round_trip(tmp_path):
    theta = _write_rule(tmp_path / "rule.h5", hidden=8, blocks=2, seed=3)
    net, artifact = lr.load_rule(tmp_path / "rule.h5")
    assert artifact.stage == "rule"
    for name, value in lr.theta_state(net).items():
        np.testing.assert_array_equal(value, theta[name])
    np.testing.assert_array_equal(artifact.array("curve/meta_objective"), [1.0, 0.9, 0.8])


def test_load_rule_refuses_a_missing_or_mismatched_file(tmp_path):
    with pytest.raises(CactusError, match="no such rule file"):
        lr.load_rule(tmp_path / "absent.h5")
    net = lr.make_update_network(hidden=4, blocks=1)
    with pytest.raises(CactusError, match="do not match"):
        lr.load_theta(net, lr.theta_state(lr.make_update_network(hidden=8, blocks=1)))


def test_shipped_rule_loads():
    if not lr.DEFAULT_RULE.is_file():
        pytest.skip("no shipped rule yet")
    net, artifact = lr.load_rule(None)
    curve = artifact.array("curve/meta_objective")
    assert len(curve) == len(artifact.array("curve/step")) > 0
    assert sum(p.numel() for p in net.parameters()) < 20_000


def test_encoder_contract(tmp_path, omniglot_small):
    images = omniglot_small[0][:120]
    _write_rule(tmp_path / "rule.h5")
    make = lambda **kw: lr.LearnedRuleEncoder(width=24, depth=2, steps=5, rule=str(tmp_path / "rule.h5"),  # noqa: E731
                                              batch_size=16, **kw)
    encoder = make(seed=1).fit(images)
    embeddings = encoder.transform(images)
    assert embeddings.shape == (120, 24) and embeddings.dtype == np.float32
    assert np.isfinite(embeddings).all()
    np.testing.assert_array_equal(make(seed=1).fit(images).transform(images), embeddings)
    assert not np.array_equal(make(seed=2).fit(images).transform(images), embeddings)
    restored = make(seed=1)
    restored.set_state(encoder.get_state())
    np.testing.assert_array_equal(restored.transform(images), embeddings)
    with pytest.raises(CactusError, match="shape"):
        encoder.transform(images[:, :14, :14])
    params = encoder.get_params()
    assert params["width"] == 24 and int(encoder.get_state()["steps"]) == 5
    assert encoder.input_keys() == [lr.load_rule(str(tmp_path / "rule.h5"))[1].key]  # the rule joins the cache key
    rebuilt = lr.LearnedRuleEncoder.from_params(encoder.key_params())
    assert rebuilt.key_params() == encoder.key_params()  # stored params rebuild the encoder (embed --encoder)
    assert lr.LearnedRuleEncoder(dim=32).width_to_use() == 32  # dim is the width when width is not given
    with pytest.raises(CactusError, match="--steps"):
        lr.LearnedRuleEncoder(steps=-1, rule=str(tmp_path / "rule.h5")).fit(images)


def test_steps_default_to_the_rule_s(tmp_path):
    """Without --steps the rule's default runs (quick caps the steps at 50); fit records them in steps_."""
    _write_rule(tmp_path / "rule.h5")
    _, artifact = lr.load_rule(str(tmp_path / "rule.h5"))
    default = lr.default_steps(artifact)
    assert lr.LearnedRuleEncoder(rule=str(tmp_path / "rule.h5")).steps_to_run() == default
    assert lr.LearnedRuleEncoder(rule=str(tmp_path / "rule.h5"), steps=3).steps_to_run() == 3
    _, shipped = lr.load_rule(None)
    assert lr.LearnedRuleEncoder().steps_to_run() == lr.default_steps(shipped)
    assert lr.LearnedRuleEncoder(quick=True).steps_to_run() == min(lr.default_steps(shipped), 50)


def test_encoder_is_registered():
    from embeddings import encoder_class

    assert encoder_class("learned-rule") is lr.LearnedRuleEncoder


def _tiny_config(**overrides) -> RuleConfig:
    options = dict(width_range=(8, 12), depth_range=(1, 2), unroll=6, unroll_min=4, window=2, outer_steps=6,
                   batch_size=8, pool_classes=4, ways=3, shots=1, queries=1, hidden=4, blocks=1, seed=5)
    options.update(overrides)
    return RuleConfig(**options)


def _flat(images: np.ndarray) -> np.ndarray:
    return images[:, ::4, ::4].reshape(len(images), -1).astype(np.float32) / 255.0


def test_resume_gives_the_same_result(tmp_path, omniglot_small):
    from cactus.core.training import CheckpointPolicy, save_checkpoint
    from cactus.update_rule.train import MetaTrainer

    pixels, labels = _flat(omniglot_small[0]), omniglot_small[1]
    config = _tiny_config()
    whole = MetaTrainer(config, pixels, labels)
    whole.train()
    first = MetaTrainer(config, pixels, labels)
    for _ in range(3):
        first.outer_step()
    save_checkpoint(tmp_path / "ckpt", {**first.checkpoint_state(), "key": "k"})
    second = MetaTrainer(config, pixels, labels)
    assert second.restore(CheckpointPolicy(tmp_path / "ckpt", "k", resume=True))
    second.train()
    for name, value in lr.theta_state(whole.theta).items():
        np.testing.assert_array_equal(lr.theta_state(second.theta)[name], value)
    assert second.curve["meta_objective"] == whole.curve["meta_objective"]
    assert whole.counters["run_index"] >= 1  # the run crossed an inner-run boundary


def test_signal_writes_a_checkpoint(tmp_path, omniglot_small):
    from cactus.core.training import CheckpointPolicy, Stopped
    from cactus.update_rule.train import MetaTrainer, checkpoint_key

    pixels, labels = _flat(omniglot_small[0]), omniglot_small[1]
    trainer = MetaTrainer(_tiny_config(), pixels, labels)
    step = trainer.outer_step

    def step_then_signal() -> float:
        value = step()
        if trainer.counters["outer"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return value

    trainer.outer_step = step_then_signal
    key = checkpoint_key(_tiny_config(), ["data"])
    with pytest.raises(Stopped) as stopped:
        trainer.train(CheckpointPolicy(tmp_path / "ckpt", key))  # every 300 s: only the signal saves
    assert stopped.value.exit_code == 143 and stopped.value.step == 2
    resumed = MetaTrainer(_tiny_config(), pixels, labels)
    assert resumed.restore(CheckpointPolicy(tmp_path / "ckpt", key, resume=True))
    assert resumed.counters["outer"] == 2
    longer = _tiny_config(outer_steps=9)  # --outer-steps may change on --resume ...
    assert checkpoint_key(longer, ["data"]) == key
    other = _tiny_config(seed=6)  # ... no other option may
    with pytest.raises(CactusError, match="belongs to a different configuration"):
        MetaTrainer(other, pixels, labels).restore(CheckpointPolicy(tmp_path / "ckpt", checkpoint_key(other, ["data"]),
                                                                    resume=True))
    shorter = _tiny_config(outer_steps=1)  # checkpoint at outer step 2 > 1
    with pytest.raises(CactusError, match=r"ckpt: checkpoint at step 2 is outside \[0, 1\]"):
        MetaTrainer(shorter, pixels, labels).restore(CheckpointPolicy(tmp_path / "ckpt", key, resume=True))


def rule_args(out: Path, outer_steps: int = 3) -> list[str]:
    """``meta-train`` on digits with a tiny base MLP and update network."""
    return ["meta-train", "--data", "digits", "--image-size", "0", "--out", str(out), "--width-range", "8,12",
            "--depth-range", "1,2", "--unroll", "4", "--unroll-min", "2", "--window", "2", "--outer-steps",
            str(outer_steps), "--batch-size", "16", "--pool-classes", "4", "--ways", "3", "--shots", "1",
            "--queries", "1", "--hidden", "4", "--blocks", "1", "--threads", "1", "--json"]


def test_meta_train_command_writes_a_rule(tmp_path):
    from click.testing import CliRunner

    from cactus.cli.rule import rule

    out = tmp_path / "rule.h5"
    args = rule_args(out)
    result = CliRunner().invoke(rule, args)
    assert result.exit_code == 0, result.output
    net, artifact = lr.load_rule(out)
    assert len(artifact.array("curve/meta_objective")) == 3
    bad = CliRunner().invoke(rule, [*args[:7], "--width-range", "12,8"])
    assert bad.exit_code != 0 and "--width-range" in str(bad.exception or bad.output)
    assert not (tmp_path / "rule.h5.ckpt").exists()  # consumed once the rule is written


def test_meta_train_stopped_by_sigterm_then_resumed_equals_an_uninterrupted_run(tmp_path):
    """`cactus rule meta-train` killed with SIGTERM: exit 143, a checkpoint; --resume ends where a whole run does."""

    from click.testing import CliRunner

    from cli import main
    from tests.conftest import stop_at_first_checkpoint

    steps = 150
    full = CliRunner().invoke(main, ["rule", *rule_args(tmp_path / "full.h5", steps)])
    assert full.exit_code == 0, full.output

    out, checkpoint = tmp_path / "rule.h5", tmp_path / "rule.h5.ckpt"
    stop_at_first_checkpoint(["rule", *rule_args(out, steps)], checkpoint)
    assert not out.exists()
    stopped_at = torch.load(checkpoint, weights_only=True)["counters"]["outer"]
    assert 0 < stopped_at < steps

    resumed = CliRunner().invoke(main, ["rule", *rule_args(out, steps), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming from {checkpoint} at outer step {stopped_at}" in resumed.stderr
    assert not checkpoint.exists()  # consumed once the rule is written
    _, a = lr.load_rule(tmp_path / "full.h5")
    _, b = lr.load_rule(out)
    assert a.key == b.key and sorted(a.arrays) == sorted(b.arrays)
    for name in a.arrays:
        np.testing.assert_array_equal(a.arrays[name], b.arrays[name], err_msg=name)


@pytest.mark.slow
def test_shipped_rule_beats_random_init_on_test_characters():
    """The shipped rule trains a base MLP whose ridge readout beats the same MLP untrained."""
    if not lr.DEFAULT_RULE.is_file() or not OMNIGLOT.is_dir():
        pytest.skip("needs the shipped rule and Omniglot")
    from cactus.datasets.dataset import TEST, load_dataset
    from cactus.evaluation.baselines import evaluate_embedding

    _, artifact = lr.load_rule(None)
    size = int(artifact.attrs["image_shape"][0])
    ds = load_dataset(f"omniglot:{OMNIGLOT}", image_size=size)
    rows = ds.indices(TEST)
    images, labels = ds.images[rows], ds.true_labels()[rows]
    scores = {}
    for steps in (0, None):
        encoder = lr.LearnedRuleEncoder(width=128, depth=2, steps=steps).fit(images)
        scores[steps] = evaluate_embedding(encoder.transform(images), labels, "ridge", ways=5, shots=1,
                                           n_tasks=300)["accuracy"]
    assert scores[None] > scores[0]
