"""The model metrics against their definitions, computed the slow, obvious way."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from batchscore.metrics import auc, metrics, undefined


def _auc_by_pairs(y, score) -> Fraction:
    pos = [s for s, label in zip(score, y, strict=True) if label == 1]
    neg = [s for s, label in zip(score, y, strict=True) if label == 0]
    wins = sum(Fraction(1) if p > n else Fraction(1, 2) if p == n else 0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(6))
def test_auc_is_the_exact_share_of_ordered_pairs_ties_counting_half(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    y = rng.integers(0, 2, n).astype(float)
    y[:2] = [0.0, 1.0]
    # few distinct values, so most scores are tied with others
    score = rng.integers(0, int(rng.integers(1, 12)), n) / 7.0
    assert auc(y, score) == float(_auc_by_pairs(y, score))


def test_auc_of_a_textbook_example_and_of_one_class():
    y = np.array([0.0, 0.0, 1.0, 1.0])
    assert auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert auc(y, np.array([0.9, 0.8, 0.1, 0.2])) == 0.0
    assert math.isnan(auc(np.ones(3), np.array([0.2, 0.4, 0.9])))


def test_a_metric_undefined_on_the_labels_is_none_with_its_reason():
    y, pred = np.zeros(3), np.array([0.2, 0.4, 0.9])
    got = metrics("binary", y, pred)
    assert got["auc"] is None and got["brier"] == pytest.approx((0.04 + 0.16 + 0.81) / 3)
    assert undefined("binary", y) == {"auc": "the labels hold one class only (0); AUC needs both"}
    assert undefined("binary", np.array([0.0, 1.0])) == {}
    assert undefined("regression", np.ones(3)) == {}


def test_binary_metrics_follow_their_definitions():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 1000).astype(float)
    p = rng.random(1000)
    p[:3] = [0.0, 1.0, 1e-300]  # clipped to [1e-15, 1 - 1e-15] before the log
    clipped = [min(max(v, 1e-15), 1 - 1e-15) for v in p]
    want_loss = -math.fsum(
        math.log(c) if label == 1 else math.log1p(-c) for c, label in zip(clipped, y, strict=True)
    ) / len(y)
    want_brier = math.fsum((v - label) ** 2 for v, label in zip(p, y, strict=True)) / len(y)
    got = metrics("binary", y, p)
    assert got["log_loss"] == pytest.approx(want_loss, rel=1e-13)
    assert got["brier"] == pytest.approx(want_brier, rel=1e-13)
    assert got["auc"] == float(_auc_by_pairs(y, p))


def test_regression_metrics_follow_their_definitions():
    y = np.array([3.0, -0.5, 2.0, 7.0])
    pred = np.array([2.5, 0.0, 2.0, 8.0])
    got = metrics("regression", y, pred)
    assert got["rmse"] == pytest.approx(math.sqrt((0.25 + 0.25 + 0 + 1) / 4), rel=1e-15)
    assert got["mae"] == pytest.approx(0.5, rel=1e-15)


@pytest.mark.parametrize(
    "y, pred, message",
    [
        ([0.0, 1.0, 2.0], [0.1, 0.2, 0.3], "binary labels must be 0 or 1"),
        ([0.0, 1.0], [0.1, float("nan")], "NaN"),
        ([0.0, 1.0], [0.1], "differ in shape"),
        ([], [], "no rows"),
    ],
)
def test_metrics_refuse_what_they_cannot_measure(y, pred, message):
    with pytest.raises(ValueError, match=message):
        metrics("binary", np.array(y), np.array(pred))
