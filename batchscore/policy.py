"""The drift policy: should the latest partition's drift start a retrain? A pure decision.

The decision and its reasons are data; the score flow logs and stores them and acts on them
(an event, or a `retrain` subflow). Nothing here reads storage or talks to Prefect.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from batchscore.config import RetrainConfig

SCORE = "__score__"


@dataclass(frozen=True)
class RetrainDecision:
    retrain: bool
    partition: str | None
    reasons: tuple[str, ...]
    drifted: tuple[dict, ...] = ()  # feature, method, statistic, threshold of drifted rows

    @property
    def drifted_features(self) -> list[str]:
        return sorted({d["feature"] for d in self.drifted if d["feature"] != SCORE})

    def to_json(self) -> dict:
        return {
            "retrain": self.retrain,
            "partition": self.partition,
            "reasons": list(self.reasons),
            "drifted": list(self.drifted),
        }


def should_retrain(
    partition: str | None,
    drift_rows: list[dict],
    last_retrain_at: dt.datetime | None,
    now: dt.datetime,
    policy: RetrainConfig,
) -> RetrainDecision:
    """Retrain when at least `min_drifted_features` features, or the score distribution,
    drifted in `partition`, unless the last retrain is within `cooldown_hours` of `now`."""
    if partition is None:
        return RetrainDecision(False, None, ("no partition was scored in this run",))
    drifted = tuple(
        {k: row[k] for k in ("feature", "method", "statistic", "threshold")}
        for row in drift_rows
        if row.get("drifted")
    )
    features = sorted({d["feature"] for d in drifted if d["feature"] != SCORE})
    score_drifted = any(d["feature"] == SCORE for d in drifted)
    if not features and not score_drifted:
        return RetrainDecision(False, partition, (f"no drift in {partition}",))
    what = (
        f"{len(features)} feature(s) drifted in {partition}"
        + (f" ({', '.join(features)})" if features else "")
        + (", and the score distribution" if score_drifted else "")
    )
    if len(features) < policy.min_drifted_features and not score_drifted:
        return RetrainDecision(
            False,
            partition,
            (f"{what}: fewer than [retrain] min_drifted_features = {policy.min_drifted_features}",),
            drifted,
        )
    if last_retrain_at is not None:
        since = now - last_retrain_at
        if since < dt.timedelta(hours=policy.cooldown_hours):
            return RetrainDecision(
                False,
                partition,
                (
                    f"{what}, but the last retrain was at {last_retrain_at.isoformat()}, "
                    f"{since.total_seconds() / 3600:.1f} h ago, within [retrain] cooldown_hours = "
                    f"{policy.cooldown_hours:g}",
                ),
                drifted,
            )
    return RetrainDecision(True, partition, (f"{what}: retrain",), drifted)
