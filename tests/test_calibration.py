"""calibration.py: ECE, temperature scaling and the fitted threshold on hand-made numbers."""

import math
import random

import pytest

from mortgagellm.calibration import ece, fit_scales, fit_threshold, sigmoid


def test_ece_by_hand():
    # Bin of 0.95: confidences 1.9, correct 1 -> |0.9|; bin of 0.55: 1.1 vs 2 -> |0.9|.
    assert ece([0.95, 0.95, 0.55, 0.55], [True, False, True, True]) == pytest.approx(1.8 / 4)
    assert ece([1.0, 0.5], [True, False]) == pytest.approx(0.5 / 2)  # 1.0 in the top bin


def overconfident(n, seed):
    """(margin, label): the truth is P(structured) = sigmoid(margin / 4), so a model reading
    sigmoid(margin) is far too sure."""
    rng = random.Random(seed)
    margins = [rng.uniform(-12, 12) for _ in range(n)]
    return margins, [rng.random() < sigmoid(z / 4) for z in margins]


def confidence_and_correct(margins, labels, scale):
    ps = [sigmoid(scale * z) for z in margins]
    return [max(p, 1 - p) for p in ps], [(p >= 0.5) == y for p, y in zip(ps, labels)]


def test_temperature_fitted_on_one_split_lowers_ece_on_another():
    fit_margins, fit_labels = overconfident(2000, 0)
    (scale,) = fit_scales([[z] for z in fit_margins], fit_labels)
    assert scale == pytest.approx(0.25, abs=0.05)
    margins, labels = overconfident(2000, 1)
    raw = ece(*confidence_and_correct(margins, labels, 1.0))
    calibrated = ece(*confidence_and_correct(margins, labels, scale))
    assert raw > 0.1 and calibrated < 0.03


def test_threshold_puts_the_mistakes_below_it():
    """Mistakes at 0.7 and 0.8: catching all puts the threshold just above 0.8 (the grid's
    0.805), catching half just above 0.7; the sure right answer at 0.95 stays above it."""
    confidence = [0.99, 0.95, 0.8, 0.7, 0.6]
    correct = [True, True, False, False, True]
    assert fit_threshold(confidence, correct, caught=1.0) == pytest.approx(0.805)
    assert fit_threshold(confidence, correct, caught=0.5) == pytest.approx(0.705)
    assert fit_threshold([0.9, 0.6], [True, True]) == 0.5  # no mistakes: tier 1 alone
    assert fit_threshold([0.999], [False]) == pytest.approx(0.995)  # the grid's top
    assert not math.isnan(fit_threshold([], []))
