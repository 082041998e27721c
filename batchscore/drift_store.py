"""The `<store>/drift/` folder: what a partition's drift folder holds, and reading it back.

    <store>/drift/dt=D/part-00000.parquet   the drift report rows (drift.DRIFT_REPORT_SCHEMA)
    <store>/drift/dt=D/_COUNTS.json         the partition's merged counts per feature, in the
                                            champion's bins, with the model version
    <store>/drift/dt=D/_report.html         the static HTML report (batchscore.drift_html)

The two extra files start with `_` so that `pyarrow.dataset` (and Spark) skip them and read
`<store>/drift/` as one table; a `*.parquet` glob (DuckDB) never sees them either.

This module also owns the rolling reference: the merged stored counts of the N newest earlier
partitions made against the same model version (same bins), applied to the champion's
profile with `with_counts`. Only pyarrow and `drift` are imported, so `batchscore drift show`
starts quickly.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from batchscore.storage import (
    Location,
    Maybe,
    Shape,
    UnreadableJSON,
    json_object,
    parse_partition_dir,
)
from drift import Counts, ReferenceProfile, counts_from_dict, merge_all
from drift._encoding import dumps

DRIFT_DIR = "drift"
REPORT_FILE = "part-00000.parquet"
COUNTS_FILE = "_COUNTS.json"
HTML_FILE = "_report.html"
COUNTS_FORMAT = "batchscore.drift.counts/1"
# One feature's counts as stored (`Counts.to_dict`), in a `_COUNTS.json` and in a staged
# chunk's record: what `drift.counts_from_dict` reads (`storage.check_shape`).
COUNTS_PAYLOAD_SHAPE = (
    {
        "kind": frozenset({"numeric"}),
        "reference_id": str,
        "bin_counts": [int],
        "sketch_counts": [int],
    },
    {
        "kind": frozenset({"categorical"}),
        "reference_id": str,
        "bin_counts": [int],
        "unseen": Maybe(({str: int}, None)),
    },
)
COUNTS_SHAPE: Shape = {"format": str, "model_version": str, "counts": {str: COUNTS_PAYLOAD_SHAPE}}


def counts_document(
    partition: str,
    model_name: str,
    model_version: str,
    reference_name: str,
    counts: Mapping[str, Counts],
) -> bytes:
    """The `_COUNTS.json` of one partition: its merged counts, keyed by feature."""
    rows = max((c.n for c in counts.values()), default=0)
    return dumps(
        {
            "format": COUNTS_FORMAT,
            "partition": partition,
            "model_name": model_name,
            "model_version": model_version,
            "reference": reference_name,
            "rows": rows,
            "counts": {feature: c.to_dict() for feature, c in counts.items()},
        }
    ).encode()


def drift_partitions(store: Location) -> list[str]:
    """Partitions (YYYY-MM-DD, oldest first) that have a drift folder."""
    days = (parse_partition_dir(e.base_name) for e in store.list(DRIFT_DIR))
    return sorted(d.isoformat() for d in days if d is not None)


@dataclass(frozen=True)
class ReferenceWindow:
    """The reference a partition is measured against, and how it was made."""

    profile: ReferenceProfile
    name: str  # the report's `reference` column: training:vNNNN or rolling:N
    partitions: tuple[str, ...] = ()  # the earlier partitions merged (rolling only)
    warning: str | None = None  # a shorter window than asked, or a fallback to training


def rolling_reference(
    store: Location,
    partition: str,
    profile: ReferenceProfile,
    model_version: str,
    window: int,
) -> ReferenceWindow:
    """`rolling:N` for `partition`: merged counts of the N newest earlier partitions.

    A partition qualifies when its `_COUNTS.json` was made with `model_version` (so its bins
    are the profile's), holds counts for every profiled feature in those bins, and is not
    empty. Fewer than N qualifying partitions: as many as there are, with a warning; none:
    the training profile itself (`training:<version>`), with a warning. A `_COUNTS.json`
    that cannot be read does not qualify, and the warning names it.
    """
    used: list[tuple[str, dict[str, Counts]]] = []
    unreadable: list[str] = []
    earlier = list(reversed([d for d in drift_partitions(store) if d < partition]))
    for day, counts, problems in _newest_counts(store, earlier, profile, model_version, window):
        unreadable += problems
        if counts is not None:
            used.append((day, counts))
            if len(used) == window:
                break
    name = f"rolling:{window}"
    left_out = "".join(f"; left out {problem}" for problem in unreadable)
    if not used:
        return ReferenceWindow(
            profile,
            f"training:{model_version}",
            warning=(
                f"{name}: no partition before {partition} has drift counts made with "
                f"{model_version}; measured against the training reference instead{left_out}"
            ),
        )
    merged = {
        feature: profile[feature].with_counts(merge_all(c[feature] for _, c in used))  # type: ignore[arg-type]
        for feature in profile
    }
    days = tuple(sorted(day for day, _ in used))
    warning = f"{name}: {left_out[2:]}" if left_out else None
    if len(used) < window:
        warning = (
            f"{name}: only {len(used)} partition(s) before {partition} have drift counts "
            f"made with {model_version} ({', '.join(days)}); the reference merges those"
            f"{left_out}"
        )
    return ReferenceWindow(ReferenceProfile(merged), name, days, warning)


# `_COUNTS.json` files read at a time from an object store (`_newest_counts`).
COUNTS_READERS = 16


def _newest_counts(
    store: Location,
    days: list[str],
    profile: ReferenceProfile,
    model_version: str,
    window: int,
) -> Iterator[tuple[str, dict[str, Counts] | None, list[str]]]:
    """`_qualifying_counts` of each of `days` in their order, with its problems. On an
    object store they are read several at a time: the window's first (the `window` newest,
    which qualify unless the champion changed), then `COUNTS_READERS` at a time. After a
    promotion no earlier partition qualifies until `window` have been scored by the new
    champion, and every earlier `_COUNTS.json` is read, for each partition it scores: on
    S3, 1,000 days were 1,000 GETs one after the other (~20 s a partition). The caller
    stops when it has its window; the few read beyond it are not used."""

    def read(day: str) -> tuple[str, dict[str, Counts] | None, list[str]]:
        problems: list[str] = []
        return day, _qualifying_counts(store, day, profile, model_version, problems), problems

    if store.is_local:
        yield from map(read, days)
        return
    with ThreadPoolExecutor(COUNTS_READERS, thread_name_prefix="read-counts") as pool:
        start, size = 0, window
        while start < len(days):
            yield from pool.map(read, days[start : start + size])
            start, size = start + size, COUNTS_READERS


def _qualifying_counts(
    store: Location,
    day: str,
    profile: ReferenceProfile,
    model_version: str,
    unreadable: list[str],
) -> dict[str, Counts] | None:
    try:
        data = store.read_bytes(DRIFT_DIR, f"dt={day}", COUNTS_FILE)
    except FileNotFoundError:
        return None
    # Another version's counts are skipped without parsing a large document: one whole
    # (else truncated) that names a version (as `counts_document` writes it), not this one.
    # Any other is parsed, and named below when it is not a counts document.
    names_one = data.rstrip().endswith(b"}") and b'"model_version":"' in data
    if names_one and json.dumps(model_version).encode() not in data:
        return None
    path = store.path(DRIFT_DIR, f"dt={day}", COUNTS_FILE)
    try:
        document = json_object(data, path, COUNTS_SHAPE)
    except UnreadableJSON as exc:
        unreadable.append(str(exc))
        return None
    if document.get("format") != COUNTS_FORMAT or document.get("model_version") != model_version:
        return None
    stored = document.get("counts") or {}
    if set(stored) != set(profile):
        return None
    counts = {feature: counts_from_dict(payload) for feature, payload in stored.items()}
    for feature, c in counts.items():
        if c.kind != profile[feature].kind or c.reference_id != profile[feature].reference_id:
            return None
    if all(c.n == 0 for c in counts.values()):
        return None  # an empty partition says nothing about the distribution
    return counts


def read_report(store: Location, partition: str) -> pa.Table | None:
    """A partition's drift report rows, or None when it has none."""
    folder = store.path(DRIFT_DIR, f"dt={partition}")
    files = [
        e
        for e in store.list(DRIFT_DIR, f"dt={partition}")
        if e.base_name.endswith(".parquet") and not e.base_name.startswith(("_", "."))
    ]
    if not files:
        return None
    tables = [pq.read_table(f"{folder}/{e.base_name}", filesystem=store.fs) for e in files]
    return pa.concat_tables(tables)


def html_report_uri(store: Location, partition: str) -> str:
    return store.child(DRIFT_DIR, f"dt={partition}", HTML_FILE).uri


def parse_day(text: str) -> str:
    """A YYYY-MM-DD partition name, checked; raises ValueError naming the text otherwise."""
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise ValueError(f"not a partition date (YYYY-MM-DD): {text!r}") from None
