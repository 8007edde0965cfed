"""ProtoNets: the task-by-task backward of meta_step against one backward through every task's graph."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from cactus.learners.protonets import ProtoNets, prototype_logits

TASKS, WAYS, SHOTS, QUERIES, SIZE = 3, 4, 2, 3, 12


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    support_x = torch.rand(TASKS, WAYS * SHOTS, 1, SIZE, SIZE, generator=g, dtype=torch.float64)
    query_x = torch.rand(TASKS, WAYS * QUERIES, 1, SIZE, SIZE, generator=g, dtype=torch.float64)
    support_y = torch.arange(WAYS).repeat_interleave(SHOTS).expand(TASKS, -1)
    query_y = torch.arange(WAYS).repeat_interleave(QUERIES).expand(TASKS, -1)
    return support_x, support_y, query_x, query_y


def _learner(seed: int = 1) -> ProtoNets:
    learner = ProtoNets(1, SIZE, WAYS, filters=6, seed=seed)
    learner.net.double()
    learner.optimiser = torch.optim.Adam(learner.net.parameters(), lr=1e-3)  # on the float64 parameters
    return learner


def _all_at_once(learner: ProtoNets, batch) -> tuple[float, float, dict[str, torch.Tensor]]:
    """The loss, accuracy (%) and gradient with every task's graph held to one backward pass."""
    support_x, support_y, query_x, query_y = batch
    net = copy.deepcopy(learner.net)
    logits = []
    for t in range(TASKS):  # batch norm sees one task at a time, as in meta_step
        features = net(torch.cat([support_x[t], query_x[t]]))
        support, query = features[: WAYS * SHOTS], features[WAYS * SHOTS :]
        logits.append(prototype_logits(support[None], support_y[t : t + 1], query[None], WAYS)[0])
    logits = torch.stack(logits)
    loss = F.cross_entropy(logits.flatten(0, 1), query_y.flatten())
    names = [n for n, _ in net.named_parameters()]
    grads = torch.autograd.grad(loss, [p for _, p in net.named_parameters()])
    accuracy = (logits.argmax(-1) == query_y).double().mean().item() * 100
    return loss.item(), accuracy, dict(zip(names, grads, strict=True))


def test_task_by_task_backward_gives_the_all_at_once_gradient():
    learner = _learner()
    batch = _batch()
    loss, accuracy, expected = _all_at_once(learner, batch)
    captured = {}
    step = learner.optimiser.step

    def capture_then_step(*args, **kwargs):
        captured.update({n: p.grad.clone() for n, p in learner.net.named_parameters()})
        return step(*args, **kwargs)

    learner.optimiser.step = capture_then_step
    stats = learner.meta_step(*batch)
    assert stats["loss"] == pytest.approx(loss, rel=1e-12)
    assert stats["accuracy"] == pytest.approx(accuracy)
    assert captured.keys() == expected.keys()
    scale = max(g.abs().max().item() for g in expected.values())
    for name, grad in expected.items():  # conv biases before batch norm: true gradient 0, compare to the scale
        torch.testing.assert_close(captured[name], grad, rtol=1e-9, atol=1e-12 * scale, msg=name)


def test_meta_step_is_the_adam_step_of_the_all_at_once_gradient():
    batch = _batch(seed=3)
    learner, reference = _learner(), _learner()
    _, _, grads = _all_at_once(reference, batch)
    for name, p in reference.net.named_parameters():
        p.grad = grads[name]
    reference.optimiser.step()
    learner.meta_step(*batch)
    for (name, ours), (_, theirs) in zip(learner.net.named_parameters(), reference.net.named_parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9, msg=name)


def test_each_task_is_back_propagated_before_the_next_runs():
    """One task's graph alive at a time: when task t's forward starts, tasks < t have already given gradients."""
    learner = _learner()
    grad_norms_seen: list[float] = []
    real_logits = learner._logits

    def watching_logits(*args):
        grads = [p.grad for p in learner.net.parameters()]
        grad_norms_seen.append(0.0 if grads[0] is None else sum(g.norm().item() for g in grads))
        return real_logits(*args)

    learner._logits = watching_logits
    learner.meta_step(*_batch())
    assert len(grad_norms_seen) == TASKS
    assert grad_norms_seen[0] == 0.0 and all(n > 0 for n in grad_norms_seen[1:])
    assert grad_norms_seen[1] != grad_norms_seen[2]  # accumulating, task after task


def test_the_channels_last_net_gives_the_plain_nchw_nets_gradient():
    """The learner keeps its conv net channels-last for speed; the maths is that of the ordinary NCHW net."""
    from cactus.nets import ConvNet

    learner = _learner()
    assert learner.net.features[1][0].weight.is_contiguous(memory_format=torch.channels_last)
    plain = ConvNet(1, SIZE, 6, None, "pool").double()
    plain.load_state_dict(learner.net.state_dict())
    assert plain.features[1][0].weight.is_contiguous()  # NCHW
    learner_copy = copy.deepcopy(learner)
    learner_copy.net = plain
    batch = _batch(seed=5)
    _, _, expected = _all_at_once(learner_copy, batch)
    captured = {}
    learner.optimiser.step = lambda *a, **k: captured.update({n: p.grad for n, p in learner.net.named_parameters()})
    learner.meta_step(*batch)
    scale = max(g.abs().max().item() for g in expected.values())
    for name, grad in expected.items():
        torch.testing.assert_close(captured[name], grad, rtol=1e-9, atol=1e-12 * scale, msg=name)
