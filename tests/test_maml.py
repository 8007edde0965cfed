"""MAML: the batched meta-gradient against the per-task loop, training on Omniglot, the protocol."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from cactus.learners import maml_step
from cactus.learners.maml import MAML
from cactus.learners.maml_step import InnerLoop, TaskBatch, meta_backward
from cactus.nets import ConvNet
from tests.reference_maml import maml_reference_meta_gradient, reference_predict

OMNIGLOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
WAYS, SHOTS, QUERIES, TASKS, SIZE = 3, 2, 2, 3, 10


def _random_batch(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    support_x = torch.rand(TASKS, WAYS * SHOTS, 1, SIZE, SIZE, generator=g, dtype=dtype)
    query_x = torch.rand(TASKS, WAYS * QUERIES, 1, SIZE, SIZE, generator=g, dtype=dtype)
    support_y = torch.arange(WAYS).repeat_interleave(SHOTS).expand(TASKS, -1)
    query_y = torch.arange(WAYS).repeat_interleave(QUERIES).expand(TASKS, -1)
    return support_x, support_y, query_x, query_y


def _float64_learner(first_order: bool, learn_inner_lr: bool) -> MAML:
    learner = MAML(
        1, SIZE, WAYS, filters=4, inner_steps=3, inner_lr=0.3, first_order=first_order,
        learn_inner_lr=learn_inner_lr, seed=1,
    )
    learner.net.double()
    if isinstance(learner.inner_lrs, dict):
        g = torch.Generator().manual_seed(2)
        for lr in learner.inner_lrs.values():  # distinct per-entry rates, so a mix-up would show
            lr.data = lr.data.double() * (0.5 + torch.rand(lr.shape, generator=g, dtype=torch.float64))
    return learner


def _reference(learner: MAML, batch, first_order: bool):
    """The per-task loop's (loss, gradients) on a copy of the learner's net."""
    reference_net = ConvNet(1, SIZE, 4, WAYS, "stride").double()
    reference_net.load_state_dict(learner.net.state_dict())
    return maml_reference_meta_gradient(reference_net, *batch, 3, learner.inner_lrs, first_order)


@pytest.mark.parametrize("query_chunk, recompute", [(None, False), (1, False), (2, False), (3, True), (1, True)],
                         ids=["one-graph", "q1", "q2", "recompute", "recompute-q1"])
@pytest.mark.parametrize(
    "first_order, learn_inner_lr", [(False, False), (True, False), (False, True), (True, True)],
    ids=["second-order", "first-order", "meta-sgd", "meta-sgd-first-order"],
)
def test_batched_meta_gradient_equals_per_task_loop(first_order, learn_inner_lr, query_chunk, recompute):
    """Every path of meta_backward: one graph (the GPU default), the two-phase one (inner loops
    together, query sets a few tasks at a time) and the recomputing one (one inner step's graph at a time)."""
    learner = _float64_learner(first_order, learn_inner_lr)
    batch = _random_batch()
    lrs = learner.inner_lrs
    leaves = dict(learner.net.named_parameters())
    if isinstance(lrs, dict):
        leaves.update({f"inner_lr/{n}": t for n, t in lrs.items()})
    losses, logits = meta_backward(learner.net, dict(learner.net.named_parameters()), InnerLoop(3, lrs, first_order),
                                   TaskBatch(*batch), TASKS, query_chunk, recompute)
    loss, expected = _reference(learner, batch, first_order)

    assert logits.shape == (TASKS, WAYS * QUERIES, WAYS) and not logits.requires_grad
    assert losses.mean().item() == pytest.approx(loss, rel=1e-10)
    assert set(leaves) == set(expected)
    # A conv bias right before batch norm has a true gradient of 0: compare against the overall scale.
    scale = max(g.abs().max().item() for g in expected.values())
    for name, leaf in leaves.items():
        torch.testing.assert_close(leaf.grad, expected[name], rtol=1e-7, atol=1e-10 * scale, msg=name)


@pytest.mark.parametrize(
    "first_order, learn_inner_lr", [(False, False), (True, False), (False, True), (True, True)],
    ids=["second-order", "first-order", "meta-sgd", "meta-sgd-first-order"],
)
def test_per_task_channels_last_meta_gradient_equals_per_task_loop(first_order, learn_inner_lr):
    """The task-by-task path (net's own modules, channels-last) gives the reference loop's meta-gradient."""
    from cactus.learners.maml_per_task import per_task_meta_backward

    learner = _float64_learner(first_order, learn_inner_lr)
    batch = _random_batch(seed=4)
    lrs = learner.inner_lrs
    leaves = dict(learner.net.named_parameters())
    if isinstance(lrs, dict):
        leaves.update({f"inner_lr/{n}": t for n, t in lrs.items()})
    losses, logits = per_task_meta_backward(learner.net, dict(learner.net.named_parameters()),
                                            InnerLoop(3, lrs, first_order), TaskBatch(*batch), TASKS)
    loss, expected = _reference(learner, batch, first_order)
    assert logits.shape == (TASKS, WAYS * QUERIES, WAYS) and not logits.requires_grad
    assert losses.mean().item() == pytest.approx(loss, rel=1e-10)
    scale = max(g.abs().max().item() for g in expected.values())
    for name, leaf in leaves.items():
        torch.testing.assert_close(leaf.grad, expected[name], rtol=1e-7, atol=1e-10 * scale, msg=name)


def test_first_order_differs_from_second_order():
    batch = TaskBatch(*_random_batch())
    grads = []
    for first_order in (False, True):
        learner = _float64_learner(first_order, False)
        params = dict(learner.net.named_parameters())
        meta_backward(learner.net, params, InnerLoop(3, learner.inner_lrs, first_order), batch, TASKS)
        grads.append(next(iter(params.values())).grad)
    assert not torch.allclose(grads[0], grads[1], rtol=1e-3)


@pytest.fixture(scope="module")
def omniglot_tasks():
    if not OMNIGLOT.exists():
        pytest.skip(f"no Omniglot at {OMNIGLOT}")
    from cactus.datasets.dataset import load_dataset
    from cactus.nets import images_to_tensor
    from cactus.task_sampling import sample_tasks

    ds = load_dataset(f"omniglot:{OMNIGLOT}")
    rows = ds.indices(0)
    tasks = sample_tasks(ds.true_labels()[rows][None], rows, 5, 1, 5, 8, seed=0, what="classes")
    support_x = images_to_tensor(ds.images[tasks.support])
    query_x = images_to_tensor(ds.images[tasks.query])
    support_y = torch.as_tensor(tasks.support_labels()).expand(len(tasks), -1)
    query_y = torch.as_tensor(tasks.query_labels()).expand(len(tasks), -1)
    return support_x, support_y, query_x, query_y


def test_meta_step_reduces_query_loss_on_omniglot(omniglot_tasks):
    torch.set_num_threads(1)
    learner = MAML(1, 28, 5, filters=16, inner_steps=1, meta_lr=3e-3, seed=0)
    batch = tuple(t[:4] for t in omniglot_tasks)
    losses = [learner.meta_step(*batch)["loss"] for _ in range(12)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


def test_predict_shape_dtype_and_adaptation(omniglot_tasks):
    support_x, support_y, query_x, _ = omniglot_tasks
    learner = MAML(1, 28, 5, filters=8, test_inner_steps=3, seed=0, predict_chunk=3)
    labels = learner.predict(support_x, support_y, query_x)
    assert labels.shape == (8, 25) and labels.dtype == torch.int64
    assert int(labels.min()) >= 0 and int(labels.max()) < 5
    # Labelling the support set itself after adapting on it should beat chance by a wide margin.
    learner.test_inner_steps = 20
    learner.inner_lrs = 0.5
    on_support = learner.predict(support_x, support_y, support_x)
    assert (on_support == support_y).float().mean().item() > 0.6


@pytest.mark.parametrize("per_task", [False, True], ids=["folded", "per-task"])
@pytest.mark.parametrize("learn_inner_lr", [False, True], ids=["maml", "meta-sgd"])
def test_predict_equals_adapting_each_task_alone(omniglot_tasks, learn_inner_lr, per_task):
    support_x, support_y, query_x, _ = (t[:4].double() if t.is_floating_point() else t[:4] for t in omniglot_tasks)
    learner = MAML(1, 28, 5, filters=8, test_inner_steps=5, inner_lr=0.4, seed=3, learn_inner_lr=learn_inner_lr,
                   predict_chunk=3, per_task=per_task)
    learner.net.double()
    if learn_inner_lr:
        g = torch.Generator().manual_seed(4)
        for lr in learner.inner_lrs.values():
            lr.data = lr.data.double() * (0.5 + torch.rand(lr.shape, generator=g, dtype=torch.float64))
    labels = learner.predict(support_x, support_y, query_x)
    reference_net = ConvNet(1, 28, 8, 5, "stride").double()
    reference_net.load_state_dict(learner.net.state_dict())
    expected = reference_predict(reference_net, support_x, support_y, query_x, 5, learner.inner_lrs)
    assert labels.dtype == torch.int64 and torch.equal(labels, expected)
    assert all(not p.requires_grad or p.grad is None for p in learner.net.parameters())  # nothing accumulated


def test_predict_rejects_more_classes_than_the_head():
    learner = MAML(1, SIZE, 2, filters=4)
    support_x, support_y, query_x, _ = _random_batch(torch.float32)
    with pytest.raises(ValueError, match="3 classes"):
        learner.predict(support_x, support_y, query_x)


def test_task_and_query_chunks_give_the_same_step():
    batch = _random_batch()
    results = []
    for task_chunk, query_chunk, recompute in (
            (None, None, False), (2, None, False), (None, 1, False), (2, 1, False), (None, None, True), (2, 1, True)):
        learner = _float64_learner(False, False)
        learner.task_chunk, learner.query_chunk, learner.recompute = task_chunk, query_chunk, recompute
        results.append((learner.meta_step(*batch), learner.weights()))
    for stats, weights in results[1:]:
        assert stats["loss"] == pytest.approx(results[0][0]["loss"], rel=1e-12)
        assert stats["accuracy"] == pytest.approx(results[0][0]["accuracy"])
        for k, v in results[0][1].items():
            np.testing.assert_allclose(weights[k], v, rtol=1e-7, atol=1e-10)


def test_cpu_default_scores_query_sets_in_chunks_with_the_same_step(monkeypatch):
    import cactus.learners.maml as maml_module

    chunks_used = []
    real = maml_step.query_gradients

    def spy(*args):
        chunks_used.append(args[-1])  # (net, adapted, query_x, query_y, scale, query_chunk)
        return real(*args)

    monkeypatch.setattr(maml_step, "query_gradients", spy)
    batch = _random_batch()
    default_chunk = maml_module.CPU_QUERY_CHUNK
    assert 1 <= default_chunk < TASKS
    chunked = _float64_learner(False, False)
    chunked_stats = chunked.meta_step(*batch)
    assert chunks_used == [default_chunk]
    monkeypatch.setattr(maml_module, "CPU_QUERY_CHUNK", None)  # the GPU default: every query set at once
    whole = _float64_learner(False, False)
    whole_stats = whole.meta_step(*batch)
    assert chunks_used == [default_chunk]  # the all-at-once path does not go through the chunked one
    assert chunked_stats["loss"] == pytest.approx(whole_stats["loss"], rel=1e-12)
    for k, v in whole.weights().items():
        np.testing.assert_allclose(chunked.weights()[k], v, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("learn_inner_lr", [False, True])
def test_weights_and_state_round_trip(learn_inner_lr):
    batch = _random_batch(torch.float32)
    trained = MAML(1, SIZE, WAYS, filters=4, inner_steps=1, learn_inner_lr=learn_inner_lr, seed=0)
    trained.meta_step(*batch)
    weights = trained.weights()
    assert all(isinstance(v, np.ndarray) for v in weights.values())
    assert any(k.startswith("inner_lr/") for k in weights) == learn_inner_lr

    fresh = MAML(1, SIZE, WAYS, filters=4, inner_steps=1, learn_inner_lr=learn_inner_lr, seed=5)
    fresh.load_weights(weights)
    assert fresh.weights().keys() == weights.keys()
    for k, v in fresh.weights().items():
        np.testing.assert_array_equal(v, weights[k])

    resumed = MAML(1, SIZE, WAYS, filters=4, inner_steps=1, learn_inner_lr=learn_inner_lr, seed=5)
    resumed.load_state_dict(trained.state_dict())
    after_trained = trained.meta_step(*batch)
    after_resumed = resumed.meta_step(*batch)
    assert after_resumed["loss"] == pytest.approx(after_trained["loss"], rel=1e-6)
    for k, v in resumed.weights().items():
        np.testing.assert_allclose(v, trained.weights()[k], rtol=1e-6, atol=1e-7)


def test_memory_chunks_from_the_cli_keep_the_key_and_the_weights(tmp_path):
    """`cactus meta --task-chunk/--query-chunk/--recompute`: same meta-gradient, so same key and (to float)
    weights."""
    from click.testing import CliRunner

    from cactus.core.store import read_artifact
    from cactus.stages.cluster import run_cluster
    from cactus.stages.common import DataRef
    from cactus.stages.embed import run_embed
    from cactus.stages.tasks import run_tasks
    from cli import main

    run_embed(tmp_path / "e.h5", DataRef("digits"), "pca", {"dim": 16})
    run_cluster(tmp_path / "p.h5", tmp_path / "e.h5", clusters=30, partitions=2)
    run_tasks(tmp_path / "t.h5", tmp_path / "p.h5", num_tasks=100)
    common = [str(tmp_path / "t.h5"), "--algo", "maml", "--iterations", "2", "--filters", "4", "--meta-batch", "4",
              "--inner-steps", "2", "--validation", "none", "--threads", "1", "--device", "cpu"]
    runner = CliRunner()
    plain = runner.invoke(main, ["meta", *common, "-o", str(tmp_path / "a.h5")])
    chunked = runner.invoke(main, ["meta", *common, "-o", str(tmp_path / "b.h5"), "--task-chunk", "2",
                                   "--query-chunk", "1"])
    recomputed = runner.invoke(main, ["meta", *common, "-o", str(tmp_path / "r.h5"), "--recompute"])
    assert plain.exit_code == chunked.exit_code == recomputed.exit_code == 0, plain.output + chunked.output
    a = read_artifact(tmp_path / "a.h5")
    for other in ("b.h5", "r.h5"):
        b = read_artifact(tmp_path / other)
        assert a.key == b.key
        np.testing.assert_allclose(b.arrays["curve/loss"], a.arrays["curve/loss"], rtol=1e-5)
        # A conv bias feeding batch norm has a true gradient of 0: Adam turns its float noise into full
        # steps, so it is the one weight that may differ by ~meta_lr per step; every other weight must agree.
        conv_bias = re.compile(r"weights/features\.\d+\.0\.bias")
        compared = [n for n in a.arrays if n.startswith("weights/") and not conv_bias.fullmatch(n)]
        assert len(compared) >= 10
        for name in compared:
            np.testing.assert_allclose(b.arrays[name], a.arrays[name], rtol=1e-4, atol=1e-6, err_msg=name)
    refused = runner.invoke(main, ["meta", str(tmp_path / "t.h5"), "-o", str(tmp_path / "c.h5"), "--iterations", "1",
                                   "--task-chunk", "2", "--validation", "none", "--device", "cpu"])
    assert refused.exit_code == 1 and "only MAML" in refused.stderr and not (tmp_path / "c.h5").exists()


@pytest.mark.parametrize("downsample", ["stride", "pool"])
def test_image_columns_equal_unfold(downsample):
    """The first conv's patches (strided views, one copy) are F.unfold's, for strided and pooling nets."""
    from torch.nn import functional as F

    from cactus.learners.folded_net import image_columns

    net = ConvNet(2, 11, 4, 3, downsample)
    images = torch.randn(3, 5, 2, 11, 11, dtype=torch.float64)
    cols, out_h, out_w = image_columns(net, images)
    conv = net.features[0][0]
    expected = F.unfold(images.transpose(0, 1).reshape(5, 6, 11, 11), 3, 1, 1, conv.stride)
    assert (out_h, out_w) == ((6, 6) if downsample == "stride" else (11, 11))
    assert torch.equal(cols, expected.view(5, 3, 2 * 9, out_h * out_w))


@pytest.mark.parametrize("size, shots, tasks_per_chunk", [(28, 1, 32), (28, 50, 3), (84, 1, 17), (84, 50, 1)])
def test_predict_adapts_fewer_tasks_at_once_on_larger_images(monkeypatch, size, shots, tasks_per_chunk):
    """The default chunk bounds support pixel positions, not images: 800 84x84 images held 5 GB in predict."""
    from cactus.learners import maml_step

    seen: list[int] = []
    original = maml_step.detached_adapt

    def recording(net, params, inner, sx, sy):
        seen.append(len(sx))
        return original(net, params, inner, sx, sy)

    monkeypatch.setattr(maml_step, "detached_adapt", recording)
    learner = MAML(3, size, 5, filters=2, test_inner_steps=1, seed=0)
    tasks = 40
    support_y = torch.arange(5).repeat_interleave(shots).repeat(tasks, 1)
    learner.predict(torch.zeros(tasks, 5 * shots, 3, size, size), support_y, torch.zeros(tasks, 5, 3, size, size))
    assert seen[0] == tasks_per_chunk and sum(seen) == tasks


def test_per_task_and_folded_meta_steps_take_the_same_step():
    batch = _random_batch(seed=6)
    results = []
    for per_task in (False, True):
        learner = _float64_learner(False, True)
        learner.per_task = per_task
        results.append((learner.meta_step(*batch), learner.weights()))
    (folded_stats, folded), (task_stats, per_task_weights) = results
    assert task_stats["loss"] == pytest.approx(folded_stats["loss"], rel=1e-12)
    assert task_stats["accuracy"] == pytest.approx(folded_stats["accuracy"])
    for k, v in folded.items():
        np.testing.assert_allclose(per_task_weights[k], v, rtol=1e-7, atol=1e-10, err_msg=k)


def test_big_support_sets_run_task_by_task_on_a_cpu_and_small_ones_batched():
    from cactus.learners.maml import PER_TASK_SUPPORT_FLOPS
    from cactus.nets import forward_flops

    big = ConvNet(1, 28, 64, 5, "pool")
    assert forward_flops(big, 1, 28) == 19_630_720  # 2 * 9*64 * (28^2 + 64 * (14^2 + 7^2 + 3^2)) + 2*64*5

    def support(tasks, images, channels, side):
        return torch.zeros(tasks, images, channels, side, side)

    conv4_64 = MAML(1, 28, 5, filters=64, downsample="pool")
    assert conv4_64.image_flops * 5 >= PER_TASK_SUPPORT_FLOPS  # 98 MFLOP of support per 5-way 1-shot task
    assert conv4_64.run_per_task(support(8, 5, 1, 28)) and conv4_64.run_per_task(support(8, 5, 1, 28), True)
    cactus_net = MAML(1, 28, 20, filters=32, downsample="stride")  # 1.4 MFLOP per image
    assert not cactus_net.run_per_task(support(8, 20, 1, 28))
    assert not cactus_net.run_per_task(support(8, 5, 1, 28), predicting=True)
    preset = MAML(3, 42, 5, filters=32, downsample="pool")  # 13.5 MFLOP: 1-shot batched, 5-shot task by task
    assert not preset.run_per_task(support(8, 5, 3, 42)) and preset.run_per_task(support(8, 25, 3, 42))
    assert preset.run_per_task(support(8, 25, 3, 42), predicting=True)
    forced = MAML(1, 28, 5, filters=64, downsample="pool", per_task=False)
    assert not forced.run_per_task(support(8, 5, 1, 28)) and not forced.run_per_task(support(8, 5, 1, 28), True)
    knob = MAML(1, 28, 5, filters=64, downsample="pool", recompute=True)  # a folded-path memory knob
    assert not knob.run_per_task(support(8, 5, 1, 28)) and knob.run_per_task(support(8, 5, 1, 28), True)
    chunked = MAML(1, 28, 5, filters=64, downsample="pool", predict_chunk=4)
    assert not chunked.run_per_task(support(8, 5, 1, 28), True)
