"""Labels: one day's delayed ground truth (`<source>/labels/dt=D/*.parquet`), read one way for
training, its holdout evaluation and realised performance, so that the three count the same
rows.

- A row with a null id or a null label is left out.
- A row that repeats another's id and label (a file delivered twice, a re-export) counts
  once: the same fact, told twice.
- An id with conflicting labels (0 in one row, 1 in another) is left out whole: which one is
  true cannot be told. The note names some of them.

Nothing else drops labels; what was left out is in `Labels.notes`, for the caller to warn.
A file without an id column or the label is an error naming the file and the columns it has;
so is one whose ids are of another kind than the rows' (strings beside integers), which no
label could match.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchscore.config import Config
from batchscore.storage import Location

_ROW = "__label_row__"  # a row's position, to keep the files' order through the group-bys
_NAMED = 5  # conflicting ids named in a note


class LabelError(ValueError):
    """Labels that cannot be used; the message names the file and the column."""


@dataclass(frozen=True)
class Labels:
    """A day's labels, one row per id: the id columns and the label."""

    partition: str
    table: pa.Table
    rows_read: int
    repeated: int  # rows that repeat an earlier row's id and label, counted once
    conflicting: int  # ids with conflicting labels, left out
    notes: tuple[str, ...]


def with_join_types(table: pa.Table, id_columns: list[str]) -> pa.Table:
    """`table` with its id columns cast to the type their kind is joined by: integers as
    int64 (uint64 kept), strings of any encoding as large_string, dates as date64. Arrow
    joins only identical key types (int32 beside int64 ids raised)."""
    for c in id_columns:
        at = table.schema.get_field_index(c)
        t = table.schema.field(at).type
        target = _JOIN_TYPES.get(_kind(t), t) if t != pa.uint64() else t
        if target != t:
            table = table.set_column(at, c, table.column(at).cast(target))
    return table


def read_labels(config: Config, partition: str, rows: pa.Schema, rows_name: str) -> Labels:
    """The labels of `partition`, with the rule of the module docstring applied, their id
    columns cast to the types of the `rows` they will be joined to (`with_join_types`);
    `rows_name` names those rows in an error (`scores/dt=D`)."""
    ds = config.dataset
    source = Location(config.source)
    folder = f"labels/dt={partition}"
    wanted = {c: "[dataset] id_columns" for c in ds.id_columns} | {ds.label: "[dataset] label"}
    tables = []
    for entry in source.data_files(folder):
        name = f"{folder}/{entry.base_name}"
        try:
            with source.fs.open_input_file(entry.path) as fh:
                file = pq.ParquetFile(fh)
                has = file.schema_arrow.names
                missing = [f"{c!r} ({role})" for c, role in wanted.items() if c not in has]
                if missing:
                    raise LabelError(
                        f"{name} has no column {', no column '.join(missing)}; "
                        f"it has: {', '.join(has) or 'no columns'}"
                    )
                table = file.read(columns=list(wanted))
        except (pa.ArrowInvalid, KeyError) as exc:
            raise LabelError(f"cannot read {name}: {exc}") from exc
        tables.append(_as_number(_cast_ids(table, rows, ds.id_columns, name, rows_name), ds.label))
    if not tables:
        raise LabelError(f"no Parquet files under {source.path(folder)}")
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        types = ", ".join(f"{t.column(ds.label).type}" for t in tables)
        raise LabelError(
            f"{folder}: its files' columns have types that do not combine ({exc}; "
            f"{ds.label!r} is {types} in its files); fix the labels' export"
        ) from exc
    rows_read = table.num_rows
    valid = pc.is_valid(table.column(ds.label))
    for c in ds.id_columns:
        valid = pc.and_(valid, pc.is_valid(table.column(c)))
    table = table.filter(valid)
    table = table.append_column(_ROW, pa.array(range(table.num_rows), pa.int64()))

    keys = [*ds.id_columns, ds.label]
    firsts = table.group_by(keys, use_threads=False).aggregate([(_ROW, "min")])
    repeated = table.num_rows - firsts.num_rows
    if repeated:
        first = firsts.column(f"{_ROW}_min")
        table = table.take(first.take(pc.sort_indices(first)))
    per_id = table.group_by(ds.id_columns, use_threads=False).aggregate([([], "count_all")])
    conflicts = per_id.filter(pc.greater(per_id.column("count_all"), 1)).select(ds.id_columns)
    if conflicts.num_rows:
        table = table.join(conflicts, keys=ds.id_columns, join_type="left anti").sort_by(_ROW)

    notes = []
    if repeated:
        notes.append(
            f"{folder}: {repeated:,} row(s) repeat an earlier row's id and label (a file "
            "delivered twice?) and count once"
        )
    if conflicts.num_rows:
        named = conflicts.sort_by([(c, "ascending") for c in ds.id_columns]).slice(0, _NAMED)
        more = ", ..." if conflicts.num_rows > _NAMED else ""
        notes.append(
            f"{folder}: {conflicts.num_rows:,} id(s) have conflicting labels in column "
            f"{ds.label!r} and are left out: {_ids_text(named, ds.id_columns)}{more}"
        )
    return Labels(
        partition,
        table.drop_columns([_ROW]),
        rows_read,
        repeated,
        conflicts.num_rows,
        tuple(notes),
    )


# The type each kind of id is joined by (`_kind`); other types are joined as they are.
_JOIN_TYPES = {"integer": pa.int64(), "string": pa.large_string(), "date": pa.date64()}


def _kind(t: pa.DataType) -> str:
    """What an id's values are, whatever their encoding: integer, string, date, or the
    type's own name (a float id is none of them)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    return "date" if pa.types.is_date(t) else str(t)


def _cast_ids(
    table: pa.Table, rows: pa.Schema, id_columns: list[str], name: str, rows_name: str
) -> pa.Table:
    """One labels file's ids cast to the rows' types; ids of another kind never compare
    equal (`"17"` is not `17`), so not one label would match: an error naming both types."""
    for c in id_columns:
        at = table.schema.get_field_index(c)
        have, want = table.schema.field(at).type, rows.field(c).type
        if have == want or pa.types.is_null(have) or pa.types.is_null(want):
            continue
        if _kind(have) != _kind(want):
            raise LabelError(
                f"{name}: id column {c!r} has type {have}, but {rows_name} has {want}: "
                f"{' and '.join(sorted({_kind(have), _kind(want)}))} ids never compare "
                "equal, so no label would match a row; fix the labels' export"
            )
        try:
            table = table.set_column(at, c, table.column(at).cast(want))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise LabelError(
                f"{name}: id column {c!r} of type {have} cannot be cast to {want}, the type "
                f"of {rows_name}: {exc}"
            ) from exc
    return table


def _as_number(table: pa.Table, label: str) -> pa.Table:
    """`table` with a boolean label as 0/1 (int8) and a dictionary-encoded one as its values.
    A binary label may be delivered as booleans by one export and 0/1 by another; Arrow
    combines neither bool with int8 nor a dictionary with plain values, and the files of a
    day, or the days of a training window, were then refused with an uncaught
    ArrowTypeError."""
    at = table.schema.get_field_index(label)
    t = table.schema.field(at).type
    if pa.types.is_dictionary(t):
        table, t = table.set_column(at, label, table.column(at).cast(t.value_type)), t.value_type
    if pa.types.is_boolean(t):
        table = table.set_column(at, label, table.column(at).cast(pa.int8()))
    return table


def _ids_text(ids: pa.Table, id_columns: list[str]) -> str:
    """`customer_id 17, 42` for one id column, `(shop=1, order=9), ...` for several."""
    rows = ids.to_pylist()
    if len(id_columns) == 1:
        return f"{id_columns[0]} " + ", ".join(str(r[id_columns[0]]) for r in rows)
    return ", ".join("(" + ", ".join(f"{c}={r[c]}" for c in id_columns) + ")" for r in rows)
