"""How a ProtoNets learner turns one task's support features into labels for its queries.

``prototype``: the nearest class mean by squared Euclidean distance (Snell et al. 2017), what the
net was meta-trained with. ``logistic``: multinomial logistic regression fitted on the task's
support features scaled to unit length (Tian et al. 2020, "Rethinking few-shot image
classification"). ``auto`` (the default) takes the prototypes below ``LOGISTIC_MIN_SHOTS`` shots and
the logistic readout from there: measured on the learners of five runs (miniImageNet in colour and
grey, its supervised oracle, Omniglot, digits; BENCHMARKS.md), the logistic readout gains 0.2-2.2
points at 5 shots (the oracle: 0.4 below, inside the interval) and 1-9.6 at 20 and 50, while at 1
shot it is no better (0.3 below on Omniglot).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: the CLI's option choices read READOUTS
    import torch

READOUTS = ("auto", "prototype", "logistic")
#: ``auto`` uses the logistic readout when every class has at least this many support images.
LOGISTIC_MIN_SHOTS = 5
#: Inverse L2 penalty of the logistic readout (scikit-learn's C) on unit-length features.
LOGISTIC_C = 10.0


def uses_logistic(readout: str, support_y: torch.Tensor, ways: int) -> bool:
    """Whether ``readout`` scores a task whose support labels are ``support_y`` (S,) logistically."""
    if readout not in READOUTS:
        raise ValueError(f"readout {readout!r}: expected one of {', '.join(READOUTS)}")
    if readout != "auto":
        return readout == "logistic"
    import torch

    return int(torch.bincount(support_y, minlength=ways).min()) >= LOGISTIC_MIN_SHOTS


def logistic_labels(support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """support (S, D), support_y (S,), query (Q, D) features -> predicted labels (Q,) int64 on query's device.

    The features are scaled to unit length, then scikit-learn's L-BFGS fits the regression
    (deterministic: no random state is involved).
    """
    import warnings

    import torch
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    def unit(x: torch.Tensor) -> np.ndarray:
        x = x.detach().double().cpu().numpy()
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    labels = support_y.cpu().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LogisticRegression(C=LOGISTIC_C, max_iter=1000).fit(unit(support), labels)
    return torch.as_tensor(model.predict(unit(query)), dtype=torch.long, device=query.device)
