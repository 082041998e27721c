"""The `score` flow: find pending partitions, plan, validate and score chunks, publish, report.

Planning and chunk scoring run in worker processes (`[scoring] workers`); the flow process
only passes keys and summaries, never rows. One partition's failure does not stop the others:
it is reported, and the run ends Failed only after every other partition was published.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed, Failed
from prefect.task_runners import ProcessPoolTaskRunner

from batchscore.config import load_config
from batchscore.scoring import PartitionOutcome
from tasks.report import report_run
from tasks.scoring import (
    find_partitions,
    hold_partition,
    plan_partition,
    publish_partition,
    resolve_champion,
    score_chunk,
)


@flow(name="score", log_prints=True)
def score(config: str = "batchscore.toml", partition: str | None = None, rescore: bool = False):
    """Score every partition not yet scored by the champion (or one, or all with rescore)."""
    started = time.time()
    cfg = load_config(config)
    run_id = flow_run.get_id() or "local"
    model = resolve_champion(cfg)
    todo = find_partitions(cfg, model, partition, rescore)
    if not todo:
        report_run(cfg, model, [], [], time.time() - started)
        return Completed(
            name="NothingToDo",
            data=[],
            message=f"nothing to do: every partition is scored by {model.version}",
        )

    outcomes: list[PartitionOutcome] = []
    failures: list[str] = []
    with ProcessPoolTaskRunner(max_workers=cfg.scoring.worker_count) as runner:
        planned = {
            p: runner.submit(plan_partition, {"config": cfg, "partition": p, "model": model})
            for p in todo
        }
        chunks = {}
        for p, future in planned.items():
            plan = future.result()
            chunks[p] = (
                plan,
                [
                    runner.submit(
                        score_chunk,
                        {
                            "config": cfg,
                            "chunk": c,
                            "model": model,
                            "partition_plan": plan,
                            "run_id": run_id,
                        },
                    )
                    for c in plan.chunks
                ]
                if not plan.held
                else [],
            )
        for p, (plan, futures) in chunks.items():
            try:
                if plan.held:
                    outcomes.append(hold_partition(cfg, plan, model, run_id))
                else:
                    results = [f.result() for f in futures]
                    outcomes.append(publish_partition(cfg, plan, model, results, run_id))
            except Exception as exc:  # one partition's failure must not hide the others'
                get_run_logger().error("partition %s FAILED: %s", p, exc)
                failures.append(f"{p}: {exc}")

    report_run(cfg, model, outcomes, failures, time.time() - started)
    data = [o.__dict__ for o in outcomes]
    held = [o.partition for o in outcomes if o.status == "held"]
    if failures:
        return Failed(
            data=data, message=f"{len(failures)} partition(s) failed: " + " | ".join(failures)
        )
    if held:
        return Completed(
            name="CompletedWithHeld",
            data=data,
            message=f"{len(held)} partition(s) held: {', '.join(held)}",
        )
    return Completed(data=data, message=f"{len(outcomes)} partition(s) scored")
