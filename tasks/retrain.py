"""Tasks of the retrain loop: train through the gate, decide on drift, emit the drift event."""

from __future__ import annotations

import datetime as dt
import uuid

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from batchscore import training
from batchscore.config import Config
from batchscore.policy import RetrainDecision, should_retrain
from batchscore.prefect_api import log_failures_without_tracebacks
from batchscore.registry import ModelRef, Registry
from batchscore.scoring import PartitionOutcome
from batchscore.training import TrainResult
from tasks.common import TASK_DEFAULTS

DRIFT_EVENT = "batchscore.drift.detected"


class TrainingFailed(RuntimeError):
    """A retrain that ended on its data (labels it cannot use): `result` is its failed
    `TrainResult`, already recorded in `retrains/`. Raised by `train_challenger` so that
    its task run ends Failed, as its flow run does, and caught by the flow."""

    def __init__(self, result: TrainResult):
        super().__init__(result.decision)
        self.result = result

    def __reduce__(self):  # an exception unpickles as its class called with its args
        return type(self), (self.result,)


log_failures_without_tracebacks(TrainingFailed)  # the message names the file and column


@task(name="train-challenger", **TASK_DEFAULTS)
def train_challenger(
    config: Config, reason: str, force: bool, run_id: str | None, trigger: dict | None
) -> TrainResult:
    logger = get_run_logger()
    try:
        result = training.train(config, reason, force, run_id, trigger, logger.info)
    except training.TrainingError as exc:  # labels it cannot use: the message says which
        failed = training.not_trained(config, "failed", str(exc), reason, run_id, trigger)
        raise TrainingFailed(failed) from None
    for warning in result.warnings:
        logger.warning("%s", warning)
    (logger.info if result.status != "skipped" else logger.warning)(
        "%s: %s", result.status, result.decision
    )
    return result


@task(name="report-retrain", **TASK_DEFAULTS)
def report_retrain(config: Config, result: TrainResult, reason: str) -> str:
    lines = [
        f"# retrain {config.dataset.name}: {result.status}",
        "",
        f"- reason: {reason}",
        f"- decision: {result.decision}",
        f"- new version: {result.version or '-'}; champion now: {result.champion or '-'}",
    ]
    if result.window:
        lines.append(
            f"- window: {result.window['from']} .. {result.window['to']}, rows {result.rows}"
        )
    lines += [f"- warning: {w}" for w in result.warnings]
    if result.challenger_metrics:
        names = sorted(result.challenger_metrics)
        lines += ["", "| model | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        lines.append(
            f"| challenger {result.version} | "
            + " | ".join(_cell(result.challenger_metrics[n]) for n in names)
            + " |"
        )
        if result.champion_metrics:
            lines.append(
                "| previous champion | "
                + " | ".join(_cell(result.champion_metrics.get(n)) for n in names)
                + " |"
            )
    lines += [f"- {n} undefined: {why}" for n, why in sorted(result.undefined_metrics.items())]
    markdown = "\n".join(lines)
    create_markdown_artifact(
        markdown=markdown,
        key="retrain-summary",
        description=f"{config.dataset.name}: what this retrain did",
    )
    return markdown


def _cell(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.5f}"


@task(name="decide-retrain", **TASK_DEFAULTS)
def decide_retrain(config: Config, outcomes: list[PartitionOutcome]) -> RetrainDecision:
    """Apply the drift policy to the newest partition scored in this run; store the decision."""
    scored = [o for o in outcomes if o.status == "scored"]
    latest = max(scored, key=lambda o: o.partition) if scored else None
    registry = Registry.for_config(config)
    unreadable: list[str] = []
    last = registry.last_retrain_at(unreadable)
    for problem in unreadable:
        # Every partition is published by now: a damaged record must not fail the run.
        get_run_logger().warning(
            "ignored a retrain record: %s; the cooldown counts the other records", problem
        )
    decision = should_retrain(
        latest.partition if latest else None,
        list(latest.drift) if latest else [],
        last,
        dt.datetime.now(dt.UTC),
        config.retrain,
    )
    get_run_logger().info("drift policy: %s", "; ".join(decision.reasons))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    registry.root.write_json(
        decision.to_json(), "decisions", f"{stamp}-{uuid.uuid4().hex[:8]}.json"
    )
    return decision


@task(name="emit-drift-event", **TASK_DEFAULTS)
def emit_drift_event(config: Config, model: ModelRef, decision: RetrainDecision) -> str | None:
    """Tell Prefect: the `retrain` deployment's trigger listens for this event."""
    from prefect.events import emit_event

    event = emit_event(
        event=DRIFT_EVENT,
        resource={
            "prefect.resource.id": f"batchscore.model.{config.dataset.name}",
            "prefect.resource.name": config.dataset.name,
        },
        payload={
            "partition": decision.partition,
            "drifted": list(decision.drifted),
            "drifted_features": decision.drifted_features,
            "model_version": model.version,
            "reasons": list(decision.reasons),
            "config": config.path,
        },
    )
    event_id = str(event.id) if event else None
    get_run_logger().warning(
        "drift in %s (%s): emitted %s %s",
        decision.partition,
        ", ".join(decision.drifted_features) or "__score__",
        DRIFT_EVENT,
        event_id,
    )
    return event_id
