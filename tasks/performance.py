"""Tasks for realised performance: which labelled partitions need it, and measuring one."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from batchscore import performance
from batchscore.config import Config
from batchscore.labels import LabelError
from batchscore.prefect_api import log_failures_without_tracebacks
from tasks.common import IO_RETRIES, TASK_DEFAULTS

log_failures_without_tracebacks(LabelError)  # the message names the file and column


@task(name="find-labelled-partitions", **TASK_DEFAULTS, **IO_RETRIES)
def find_labelled(config: Config) -> list[str]:
    logger = get_run_logger()
    unreadable: list[str] = []
    todo = performance.pending(config, unreadable)
    for problem in unreadable:
        logger.warning("%s", problem)
    logger.info("%d labelled partition(s) need realised performance", len(todo))
    return todo


@task(
    name="measure-performance",
    task_run_name="performance {partition}",
    **TASK_DEFAULTS,
    **IO_RETRIES,
)
def measure_performance(config: Config, partition: str, run_id: str) -> list[dict]:
    measured = performance.measure(config, partition, run_id)
    for note in measured.notes:
        get_run_logger().warning("%s", note)
    return measured.rows


@task(name="report-performance", **TASK_DEFAULTS)
def report_performance(
    config: Config, rows: list[dict], not_measured: dict[str, str]
) -> str | None:
    if not rows and not not_measured:
        return None
    metrics = sorted({r["metric"] for r in rows})
    by_key: dict[tuple[str, str], dict] = {}
    for r in rows:
        by_key.setdefault((str(r["partition"]), r["model_version"]), {"n": r["n_joined"]})[
            r["metric"]
        ] = r["value"]
    lines = [
        f"# realised performance: {config.dataset.name}",
        "",
        "| partition | model | labelled rows | " + " | ".join(metrics) + " |",
        "|---|---|---:|" + "---:|" * len(metrics),
    ]
    for (partition, version), values in sorted(by_key.items()):
        cells = " | ".join("-" if values.get(m) is None else f"{values[m]:.4f}" for m in metrics)
        lines.append(f"| {partition} | {version} | {values['n']:,} | {cells} |")
    if not_measured:
        lines += ["", *[f"- {p} not measured: {why}" for p, why in not_measured.items()]]
    lines += ["", f"Table: `{config.store}/performance/dt=*/`"]
    markdown = "\n".join(lines)
    create_markdown_artifact(
        markdown=markdown,
        key="realised-performance",
        description="metrics of the scores on partitions whose labels arrived",
    )
    return markdown
