"""The retraining loop: the gate, force, rollback, racing retrains, drift -> one retrain,
and realised performance. Flows run under a real Prefect API."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from helpers import final_task_runs, flow_runs_since, write_config

from batchscore.config import load_config
from batchscore.registry import Registry
from batchscore.training import train
from flows.retrain import retrain
from flows.score import score

FAST = {"lightgbm": {"max_rounds": 60}}


@pytest.fixture
def fast_sample(sample: Path) -> Path:
    """The sample with fewer boosting rounds: the loop is under test, not the model."""
    return write_config(sample, sample.read_text(), retrain=FAST)


def _shuffle_labels(config, keep: str) -> None:
    """Noise for training; the holdout day `keep` keeps its true labels to judge by."""
    rng = np.random.default_rng(0)
    for path in sorted(Path(config.source, "labels").rglob("*.parquet")):
        if f"dt={keep}" in str(path):
            continue
        table = pq.read_table(path)
        label = config.dataset.label
        shuffled = pa.array(rng.permutation(table.column(label).to_numpy()))
        pq.write_table(table.set_column(table.schema.get_field_index(label), label, shuffled), path)


def test_a_worse_challenger_is_not_promoted_force_is_and_rollback_restores(
    fast_sample, prefect_api
):
    config = load_config(fast_sample)
    registry = Registry(config.store, config.dataset.name)
    first = retrain(config=str(fast_sample), reason="first", return_state=True)
    assert first.name == "Promoted" and registry.champion() == "v0001"

    _shuffle_labels(config, keep="2026-10-10")  # a challenger trained on noise
    worse = retrain(config=str(fast_sample), reason="shuffled labels", return_state=True)
    assert worse.name == "NotPromoted", worse.message
    assert registry.champion() == "v0001"
    meta = registry.metadata("v0002")
    assert meta["reason"] == "shuffled labels" and meta["parent"] == "v0001"
    assert meta["metrics"]["auc"] < meta["champion_metrics"]["auc"] - 0.1
    assert "not promoted" in worse.message

    forced = retrain(config=str(fast_sample), reason="on purpose", force=True, return_state=True)
    assert forced.name == "Promoted" and registry.champion() == "v0003"

    assert registry.rollback() == "v0001"
    assert registry.champion() == "v0001"
    moves = [(e["action"], e["from"], e["to"]) for e in registry.audit()]
    assert moves == [
        ("promote", None, "v0001"),
        ("promote", "v0001", "v0003"),
        ("rollback", "v0003", "v0001"),
    ]


def test_labels_it_cannot_use_fail_the_training_task_as_well_as_the_run(fast_sample, prefect_api):
    """The UI shows which step failed: train-challenger ended Completed in a Failed run,
    after logging the reason as an error itself. Its log line has no traceback."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    config = load_config(fast_sample)
    path = Path(config.source, "labels", "dt=2026-10-09", "part-0.parquet")
    pq.write_table(pq.read_table(path).rename_columns(["customer_id", "label"]), path)

    state = retrain(config=str(fast_sample), reason="renamed", return_state=True)

    why = (
        "no training: labels/dt=2026-10-09/part-0.parquet has no column 'churned' "
        "([dataset] label); it has: customer_id, label"
    )
    assert (state.is_failed(), state.message) == (True, why)
    run_id = state.state_details.flow_run_id
    runs = final_task_runs(run_id, ["train-challenger-*", "report-retrain-*"])
    states = {name.rsplit("-", 1)[0]: r.state for name, r in runs.items()}
    assert states["train-challenger"].is_failed()
    assert why in states["train-challenger"].message
    assert states["report-retrain"].is_completed()  # the summary says why nothing was trained
    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    failed = [log.message for log in logs if "Task run failed" in log.message]
    assert failed == [f"Task run failed with exception: TrainingFailed({why!r})"]
    assert not [log.message for log in logs if "Traceback" in log.message]
    assert Registry(config.store, "churn").retrains([])[-1]["status"] == "failed"


def test_two_retrains_at_once_promote_at_most_one(fast_sample):
    config = load_config(fast_sample)
    train(config, reason="first")
    results = []
    start = threading.Barrier(2)

    def run(name: str) -> None:
        start.wait()
        results.append(train(config, reason=name))

    threads = [threading.Thread(target=run, args=(f"racer {i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    registry = Registry(config.store, config.dataset.name)
    statuses = sorted(r.status for r in results)
    assert statuses == ["promoted", "registered"]
    loser = next(r for r in results if r.status == "registered")
    assert "the champion changed from v0001" in loser.decision
    winner = next(r for r in results if r.status == "promoted")
    assert registry.champion() == winner.version
    assert sorted(registry.versions()) == ["v0001", "v0002", "v0003"]
    assert [e["to"] for e in registry.audit()] == ["v0001", winner.version]


def test_drift_starts_exactly_one_retrain_and_labels_give_realised_performance(
    fast_sample, prefect_api
):
    config = load_config(fast_sample)
    store = Path(config.store)
    train(config, reason="first")
    registry = Registry(config.store, config.dataset.name)

    started = datetime.now(UTC)
    assert score(config=str(fast_sample), return_state=True).is_completed()
    triggered = [r for r in registry.retrains() if r.get("trigger")]
    assert len(triggered) == 1
    trigger = triggered[0]["trigger"]
    assert trigger["event"] == "batchscore.drift.detected"
    assert trigger["partition"] == "2026-10-14" and trigger["event_id"]
    meta = registry.metadata(triggered[0]["version"])
    assert meta["trigger"] == trigger
    assert trigger["event_id"] in meta["reason"]

    # The retrain is a flow run of its own in the Prefect API.
    mine = flow_runs_since("retrain", started, config.path)
    assert len(mine) == 1 and mine[0].state.is_completed()
    assert mine[0].parameters["event_id"] == trigger["event_id"]

    # Realised performance for every labelled, scored partition; AUC counted pair by pair.
    perf = pads.dataset(store / "performance", partitioning="hive").to_table().to_pylist()
    labelled = [f"2026-10-{d:02d}" for d in range(1, 11)]
    assert sorted({str(r["partition"]) for r in perf}) == labelled
    day = "2026-10-07"
    scores = pq.read_table(store / "scores" / f"dt={day}").select(["customer_id", "score"])
    labels = pq.read_table(Path(config.source) / "labels" / f"dt={day}")
    joined = scores.join(labels, keys="customer_id")
    expected = auc_by_counting(
        joined.column("churned").to_numpy(), joined.column("score").to_numpy()
    )
    (auc,) = [r for r in perf if str(r["partition"]) == day and r["metric"] == "auc"]
    assert auc["value"] == pytest.approx(expected, rel=1e-15)
    assert auc["n_joined"] == joined.num_rows

    # The next run sees the same drift, but the cooldown holds a second retrain back.
    assert score(config=str(fast_sample), return_state=True).is_completed()
    assert len([r for r in registry.retrains() if r.get("trigger")]) == 1
    decisions = sorted((store / "models" / "churn" / "decisions").glob("*.json"))
    last = json.loads(decisions[-1].read_text())
    # Same labelled data, so the challenger ties the champion and is promoted (not worse);
    # the new champion rescored every partition and met the same drift.
    assert triggered[0]["status"] == "promoted" and registry.champion() == "v0002"
    assert triggered[0]["decision"].endswith(
        ": promoted; v0002 is the same model as v0001, byte for byte"
    )
    assert not last["retrain"] and "cooldown_hours = 24" in last["reasons"][0]


def auc_by_counting(y: np.ndarray, score: np.ndarray) -> float:
    """For each positive, the negatives scored below it plus half those tied with it."""
    negatives = np.sort(score[y == 0])
    positives = score[y == 1]
    below = np.searchsorted(negatives, positives, side="left")
    tied = np.searchsorted(negatives, positives, side="right") - below
    return float((below.sum() + tied.sum() / 2) / (len(positives) * len(negatives)))


def test_training_says_each_step_and_where_a_long_fit_is(fast_sample, monkeypatch):
    """Training on a year of labels takes minutes: `progress` hears each step as it ends,
    and, every PROGRESS_SECONDS of a longer step, where it is (here every round)."""
    from batchscore import training

    monkeypatch.setattr(training, "PROGRESS_SECONDS", 0.0)
    config = load_config(fast_sample)
    said: list[str] = []

    result = train(config, reason="first", progress=said.append)

    reading = [m for m in said if m.startswith("reading labelled days: ")]
    assert reading[0] == "reading labelled days: 1 of 10 read, up to 2026-10-01"
    assert len(reading) == 9  # not after the last day: the next message says it
    read = said[len(reading)]
    assert read.startswith("read 10 labelled day(s), 2026-10-01..2026-10-10: ")
    assert f"fitting on {result.rows['fit']:,} rows (2026-10-01..2026-10-08)" in read
    assert f"early stopping on {result.rows['validation']:,} (2026-10-09)" in read
    rounds = [m for m in said if m.startswith("fitting: round ")]
    assert rounds[0].startswith("fitting: round 1 of at most 60, validation binary_logloss ")
    assert len(rounds) == len({m.split(",")[0] for m in rounds})  # once per round
    fitted = next(m for m in said if m.startswith("fitted "))
    kept = Registry(config.store, "churn").metadata("v0001")["best_iteration"] or len(rounds)
    assert fitted.startswith(f"fitted {len(rounds)} rounds in ")
    assert f"the model keeps {kept}" in fitted
    holdout = ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.challenger_metrics.items()))
    assert f"on the holdout ({result.rows['holdout']:,} rows of 2026-10-10): {holdout}" in said
    assert said[-1].startswith("registered churn v0001 (")
