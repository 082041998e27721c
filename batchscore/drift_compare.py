"""`batchscore drift`: the pipeline's drift statistics on any two Parquet files or folders.

The reference (A) is summarised once, column by column, exactly as training does
(`drift.ReferenceProfile`); the current data (B) is then streamed in record batches through
the same `count` + `merge_all` a scoring worker uses, so only one column of A, or one batch
of B, is in memory at a time. The report has the drift report schema of DESIGN.md and is
written by atomic rename.

Without a config every column the two share is compared: strings and dictionaries as
categories, numbers (integers, floats, booleans, decimals) as numbers; other types are
skipped with a note. With a config, its `[dataset] features` / `categorical` and its
`[drift]` thresholds are used. This module imports neither LightGBM nor Prefect, so the
command starts quickly.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as pads

from batchscore.config import Config, DriftConfig, location_parts
from batchscore.storage import Location
from drift import (
    SCORE_FEATURE,
    CategoricalReference,
    Counts,
    DriftResult,
    NumericReference,
    Reference,
    ReferenceProfile,
    evaluate,
    merge,
    results_to_table,
)

BATCH_ROWS = 262_144
"""Rows per record batch of the current data: large enough that per-batch overhead vanishes,
small enough that a batch of a wide table stays well under 100 MB."""


class DriftInputError(ValueError):
    """An input that cannot be compared (unreadable, no shared columns); names the path."""


@dataclass(frozen=True)
class Comparison:
    table: pa.Table  # drift report rows, drifted first
    results: list[DriftResult]
    reference: ReferenceProfile
    counts: dict[str, Counts]
    notes: tuple[str, ...]  # skipped columns and the like


def compare(
    reference: str,
    current: str,
    out: str,
    config: Config | None = None,
    partition: dt.date | None = None,
    threads: int | None = None,
) -> Comparison:
    """Fit A, count B, evaluate, and write the report to `out` atomically."""
    _refuse_out_over_input(out, {"--reference": reference, "--current": current})
    ref_data, ref_odd, ref_names = _one_schema(_open(reference), reference)
    cur_data, cur_odd, cur_names = _one_schema(_open(current), current)
    odd = {**ref_odd, **cur_odd}
    if config is not None:
        problems = [odd[f] for f in config.dataset.features if f in odd]
        if problems:
            raise DriftInputError(
                "; ".join(problems) + ". Every file must hold each [dataset] feature, as "
                "numbers in every file or as text in every file: fix the files, or compare "
                "those that agree"
            )
    features, categorical, notes = select_columns(ref_data.schema, cur_data.schema, config)
    if config is None:
        notes += [f"skipped {n}: {why}" for n, why in odd.items() if n in ref_names & cur_names]
    profile = fit_reference(ref_data, features, categorical, reference, threads)
    counts = count_current(cur_data, profile, current, threads)
    drift_config = config.drift if config is not None else DriftConfig()
    thresholds = {
        (f, m): drift_config.threshold(f, m)
        for f in features
        for m in (("psi", "chi2") if f in categorical else ("ks", "psi"))
    }
    results = evaluate(profile, counts, thresholds)
    table = results_to_table(
        results,
        partition or dt.datetime.now(dt.UTC).date(),
        f"file:{_display(reference)}",
        "",  # no model: two files were compared
        f"cli-{uuid.uuid4().hex[:12]}",
        dt.datetime.now(dt.UTC),
    )
    _write(table, out)
    return Comparison(table, results, profile, counts, tuple(notes))


def _refuse_out_over_input(out: str, inputs: dict[str, str]) -> None:
    """Refuse an `--out` that is an input file, or inside an input folder, before reading
    anything. The report is written by rename over whatever is at `out`: `--current b.parquet
    --out b.parquet` replaced the user's data with the report, and a report written into a
    folder being compared is read as one of its data files the next time."""
    target = location_parts(out)
    for option, path in inputs.items():
        where = location_parts(path)
        if target[: len(where)] != where:
            continue
        what = "the file" if target == where else "inside the folder"
        raise DriftInputError(
            f"--out {out}: is {what} {option} reads ({_display(path)}); the report would "
            f"{'replace that data' if target == where else 'be read as part of it next time'}."
            " Write the report elsewhere: --out drift-report.parquet"
        )


def _display(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def _open(path: str) -> pads.Dataset:
    try:
        data = pads.dataset(path, format="parquet")
    except FileNotFoundError as exc:
        raise DriftInputError(f"{path}: no such file or folder") from exc
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DriftInputError(f"{path}: cannot read it as Parquet: {exc}") from exc
    if not data.files:
        raise DriftInputError(f"{path}: no Parquet files found")
    return data


def _one_schema(data: pads.Dataset, path: str) -> tuple[pads.Dataset, dict[str, str], set[str]]:
    """The input with one type per column over all its files; the columns left out of it
    because a file lacks them or holds them as another kind (numbers in one, text in
    another), with why; and every column name any file has.

    pyarrow.dataset takes a folder's schema from its first file: a file without a column
    gave nulls, counted as missing values (a drift, of a column simply absent), and one
    with text where the first has numbers failed to cast or, were it the first, was taken
    for the folder's type. Numbers of different types are read as float64, and text of
    different encodings (dictionary, plain) as strings."""
    schemas = [(f.path, f.physical_schema) for f in data.get_fragments()]
    names = {n for _, schema in schemas for n in schema.names}
    if len(schemas) < 2:
        return data, {}, names
    fields, odd = [], {}
    for name in dict.fromkeys(n for _, schema in schemas for n in schema.names):
        types = {file: schema.field(name).type for file, schema in schemas if name in schema.names}
        absent = [file for file, schema in schemas if name not in schema.names]
        kinds = {_kind(t) for t in types.values()}
        if absent:
            more = f" (and {len(absent) - 1} more file(s))" if len(absent) > 1 else ""
            odd[name] = (
                f"{absent[0]}{more} has no column {name!r}, which other files of {path} have"
            )
        elif len(kinds) > 1:
            shown = ", ".join(f"{t} in {f}" for f, t in list(types.items())[:4])
            odd[name] = f"column {name!r} has types of different kinds in {path}: {shown}"
        elif len(set(types.values())) > 1 and kinds != {None}:
            fields.append(pa.field(name, pa.string() if kinds == {"categorical"} else pa.float64()))
        else:
            fields.append(pa.field(name, next(iter(types.values()))))
    if not odd and [f.type for f in fields] == [data.schema.field(f.name).type for f in fields]:
        return data, odd, names
    one = pads.dataset(
        data.files, schema=pa.schema(fields), format="parquet", filesystem=data.filesystem
    )
    return one, odd, names


def _kind(dtype: pa.DataType) -> str | None:
    """'categorical', 'numeric' or None (not comparable) for an Arrow type."""
    if pa.types.is_dictionary(dtype):
        return "categorical"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "categorical"
    if (
        pa.types.is_integer(dtype)
        or pa.types.is_floating(dtype)
        or pa.types.is_boolean(dtype)
        or pa.types.is_decimal(dtype)
    ):
        return "numeric"
    return None


def select_columns(
    reference: pa.Schema, current: pa.Schema, config: Config | None
) -> tuple[list[str], set[str], list[str]]:
    """The features to compare, which of them are categorical, and notes on skipped ones."""
    notes: list[str] = []
    if config is not None:
        features = list(config.dataset.features)
        for schema, side in ((reference, "reference"), (current, "current")):
            absent = [f for f in features if f not in schema.names]
            if absent:
                raise DriftInputError(
                    f"the {side} data has no column(s) {absent} listed in [dataset] features "
                    f"of {config.path or 'the config'}"
                )
        return features, set(config.dataset.categorical), notes

    shared = [name for name in reference.names if name in current.names]
    if not shared:
        raise DriftInputError(
            "the reference and current data share no column "
            f"(reference: {', '.join(reference.names) or 'none'}; "
            f"current: {', '.join(current.names) or 'none'})"
        )
    features: list[str] = []
    categorical: set[str] = set()
    for name in shared:
        ref_type, cur_type = reference.field(name).type, current.field(name).type
        ref_kind, cur_kind = _kind(ref_type), _kind(cur_type)
        if name == SCORE_FEATURE:
            notes.append(f"skipped {name}: the name is reserved for model scores")
        elif ref_kind is None:
            notes.append(f"skipped {name}: type {ref_type} is neither numeric nor a string")
        elif cur_kind != ref_kind:
            notes.append(f"skipped {name}: {ref_type} in the reference, {cur_type} in the current")
        else:
            features.append(name)
            if ref_kind == "categorical":
                categorical.add(name)
    if not features:
        raise DriftInputError(
            f"no shared column can be compared ({'; '.join(notes)})"
            if notes
            else "no shared column can be compared"
        )
    return features, categorical, notes


def fit_reference(
    data: pads.Dataset,
    features: Sequence[str],
    categorical: set[str],
    path: str,
    threads: int | None = None,
) -> ReferenceProfile:
    """Fit every feature on the reference, one column at a time (reads run in parallel)."""

    def fit(name: str) -> Reference:
        column = _read(lambda: data.to_table(columns=[name]).column(name), path)
        try:
            if name in categorical:
                return CategoricalReference.fit(column)
            return NumericReference.fit(column)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise DriftInputError(
                f"{path}: column {name!r} ({column.type}) cannot be read as "
                f"{'categories' if name in categorical else 'numbers'}: {exc}"
            ) from exc

    workers = threads or min(len(features), os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        fitted = list(pool.map(fit, features))
    return ReferenceProfile(dict(zip(features, fitted, strict=True)))


def count_current(
    data: pads.Dataset, profile: ReferenceProfile, path: str, threads: int | None = None
) -> dict[str, Counts]:
    """Counts of the current data in the profile's bins, one record batch at a time.

    Within a batch the columns are counted in parallel threads (sorting and Arrow's
    kernels release the GIL); each batch's partial counts are merged into running totals
    at once, so memory holds one batch and the totals.
    """
    features = profile.features

    def count(batch: pa.RecordBatch, name: str) -> Counts:
        try:
            return profile[name].count(batch.column(name))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise DriftInputError(
                f"{path}: column {name!r} cannot be counted like the reference's: {exc}"
            ) from exc

    totals: dict[str, Counts] = {}
    batches = _read(lambda: data.to_batches(columns=features, batch_size=BATCH_ROWS), path)
    workers = threads or min(len(features), os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        for batch in _guarded(batches, path):
            parts = pool.map(lambda name, b=batch: count(b, name), features)
            for name, part in zip(features, parts, strict=True):
                totals[name] = merge(totals[name], part) if name in totals else part
    if not totals:
        # No rows at all: zero counts, so every method says 'current data is empty'.
        empty = pa.table({f: pa.array([], pa.float64()) for f in features})
        totals = profile.count({f: _empty_like(profile[f], empty.column(f)) for f in features})
    return totals


def _empty_like(reference: Reference, column: pa.ChunkedArray) -> pa.ChunkedArray:
    return column.cast(pa.string()) if isinstance(reference, CategoricalReference) else column


def _read(action: Callable, path: str):
    try:
        return action()
    except (pa.ArrowException, OSError) as exc:
        raise DriftInputError(f"{path}: cannot read it as Parquet: {exc}") from exc


def _guarded(batches, path: str):
    iterator = iter(batches)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            raise DriftInputError(f"{path}: cannot read it as Parquet: {exc}") from exc
        yield batch


def _write(table: pa.Table, out: str) -> None:
    target = out if "://" in out else os.path.abspath(out)
    folder, name = target.rstrip("/").rsplit("/", 1)
    try:
        Location(folder).write_parquet(table, name)
    except (pa.ArrowException, OSError) as exc:
        raise DriftInputError(f"{out}: cannot write the report: {exc}") from exc


# --- terminal output ------------------------------------------------------------------


def format_table(rows: Sequence[dict]) -> str:
    """Drift rows as an aligned terminal table, drifted first (feature, method, ...)."""
    ordered = sorted(
        rows,
        key=lambda r: ({True: 0, False: 1, None: 2}[r["drifted"]], r["feature"], r["method"]),
    )
    header = ("feature", "method", "statistic", "threshold", "drifted")
    with_notes = any(r.get("reason") for r in ordered)
    if with_notes:
        header = (*header, "note")
    lines = []
    for r in ordered:
        line = (
            r["feature"],
            r["method"],
            "-" if r["statistic"] is None else f"{r['statistic']:.4f}",
            f"{r['threshold']:g}",
            {True: "DRIFTED", False: "no", None: "-"}[r["drifted"]],
        )
        lines.append((*line, r.get("reason") or "") if with_notes else line)
    widths = [max(len(str(x[i])) for x in [header, *lines]) for i in range(len(header))]
    right = {2, 3}

    def fmt(values: Sequence[str]) -> str:
        cells = [
            str(v).rjust(w) if i in right else str(v).ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *(fmt(x) for x in lines)])
