"""ProtoNets' readouts: prototypes, logistic regression, and the shot count at which ``auto`` switches."""

from __future__ import annotations

import math

import pytest
import torch

from cactus.learners.protonets import ProtoNets, prototype_logits
from cactus.learners.readout import LOGISTIC_MIN_SHOTS, logistic_labels, uses_logistic


def test_auto_takes_the_logistic_readout_once_every_class_has_enough_shots():
    ways = 5
    at = torch.arange(ways).repeat_interleave(LOGISTIC_MIN_SHOTS)
    below = torch.arange(ways).repeat_interleave(LOGISTIC_MIN_SHOTS - 1)
    one_short = at[1:]  # class 0 has one image fewer than the others
    assert uses_logistic("auto", at, ways)
    assert not uses_logistic("auto", below, ways)
    assert not uses_logistic("auto", one_short, ways)
    assert not uses_logistic("auto", torch.arange(ways), ways)  # 1 shot
    assert uses_logistic("logistic", torch.arange(ways), ways)
    assert not uses_logistic("prototype", at, ways)
    with pytest.raises(ValueError, match="readout 'nearest'"):
        uses_logistic("nearest", at, ways)


def _on_circle(degrees: list[float]) -> torch.Tensor:
    """Unit vectors (len(degrees), 3) at these angles in the first two coordinates."""
    return torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a)), 0.0] for a in degrees])


def test_logistic_readout_draws_the_boundary_where_the_classes_meet():
    # class 0 spreads over -60..60 degrees, class 1 is tight at 75: its prototype is much nearer a query
    # of class 0 at 55 degrees than class 0's own (shrunken) mean, but a linear boundary between 60 and
    # 75 degrees puts the query in class 0.
    wide = [-60 + 120 * i / 19 for i in range(20)]
    tight = [73.0, 74.0, 75.0, 76.0, 77.0]
    support = _on_circle(wide + tight)
    support_y = torch.tensor([0] * 20 + [1] * 5)
    query = _on_circle([55.0, 0.0, 85.0])
    by_prototype = prototype_logits(support[None], support_y[None], query[None], 2)[0].argmax(-1)
    assert by_prototype.tolist()[0] == 1
    assert logistic_labels(support, support_y, query).tolist() == [0, 0, 1]


def _task(shots: int, ways: int = 4, queries: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    support_x = torch.rand(2, ways * shots, 1, 12, 12, generator=g)
    query_x = torch.rand(2, ways * queries, 1, 12, 12, generator=g)
    support_y = torch.arange(ways).repeat_interleave(shots).expand(2, -1)
    return support_x, support_y, query_x


@pytest.mark.parametrize("shots", [1, LOGISTIC_MIN_SHOTS])
def test_predict_follows_its_readout_on_the_nets_own_features(shots):
    learner = ProtoNets(1, 12, 4, filters=6, seed=3)
    support_x, support_y, query_x = _task(shots)
    labels = {}
    for readout in ("prototype", "logistic", "auto"):
        learner.readout = readout
        labels[readout] = learner.predict(support_x, support_y, query_x)
    with torch.no_grad():
        for t in range(2):
            support, query = learner._features(support_x[t : t + 1], query_x[t : t + 1])
            nearest = prototype_logits(support, support_y[t : t + 1], query, 4)[0].argmax(-1)
            assert torch.equal(labels["prototype"][t], nearest)
            assert torch.equal(labels["logistic"][t], logistic_labels(support[0], support_y[t], query[0]))
    assert not torch.equal(labels["prototype"], labels["logistic"])  # so that the next line tells them apart
    assert torch.equal(labels["auto"], labels["logistic" if shots >= LOGISTIC_MIN_SHOTS else "prototype"])
