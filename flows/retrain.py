"""The `retrain` flow: train a challenger, compare it with the champion, promote or not.

Started by hand (`batchscore train`, `prefect deployment run retrain/retrain`), by the
`retrain` deployment's trigger on `batchscore.drift.detected`, or as a subflow of `score`
when that runs without deployments.
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Completed, Failed

from batchscore.config import DEFAULT_CONFIG, load_config
from tasks.retrain import DRIFT_EVENT, TrainingFailed, report_retrain, train_challenger


@flow(name="retrain")
def retrain(
    config: str = DEFAULT_CONFIG,
    reason: str = "manual",
    force: bool = False,
    event_id: str | None = None,
    partition: str | None = None,
):
    """Retrain on the labelled window; `force` promotes without the gate."""
    cfg = load_config(config)
    trigger = (
        {"event": DRIFT_EVENT, "event_id": event_id, "partition": partition} if event_id else None
    )
    try:
        result = train_challenger(cfg, reason, force, flow_run.get_id(), trigger)
    except TrainingFailed as failed:  # its task run ended Failed with the one-line reason
        result = failed.result
    report_retrain(cfg, result, reason)
    if result.status == "failed":
        return Failed(data=asdict(result), message=result.decision)
    name = {"promoted": "Promoted", "registered": "NotPromoted", "skipped": "NotTrained"}
    return Completed(name=name[result.status], data=asdict(result), message=result.decision)
