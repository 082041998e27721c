"""Realised performance: once labels arrive for a scored partition, how good were the scores?

Joins `<store>/scores/dt=D/` with `<source>/labels/dt=D/` by the id columns and writes one
row per partition x model version x metric to `<store>/performance/dt=D/`, published whole
with a `_SUCCESS` that records what it was computed from, so it is recomputed only when the
scores or the labels change. Labels are read as training reads them (`batchscore.labels`):
a row repeated counts once, ids with conflicting labels are left out, and the measurement's
`notes` say so.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from contextlib import suppress
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from batchscore import manifest_cache
from batchscore.config import Config
from batchscore.labels import read_labels, with_join_types
from batchscore.metrics import metrics, undefined
from batchscore.partitions import SUCCESS, SUCCESS_SHAPE, listed_partitions
from batchscore.storage import (
    Location,
    Shape,
    UnreadableJSON,
    parse_partition_dir,
)

SCHEMA = pa.schema(
    [
        pa.field("partition", pa.date32(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("n_scored", pa.int64(), nullable=False),
        pa.field("n_labelled", pa.int64(), nullable=False),
        pa.field("n_joined", pa.int64(), nullable=False),
        pa.field("computed_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)


# What `pending` needs of a performance `_SUCCESS` (`storage.check_shape`).
PERFORMANCE_SHAPE: Shape = {"computed_from": dict}


def _fingerprint(
    config: Config,
    partition: str,
    scores: dict | None = None,
    labels: list[pafs.FileInfo] | None = None,
) -> dict:
    """What a partition's realised performance is computed from: its scores' run and model,
    and its labels' files. `scores` (its scores' `_SUCCESS`) and `labels` (its labels' data
    files) when the caller has them; else they are read here."""
    if scores is None:
        scores = Location(config.store).read_json(
            "scores", f"dt={partition}", SUCCESS, shape=SUCCESS_SHAPE
        )
    if labels is None:
        labels = Location(config.source).data_files(f"labels/dt={partition}")
    return {
        "scores_run_id": scores["run_id"],
        "model_version": scores["model_version"],
        "labels": [[e.base_name, e.size, e.mtime_ns] for e in labels],
    }


def pending(config: Config, unreadable: list[str] | None = None) -> list[str]:
    """Labelled partitions with published scores whose performance is missing or stale.

    A `_SUCCESS` that cannot be read (why, in `unreadable` when given) is not a reason to
    fail the run: the performance's is computed again; the scores' means the scores are not
    vouched for (the score flow scores such a partition again), so it waits for them.

    The labels' files come from one listing of `labels/`, and each partition's two
    `_SUCCESS` files are read several partitions at a time on an object store, on S3 only
    when new or changed since a run last read them (`manifest_cache`): asked partition by
    partition, a store of 1,000 labelled days cost ~5,000 requests on every run, and read
    16 at a time, ~2,000 GETs."""
    store = Location(config.store)
    top, listed = listed_partitions(Location(config.source), "labels")
    labelled = sorted(d.isoformat() for e in top if (d := parse_partition_dir(e.base_name)))
    # Both manifests of every labelled partition, with one read (and write) of the cache: a
    # performance `_SUCCESS` of a partition without scores is rarely there (and on S3, one
    # not listed costs no read).
    manifests = manifest_cache.read_manifests(
        store,
        SUCCESS,
        {"scores": (labelled, SUCCESS_SHAPE), "performance": (labelled, PERFORMANCE_SHAPE)},
    )
    out = []
    for partition in labelled:
        scores, done = manifests["scores"][partition], manifests["performance"][partition]
        if isinstance(scores, UnreadableJSON):
            if unreadable is not None:
                unreadable.append(f"{scores}; no realised performance until it is scored again")
            continue
        if scores is None:
            continue
        computed_from = _fingerprint(config, partition, scores, listed.get(partition, []))
        if not computed_from["labels"]:  # an empty labels folder: nothing to measure yet
            continue
        if isinstance(done, UnreadableJSON):
            if unreadable is not None:
                unreadable.append(f"{done}; computing the realised performance again")
            done = None
        if done is None or done.get("computed_from") != computed_from:
            out.append(partition)
    return out


def _read(location: Location, folder: str, columns: list[str]) -> pa.Table:
    tables = [
        pq.read_table(location.fs.open_input_file(e.path), columns=columns)
        for e in location.data_files(folder)
    ]
    return pa.concat_tables(tables, promote_options="permissive")


@dataclass(frozen=True)
class Measurement:
    """One partition's published rows, and what was left out of its labels (for warnings)."""

    partition: str
    rows: list[dict]
    notes: tuple[str, ...]


def measure(config: Config, partition: str, run_id: str) -> Measurement:
    """Compute and publish one partition's realised metrics."""
    ds = config.dataset
    store = Location(config.store)
    computed_from = _fingerprint(config, partition)
    scores = _read(store, f"scores/dt={partition}", [*ds.id_columns, "score", "model_version"])
    scores = with_join_types(scores, ds.id_columns)
    read = read_labels(config, partition, scores.schema, f"scores/dt={partition}")
    labels = read.table
    joined = scores.join(labels, keys=ds.id_columns, join_type="inner")
    now = dt.datetime.now(dt.UTC)
    rows, notes, not_defined = [], list(read.notes), {}
    for version in sorted(set(joined.column("model_version").to_pylist())):
        part = joined.filter(pc.equal(joined.column("model_version"), version))
        y = part.column(ds.label).to_numpy(zero_copy_only=False).astype(np.float64)
        try:
            values = metrics(ds.task, y, part.column("score").to_numpy(zero_copy_only=False))
        except ValueError as exc:  # e.g. a label of 2 for a binary model
            raise ValueError(
                f"{config.source}/labels/dt={partition}, column {ds.label!r}: {exc}"
            ) from exc
        not_defined[version] = undefined(ds.task, y)
        notes += [
            f"dt={partition}, scores of {version}: {name} undefined: {why}"
            for name, why in not_defined[version].items()
        ]
        for name, value in sorted(values.items()):
            rows.append(
                {
                    "partition": dt.date.fromisoformat(partition),
                    "model_version": version,
                    "metric": name,
                    "value": value,  # None where undefined
                    "n_scored": scores.num_rows,
                    "n_labelled": labels.num_rows,
                    "n_joined": part.num_rows,
                    "computed_at": now,
                    "run_id": run_id,
                }
            )
    manifest = {
        "partition": partition,
        "computed_from": computed_from,
        "run_id": run_id,
        "rows": len(rows),
        "labels": {
            "rows_read": read.rows_read,
            "used": labels.num_rows,
            "repeated": read.repeated,
            "conflicting_ids": read.conflicting,
        },
        "notes": notes,
        "undefined_metrics": {v: why for v, why in not_defined.items() if why},
        "written_at": now.isoformat(),
    }
    staging = store.child("_staging", f"performance-{partition}-{uuid.uuid4().hex[:8]}")
    try:
        staging.write_parquet(pa.Table.from_pylist(rows, schema=SCHEMA), "part-00000.parquet")
        staging.write_json(manifest, SUCCESS)
        store.publish_dir(staging, "performance", f"dt={partition}")
    except BaseException:
        # A failed attempt (a full disk; each retry is an attempt of its own) leaves nothing
        # behind: realised performance takes no lease, so no later run may delete this name.
        with suppress(Exception):
            staging.delete_dir()
        raise
    return Measurement(partition, json.loads(json.dumps(rows, default=str)), tuple(notes))
