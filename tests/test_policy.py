"""Ring 1: the drift policy is a pure decision with reasons."""

from __future__ import annotations

import datetime as dt

from batchscore.config import RetrainConfig
from batchscore.policy import should_retrain

NOW = dt.datetime(2026, 10, 14, 6, 0, tzinfo=dt.UTC)
POLICY = RetrainConfig(min_drifted_features=2, cooldown_hours=24)


def _row(feature: str, method: str, drifted: bool, statistic: float = 0.3) -> dict:
    return {
        "feature": feature,
        "method": method,
        "statistic": statistic,
        "threshold": 0.2,
        "drifted": drifted,
    }


def test_no_drift_no_retrain():
    rows = [_row("a", "psi", False, 0.01), _row("b", "ks", False, 0.02)]
    decision = should_retrain("2026-10-14", rows, None, NOW, POLICY)
    assert not decision.retrain
    assert decision.reasons == ("no drift in 2026-10-14",)


def test_fewer_features_than_the_minimum_do_not_retrain():
    rows = [_row("a", "psi", True), _row("a", "ks", True), _row("b", "psi", False)]
    decision = should_retrain("2026-10-14", rows, None, NOW, POLICY)
    assert not decision.retrain
    assert decision.reasons == (
        "1 feature(s) drifted in 2026-10-14 (a): fewer than [retrain] min_drifted_features = 2",
    )
    assert decision.drifted_features == ["a"]


def test_enough_drifted_features_retrain_with_the_statistics():
    rows = [_row("a", "psi", True, 0.5), _row("b", "ks", True, 0.25), _row("c", "ks", False)]
    decision = should_retrain("2026-10-14", rows, None, NOW, POLICY)
    assert decision.retrain
    assert decision.reasons == ("2 feature(s) drifted in 2026-10-14 (a, b): retrain",)
    assert decision.drifted == (
        {"feature": "a", "method": "psi", "statistic": 0.5, "threshold": 0.2},
        {"feature": "b", "method": "ks", "statistic": 0.25, "threshold": 0.2},
    )


def test_score_drift_alone_is_enough():
    decision = should_retrain("2026-10-14", [_row("__score__", "ks", True)], None, NOW, POLICY)
    assert decision.retrain
    assert decision.drifted_features == []
    assert "the score distribution" in decision.reasons[0]


def test_cooldown_holds_a_retrain_back_and_then_lets_it_go():
    rows = [_row("a", "psi", True), _row("b", "psi", True)]
    recent = NOW - dt.timedelta(hours=3)
    held = should_retrain("2026-10-14", rows, recent, NOW, POLICY)
    assert not held.retrain
    assert "3.0 h ago, within [retrain] cooldown_hours = 24" in held.reasons[0]
    later = should_retrain("2026-10-14", rows, NOW - dt.timedelta(hours=25), NOW, POLICY)
    assert later.retrain


def test_no_partition_scored_means_no_decision_to_retrain():
    decision = should_retrain(None, [], None, NOW, POLICY)
    assert not decision.retrain and decision.partition is None
