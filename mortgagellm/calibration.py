"""Calibration maths of a binary classifier's confidence: temperature / Platt scaling, expected
calibration error and the abstention threshold. Pure functions on lists of numbers; the
router's tier 1 (tier1.py) and benchmarks/router_tier1.py use them."""

from __future__ import annotations

import math
from collections.abc import Sequence

THRESHOLD_GRID = tuple(round(0.5 + 0.005 * i, 3) for i in range(100))
"""Candidate thresholds 0.5, 0.505, ..., 0.995: finer than any calibration split resolves."""


def sigmoid(z: float) -> float:
    """1 / (1 + e^-z) without overflow for large |z|."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def fit_scales(features: Sequence[Sequence[float]], labels: Sequence[bool]) -> list[float]:
    """Weights a of P(y) = sigmoid(a . f), no intercept, by maximum likelihood.

    One feature (a margin) is temperature scaling; several (the margins of two classifiers) a
    learned combination of them. Without an intercept the decision boundary stays where all
    margins are 0, so calibrating one classifier changes how sure it is, never what it says.
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(features, dtype=float).reshape(len(labels), -1)
    if len(set(labels)) < 2:
        raise ValueError("a calibration split needs requests of both routes; give it more")
    # C = 1 is a unit Gaussian prior on the weights: a split with no mistakes (separable) would
    # otherwise send them to infinity and every confidence to 1.0; over hundreds of requests
    # the likelihood outweighs it.
    model = LogisticRegression(C=1.0, fit_intercept=False, max_iter=1000).fit(x, list(labels))
    return [float(a) for a in model.coef_[0]]


def ece(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """Expected calibration error: the mean |confidence - accuracy| over equal-width bins of
    [0.5, 1] (a binary decision's confidence is never below 0.5), weighted by bin size."""
    if not confidences:
        return 0.0
    groups: list[list[tuple[float, bool]]] = [[] for _ in range(bins)]
    for conf, ok in zip(confidences, correct):
        groups[min(bins - 1, int((conf - 0.5) * 2 * bins))].append((conf, ok))
    return sum(abs(sum(c for c, _ in g) - sum(o for _, o in g)) for g in groups) / len(
        confidences)


def fit_threshold(confidences: Sequence[float], correct: Sequence[bool], caught: float = 0.8,
                  grid: Sequence[float] = THRESHOLD_GRID) -> float:
    """The lowest threshold under which at least `caught` of the mistakes fall.

    Decisions below the threshold go to tier 2, so this is the cheapest threshold that hands
    tier 2 most of the requests tier 1 would get wrong. With no mistakes in the split, the lowest
    threshold of the grid: nothing says tier 1 needs help.
    """
    mistakes = sorted(c for c, ok in zip(confidences, correct) if not ok)
    for t in grid:
        if sum(c < t for c in mistakes) >= caught * len(mistakes):
            return float(t)
    return float(grid[-1])

