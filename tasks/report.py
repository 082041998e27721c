"""What a run shows a person: a markdown summary and a partition table in the Prefect UI."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from batchscore.config import Config
from batchscore.registry import ModelRef
from batchscore.scoring import PartitionOutcome
from tasks.common import TASK_DEFAULTS

DRIFT_COLUMNS = ("feature", "method", "statistic", "threshold", "drifted")


@task(name="report-run", **TASK_DEFAULTS)
def report_run(
    config: Config,
    model: ModelRef,
    outcomes: list[PartitionOutcome],
    failures: list[tuple[str, str]],  # (partition, why)
    seconds: float,
) -> str:
    rows = sum(o.rows_in for o in outcomes)
    lines = [
        f"# batchscore run: {config.dataset.name} {model.version}",
        "",
        f"{len(outcomes)} partition(s), {rows:,} rows in {seconds:.1f} s "
        f"({rows / seconds if seconds else 0:,.0f} rows/s wall).",
        "",
        "| partition | status | rows | scored | quarantined | worker s | rows/s | drifted |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for o in outcomes:
        lines.append(
            f"| {o.partition} | {o.status} | {o.rows_in:,} | {o.rows_scored:,} | "
            f"{o.rows_quarantined:,} | {o.seconds:.2f} | {o.rows_per_second:,.0f} | "
            f"{', '.join(o.drifted) or '-'} |"
        )
    if not outcomes:
        lines.append("| - | nothing to do | | | | | |")
    held = [o for o in outcomes if o.status == "held"]
    if held or failures:
        lines += ["", "## Needs attention", ""]
        lines += [f"- **{o.partition} held**: {'; '.join(o.reasons)}" for o in held]
        lines += [f"- **{p} failed**: {why}" for p, why in failures]
    lines += [
        "",
        "## Outputs",
        "",
        f"- scores: `{config.store}/scores/dt=*/` (complete where `_SUCCESS` exists)",
        f"- quarantine: `{config.store}/quarantine/dt=*/` (rows with a `reason` column)",
        f"- drift reports: `{config.store}/drift/dt=*/` (one row per feature x method)",
    ]
    reports = [o for o in outcomes if o.drift_report]
    if reports:
        # Static pages in the store (inline SVG, open offline); browsers do not follow file
        # links from the UI, so the path is shown to copy.
        lines += ["", "## Drift reports (HTML)", ""]
        lines += [
            f"- {o.partition}: `{o.drift_report}`"
            + (f" ({', '.join(o.drifted)} drifted)" if o.drifted else "")
            for o in reports
        ]
        for o in outcomes:
            lines += [f"- {o.partition}: {w}" for w in o.drift_warnings]
    markdown = "\n".join(lines)
    create_markdown_artifact(
        markdown=markdown,
        key="score-run-summary",
        description=f"{config.dataset.name}: partitions scored this run",
    )
    if outcomes:
        create_table_artifact(
            key="score-partitions",
            table=[
                {
                    "partition": o.partition,
                    "status": o.status,
                    "rows": o.rows_in,
                    "scored": o.rows_scored,
                    "quarantined": o.rows_quarantined,
                }
                for o in outcomes
            ],
            description="rows in / scored / quarantined per partition",
        )
        drift = [
            {"partition": o.partition, **{k: row[k] for k in DRIFT_COLUMNS}}
            for o in outcomes
            for row in o.drift
        ]
        if drift:
            # Drifted rows first, then by partition, feature and method.
            drift.sort(key=lambda r: (not r["drifted"], r["partition"], r["feature"], r["method"]))
            create_table_artifact(
                key="drift",
                table=drift,
                description="drift per partition x feature x method (drifted first)",
            )
    return markdown
