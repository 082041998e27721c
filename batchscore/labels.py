"""Labels: one day's delayed ground truth (`<source>/labels/dt=D/*.parquet`), read one way for
training, its holdout evaluation and realised performance, so that the three count the same
rows.

- A row with a null id or a null label is left out.
- A row that repeats another's id and label (a file delivered twice, a re-export) counts
  once: the same fact, told twice.
- An id with conflicting labels (0 in one row, 1 in another) is left out whole: which one is
  true cannot be told. The note names some of them.

Nothing else drops labels; what was left out is in `Labels.notes`, for the caller to warn.
A file without an id column or the label is an error naming the file and the columns it has.
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


def read_labels(config: Config, partition: str) -> Labels:
    """The labels of `partition`, with the rule of the module docstring applied."""
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
                tables.append(file.read(columns=list(wanted)))
        except (pa.ArrowInvalid, KeyError) as exc:
            raise LabelError(f"cannot read {name}: {exc}") from exc
    if not tables:
        raise LabelError(f"no Parquet files under {source.path(folder)}")
    table = pa.concat_tables(tables, promote_options="permissive")
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


def _ids_text(ids: pa.Table, id_columns: list[str]) -> str:
    """`customer_id 17, 42` for one id column, `(shop=1, order=9), ...` for several."""
    rows = ids.to_pylist()
    if len(id_columns) == 1:
        return f"{id_columns[0]} " + ", ".join(str(r[id_columns[0]]) for r in rows)
    return ", ".join("(" + ", ".join(f"{c}={r[c]}" for c in id_columns) + ")" for r in rows)
