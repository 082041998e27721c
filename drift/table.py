"""The drift report as a pyarrow Table: the schema of DESIGN.md "Drift report" and its rows.

This module owns the column names, types and order of `<store>/drift/dt=.../` files
(`DRIFT_REPORT_SCHEMA`) and the conversion of `DriftResult`s into rows. The DESIGN.md
columns come first in their documented order; `status` and `reason` trail them so readers
that select the documented columns are unaffected.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import pyarrow as pa

from drift.methods import DriftResult

DRIFT_REPORT_SCHEMA = pa.schema(
    [
        pa.field("partition", pa.date32(), nullable=False),
        pa.field("feature", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("statistic", pa.float64()),  # null when not computed
        pa.field("p_value", pa.float64()),  # null for PSI and when not computed
        pa.field("threshold", pa.float64(), nullable=False),
        pa.field("drifted", pa.bool_()),  # null when not computed
        pa.field("reference", pa.string(), nullable=False),
        pa.field("n_reference", pa.int64(), nullable=False),
        pa.field("n_current", pa.int64(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("computed_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
    ]
)


def results_to_table(
    results: Iterable[DriftResult],
    partition: dt.date,
    reference_name: str,
    model_version: str,
    run_id: str,
    computed_at: dt.datetime,
) -> pa.Table:
    """Drift report rows for one partition, sorted: drifted first, then feature, method.

    Rows whose drift is unknown (not computed) sort after the undrifted ones.
    `computed_at` must be timezone-aware; it is stored in UTC.
    """
    if isinstance(partition, dt.datetime):
        # datetime is a subclass of date; a timestamp here is almost surely a mistake.
        raise TypeError("partition must be a datetime.date, not a datetime")
    if computed_at.tzinfo is None or computed_at.utcoffset() is None:
        raise ValueError("computed_at must be timezone-aware (it is stored as UTC)")
    computed_at_utc = computed_at.astimezone(dt.UTC)

    ordered = sorted(results, key=_sort_key)
    columns = {
        "partition": [partition] * len(ordered),
        "feature": [r.feature for r in ordered],
        "kind": [r.kind for r in ordered],
        "method": [r.method for r in ordered],
        "statistic": [r.statistic for r in ordered],
        "p_value": [r.p_value for r in ordered],
        "threshold": [r.threshold for r in ordered],
        "drifted": [r.drifted for r in ordered],
        "reference": [reference_name] * len(ordered),
        "n_reference": [r.n_reference for r in ordered],
        "n_current": [r.n_current for r in ordered],
        "model_version": [model_version] * len(ordered),
        "run_id": [run_id] * len(ordered),
        "computed_at": [computed_at_utc] * len(ordered),
        "status": [r.status for r in ordered],
        "reason": [r.reason for r in ordered],
    }
    return pa.table(columns, schema=DRIFT_REPORT_SCHEMA)


def _sort_key(result: DriftResult) -> tuple[int, str, str]:
    drifted_rank = {True: 0, False: 1, None: 2}[result.drifted]
    return drifted_rank, result.feature, result.method
