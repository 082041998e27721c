"""Scoring one chunk, and publishing one partition: the work behind the score flow's tasks.

A chunk worker reads its row groups, validates them, scores the valid rows, and writes its
scores and quarantined rows into the partition's staging folder, then a small JSON summary.
The summary is written last, so its presence means the chunk is done; a rerun after a crash
reuses finished chunks instead of recomputing them.

Publishing checks the accounting (rows in = scored + quarantined), writes the `_SUCCESS`
manifest into the staging folder and renames the folder into place: a reader sees a
partition's scores whole, with their manifest, or not at all.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchscore.config import Config
from batchscore.drift_html import render_report
from batchscore.drift_store import (
    COUNTS_FILE,
    COUNTS_PAYLOAD_SHAPE,
    DRIFT_DIR,
    HTML_FILE,
    REPORT_FILE,
    ReferenceWindow,
    counts_document,
    html_report_uri,
    rolling_reference,
)
from batchscore.engine import PREDICT_BLOCK_ROWS, get_predictor
from batchscore.features import FeatureColumns, unseen_mask
from batchscore.partitions import (
    HELD,
    HELD_BESIDE,
    REREAD_DELAYS,
    SUCCESS,
    SUCCESS_SHAPE,
    Chunk,
    PartitionPlan,
    Piece,
    plan_to_json,
    publishing_marker,
    unreadable,
    with_id_types,
)
from batchscore.registry import LoadedModel, ModelRef, utc_now
from batchscore.storage import Location, Shape, UnreadableJSON, check_lease, this_process
from batchscore.validation import FileProblem, RowVerdict, validate_chunk, warm_up_validation
from drift import (
    SCORE_FEATURE,
    Counts,
    DriftResult,
    ReferenceProfile,
    counts_from_dict,
    evaluate,
    expect_to_count,
    merge,
    merge_all,
    results_to_table,
)


class AccountingError(RuntimeError):
    """Rows in != rows scored + rows quarantined: nothing is published."""


class PartitionHeld(RuntimeError):
    """A partition was held (unreadable files, or too many rejected rows): nothing scored.

    Raised by the publishing tasks so that their Prefect task run ends Failed with the
    reason; the flow catches it, records the outcome and goes on with other partitions.
    """

    def __init__(self, outcome: PartitionOutcome):
        super().__init__(f"partition {outcome.partition} held: {'; '.join(outcome.reasons)}")
        self.outcome = outcome

    def __reduce__(self):  # raised in a worker, it is pickled back to the flow
        return type(self), (self.outcome,)


class UnreadableFile(Exception):
    """Files of a chunk hold data that cannot be decoded (a corrupt page behind an intact
    footer): the partition is held, naming each file, as planning holds an unreadable footer.

    Not an OSError, so the task is not retried: the re-reads that tell it from a storage
    error are done already (`_read_piece`).
    """

    def __init__(self, *problems: FileProblem):
        super().__init__(" | ".join(f"{p.file}: {p.reason}" for p in problems))
        self.problems = problems

    def __reduce__(self):  # raised in a worker, it is pickled back to the flow
        return type(self), self.problems


# Rows a worker reads, validates and scores at once. Parquet's reader holds about 2 times
# the batch besides the batch itself (measured with pyarrow 26): at 250,000 rows of 22
# features a worker's Arrow memory peaked at 220 MiB, at 131,072 at 110 MiB, as fast;
# at 65,536, 7% slower (per-batch costs: validation calls, drift count merges).
BATCH_ROWS = 131_072


@dataclass(frozen=True)
class ChunkResult:
    partition: str
    index: int
    rows_in: int
    rows_scored: int
    rows_quarantined: int
    failed: dict[str, int] = field(default_factory=dict)
    unseen: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    drift_counts: dict[str, dict] = field(default_factory=dict)  # feature -> partial counts
    reused: bool = False


# A staged chunk's record (`chunks/part-N.json`, a `ChunkResult`), as a resumed run reuses it
# (`storage.check_shape`).
CHUNK_SHAPE: Shape = {
    "partition": str,
    "index": int,
    "rows_in": int,
    "rows_scored": int,
    "rows_quarantined": int,
    "failed": {str: int},
    "unseen": {str: int},
    "seconds": {str: float},
    "drift_counts": {str: COUNTS_PAYLOAD_SHAPE},
}


STAGING = "_staging"  # under the store: work in progress, one folder per partition attempt


def staging_location(config: Config, plan: PartitionPlan, model: ModelRef) -> Location:
    # Keyed by what determines the output, so a rerun of the same work finds its chunks.
    return Location(config.store).child(
        STAGING, f"dt={plan.partition}-{model.version}-{plan.fingerprint}"
    )


def score_chunk(
    config: Config, chunk: Chunk, model: ModelRef, plan: PartitionPlan, run_id: str
) -> ChunkResult:
    """Read, validate, score and count one chunk, in record batches of `BATCH_ROWS` rows
    (or `chunk_rows`, if fewer).

    A chunk is a run of whole row groups (of one file, or of several small files), and a
    writer may make row groups of any size (pandas and pyarrow write 1,048,576 rows);
    reading it in batches keeps a worker's memory at about `BATCH_ROWS` rows whatever the
    files' layout and `chunk_rows`. Each batch's scores are written as it is done; only the
    rejected rows are kept to the chunk's end. A file whose data cannot be decoded does not
    stop the chunk's other files from being read: the chunk then fails naming every such
    file (`UnreadableFile`), and the partition is held.
    """
    staging = staging_location(config, plan, model)
    name = f"part-{chunk.index:05d}"
    try:
        done = staging.read_json_or_none("chunks", f"{name}.json", shape=CHUNK_SHAPE)
    except UnreadableJSON:
        # Damaged after it was written whole (a disk, a hand): the chunk is scored again,
        # which rewrites it, as if it had never finished.
        done = None
    if done is not None and all(staging.exists(*f) for f in _chunk_files(name, done)):
        kept = {k: done[k] for k in ChunkResult.__dataclass_fields__ if k in done}
        return ChunkResult(**{**kept, "reused": True})  # a key added by hand is no TypeError

    timings = dict.fromkeys(("read", "validate", "score", "write", "drift"), 0.0)
    loaded = model.load()
    expect_to_count(chunk.rows * len(loaded.reference))  # its drift counting, column by column
    ds = config.dataset
    now = dt.datetime.now(dt.UTC)
    source = Location(config.source)
    unreadable: list[FileProblem] = []
    batches = _read_chunk(source, chunk, min(BATCH_ROWS, config.scoring.chunk_rows), unreadable)
    rejected: list[pa.Table] = []
    failed: dict[str, int] = {}
    unseen = dict.fromkeys(loaded.schema.vocabularies, 0)
    counts: dict[str, Counts] = {}
    rows_in = rows_bad = 0
    # Scores are written batch by batch (a row group each), not kept for the chunk's end.
    with staging.parquet_writer(
        "scores", f"{name}.parquet", plain=all_different(ds.id_columns)
    ) as scores_out:
        while True:
            t0 = time.perf_counter()
            files, table = next(batches, (None, None))
            t1 = time.perf_counter()
            timings["read"] += t1 - t0
            if table is None:
                break
            rows_in += table.num_rows
            if plan.id_types:  # the partition's files disagree on an id column's type
                table = with_id_types(table, plan, ds.id_columns)

            verdict = validate_chunk(table, config, loaded.profile, plan.duplicate_ids)
            for k, v in verdict.failed.items():
                failed[k] = failed.get(k, 0) + v
            bad = verdict.bad_mask(table.num_rows)
            n_bad = int(bad.sum())
            # The rows that passed, as a mask: the steps below take what they need of them
            # column by column, never a filtered copy of the whole batch.
            keep = None
            if n_bad:
                rows_bad += n_bad
                rejected.append(_quarantined(table, bad, verdict, files, now, run_id))
                keep = ~bad
            del verdict
            t2 = time.perf_counter()
            timings["validate"] += t2 - t1

            scores = predict(loaded, table, config.scoring.threads, config.scoring.engine, keep)
            t3 = time.perf_counter()
            timings["score"] += t3 - t2

            scores_out.write(scores_table(config, table, scores, model, now, run_id, keep))
            for col, vocab in loaded.schema.vocabularies.items():
                unseen_rows = unseen_mask(table.column(col), vocab)
                unseen[col] += int((unseen_rows if keep is None else unseen_rows & keep).sum())
            t4 = time.perf_counter()
            timings["write"] += t4 - t3
            # Drift counts from the rows already in memory: the data is read once. Counts are
            # integers per bin, so the batches' partial counts merge exactly.
            columns = FeatureColumns(table, ds.features, ds.categorical, keep)
            part = loaded.reference.count(columns, scores)
            counts = {f: merge(counts[f], c) if f in counts else c for f, c in part.items()}
            del table, columns, scores, part
            timings["drift"] += time.perf_counter() - t4

        if unreadable:
            raise UnreadableFile(*unreadable)
        t0 = time.perf_counter()  # the file is finished as the block ends
    if rejected:
        quarantine = _conform(_concat(rejected), plan.quarantine_schema, ds.id_columns)
        staging.write_parquet(quarantine, "quarantine", f"{name}.parquet")
    timings["write"] += time.perf_counter() - t0
    result = ChunkResult(
        chunk.partition,
        chunk.index,
        rows_in,
        rows_in - rows_bad,
        rows_bad,
        failed,
        {k: v for k, v in unseen.items() if v},
        timings,
        {k: v.to_dict() for k, v in counts.items()},
    )
    # Its fields are plain values already: no `asdict`, whose deep copy of the drift counts
    # (tens of thousands of sketch entries) cost a tenth of a second per chunk.
    staging.write_json(dict(vars(result)), "chunks", f"{name}.json", readable=False)
    return result


def _chunk_files(name: str, result: dict) -> list[tuple[str, str]]:
    """A finished chunk's staged files. A chunk is reused only while they are all there: a
    publishing interrupted after it moved the partition's quarantine into place took that
    chunk's rejected rows with it, and reusing its record alone would publish a
    quarantine without them."""
    files = [("scores", f"{name}.parquet")]
    if result["rows_quarantined"]:
        files.append(("quarantine", f"{name}.parquet"))
    return files


def _missing_staged(
    staging: Location, results: list[ChunkResult], folders: tuple[str, ...]
) -> list[str]:
    """The finished chunks' staged files (`_chunk_files`) in `folders` that are not there,
    as paths under `staging`: one listing."""
    staged = set(staging.files())
    return [
        f"{folder}/{name}"
        for r in results
        for folder, name in _chunk_files(f"part-{r.index:05d}", vars(r))
        if folder in folders and f"{folder}/{name}" not in staged
    ]


def prepare_worker(config: Config, model: ModelRef) -> None:
    """Load what every chunk needs once per process: the predictor (the compiled library,
    checked on its probe) and, with `[validation] engine = "great_expectations"`, GX (its
    import and context take seconds). Run in each worker while the partition is being
    planned, so the first chunks start warm."""
    warm_up_validation(config.validation.engine)
    get_predictor(model.load(), config.scoring.engine, config.scoring.threads)


def _open_for_batches(source: Location, file: str) -> pq.ParquetFile:
    """A Parquet file to read batch by batch. From a local disk, pages are read through a
    256 KiB buffer per column as they are decoded: pyarrow's default pre-buffering loads a
    whole row group's column chunks first, which doubled a worker's Arrow memory at the
    default row-group size (a 1,048,576-row group: 273 MiB peak against 161 MiB, and slower);
    a 1 MiB buffer held 15 MiB more than 256 KiB, for no speed. From an object store,
    pre-buffering stays: it turns many small reads into a few large ones."""
    handle = source.fs.open_input_file(source.path(file))
    if source.is_local:
        return pq.ParquetFile(handle, pre_buffer=False, buffer_size=1 << 18)
    return pq.ParquetFile(handle)


def _read_chunk(source: Location, chunk: Chunk, batch_rows: int, unreadable: list[FileProblem]):
    """The chunk's rows as `(files, table)` pairs, `files` naming the table's rows in order
    as `(file, rows)` runs. A piece whose data cannot be decoded is added to `unreadable`
    and the next piece read: the chunk's caller fails it naming every such file. A piece
    that holds other rows than the plan counted stops the chunk.

    Consecutive pieces' batches are joined up to `batch_rows` rows (the chunk's files share
    one schema, `partitions._chunks`): a 10,000-row file was a 10,000-row batch of its own,
    and every batch pays a call of each step (a validation rule, the compiled trees, a
    drift count per feature, a row group of the scores file) whatever its rows. 2,000,000
    rows in 200 files took 1.4 times the worker seconds of one file.
    """
    joined: list[pa.Table] = []
    files: list[tuple[str, int]] = []
    rows_joined = 0

    def take() -> tuple[tuple[tuple[str, int], ...], pa.Table]:
        """What is joined, as one table; nothing of it is kept here after."""
        nonlocal rows_joined
        out = tuple(files), joined[0] if len(joined) == 1 else pa.concat_tables(joined)
        joined.clear()
        files.clear()
        rows_joined = 0
        return out

    for piece in chunk.pieces:
        rows = 0
        # What is joined goes before the next batch is decoded, if that may not fit: a
        # piece's batches hold at most `batch_rows` rows, and at most the rows it has left.
        if joined and rows_joined + min(batch_rows, piece.rows) > batch_rows:
            yield take()
        try:
            for table in _read_piece(source, piece, batch_rows):
                rows += table.num_rows
                joined.append(table)
                files.append((piece.file, table.num_rows))
                rows_joined += table.num_rows
                del table  # not kept while the caller works and the next batch is decoded
                upcoming = min(batch_rows, max(piece.rows - rows, 0))  # at most, this piece's
                if rows_joined >= batch_rows or rows_joined + upcoming > batch_rows:
                    yield take()
        except UnreadableFile as exc:
            unreadable.extend(exc.problems)
            continue
        if rows != piece.rows:
            raise RuntimeError(
                f"{piece.file}: row groups {piece.row_groups} hold {rows} rows, the plan "
                f"counted {piece.rows}; the file changed while the partition was being scored"
            )
    if joined:
        yield take()


def _read_piece(
    source: Location, piece: Piece, batch_rows: int, delays: tuple[float, ...] = REREAD_DELAYS
):
    """The piece's rows, as `_batches` yields them, from a fresh handle on its file.

    pyarrow reports a corrupt page as an OSError, as it does a storage error: the piece is
    read again after each delay, and only an error that every re-read meets again, word for
    word, is the file's (`UnreadableFile`); a transient one differs or goes away, and is
    raised as it is, for the task's retries. ArrowInvalid is never the storage's.
    """
    try:
        yield from _batches(_open_for_batches(source, piece.file), piece, batch_rows)
    except FileNotFoundError:
        raise  # removed since it was planned: not a problem of its data
    except (pa.ArrowInvalid, OSError) as exc:
        if not isinstance(exc, pa.ArrowInvalid) and not _fails_again(
            source, piece, batch_rows, exc, delays
        ):
            raise
        size = source.fs.get_file_info(source.path(piece.file)).size
        raise UnreadableFile(FileProblem(piece.file, unreadable(size, exc))) from exc


def _fails_again(
    source: Location, piece: Piece, batch_rows: int, error: OSError, delays: tuple[float, ...]
) -> bool:
    """Whether every re-read of the piece fails with `error`'s type and message."""
    for delay in delays:
        time.sleep(delay)
        try:
            for _ in _batches(_open_for_batches(source, piece.file), piece, batch_rows):
                pass
        except (pa.ArrowInvalid, OSError) as again:
            if (type(again), str(again)) != (type(error), str(error)):
                return False
        else:
            return False
    return True


def _batches(parquet: pq.ParquetFile, piece: Piece, batch_rows: int):
    """The piece's rows as tables of at most `batch_rows` rows; at least one, maybe empty.

    A row range inside a row group (`piece.offset`) is reached by decoding the rows before
    it and dropping them: Parquet has no cheaper way to start mid-group here, and decoding
    costs a fraction of validating and scoring (`partitions._cut` bounds how often).
    """
    position, end = 0, piece.offset + piece.rows
    empty = True
    for batch in parquet.iter_batches(
        batch_size=batch_rows, row_groups=list(piece.row_groups), use_threads=True
    ):
        first, last = position, position + batch.num_rows
        position = last
        if last <= piece.offset:
            continue
        if first < piece.offset or last > end:
            batch = batch.slice(
                max(piece.offset - first, 0), min(last, end) - max(first, piece.offset)
            )
        if batch.num_rows:
            empty = False
            # Hand the batch over without keeping it: a generator's locals live until it
            # resumes, and this one resumes only after the next batch is decoded.
            held, batch = [batch], None
            yield pa.Table.from_batches([held.pop()])
        if position >= end:
            break
    if empty:
        yield parquet.schema_arrow.empty_table()


# What quarantine adds to each rejected row (`_quarantined`).
QUARANTINE_COLUMNS = ("reason", "source_file", "quarantined_at", "run_id")


def _quarantined(
    table: pa.Table,
    bad: np.ndarray,
    verdict: RowVerdict,
    files: tuple[tuple[str, int], ...],
    now: dt.datetime,
    run_id: str,
) -> pa.Table:
    """The rejected rows as they were read, with why, where from (`files`: the table's rows
    as `(file, rows)` runs), when and by which run.

    An input column named like one of those four is kept as `input_<name>`: two columns of
    one name made the quarantine file unreadable (`pq.read_table`: "Multiple matches")."""
    rows = np.flatnonzero(bad)
    n = len(rows)
    out = table.take(pa.array(rows))
    out = out.rename_columns(
        [f"input_{c}" if c in QUARANTINE_COLUMNS else c for c in out.column_names]
    )
    out = out.append_column("reason", verdict.reason_column(rows))
    if len(files) == 1:
        source = pa.repeat(pa.scalar(files[0][0], pa.string()), n)
    else:
        run = np.repeat(np.arange(len(files)), [count for _, count in files])[rows]
        source = pa.array(np.array([file for file, _ in files], dtype=object)[run], pa.string())
    out = out.append_column("source_file", source)
    at = pa.repeat(pa.scalar(now, pa.timestamp("us", tz="UTC")), n)
    out = out.append_column("quarantined_at", at)
    return out.append_column("run_id", pa.repeat(pa.scalar(run_id, pa.string()), n))


def _conform(table: pa.Table, schema: pa.Schema | None, id_columns: list[str]) -> pa.Table:
    """Rejected rows (`_quarantined`) in the partition's `quarantine_schema`, when its
    files' schemas differ, so that every chunk's quarantine file has the same. The id
    columns keep the type the partition's ids were given (`with_id_types`). A value that
    cannot be cast to its column's promoted type (an int64 beyond 2**53 as a double) is
    kept as its text (JSON for a nested value, `_as_text`); should anything still fail,
    the rows keep their own file's types, as before, and the chunk goes on."""
    if schema is None:
        return table
    try:
        return _conformed(table, schema, id_columns)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return table


def _conformed(table: pa.Table, schema: pa.Schema, id_columns: list[str]) -> pa.Table:
    names, columns = [], []
    for f in schema:
        name = f"input_{f.name}" if f.name in QUARANTINE_COLUMNS else f.name
        at = table.schema.get_field_index(name)
        if at < 0:
            column = pa.nulls(table.num_rows, f.type)
        elif f.name in id_columns or table.schema.field(at).type == f.type:
            column = table.column(at)
        else:
            try:
                column = table.column(at).cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                column = _as_text(table.column(at))
        names.append(name)
        columns.append(column)
    names += QUARANTINE_COLUMNS
    columns += [table.column(c) for c in QUARANTINE_COLUMNS]
    return pa.Table.from_arrays(columns, names=names)


def _as_text(column: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    """A column as text: Arrow's cast, or JSON for what Arrow cannot cast (lists, structs,
    maps: `[1, 2]`, `{"a": 1}`)."""
    try:
        return column.cast(pa.large_string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        values = column.to_pylist()
        text = [None if v is None else json.dumps(v, default=str) for v in values]
        return pa.array(text, pa.large_string())


def _concat(tables: list[pa.Table]) -> pa.Table:
    # One schema for every batch's table; an empty chunk still writes its (empty) file.
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def predict(
    model: LoadedModel,
    table: pa.Table,
    threads: int,
    engine: str = "auto",
    keep: np.ndarray | None = None,
) -> np.ndarray:
    """Scores (float64) of `table`'s rows, or of those where `keep` is true, in order, with
    the engine of `[scoring] engine`.

    Arrow columns go straight into C-ordered float64 matrices (no pandas), one block of
    `PREDICT_BLOCK_ROWS` rows at a time: the matrix never holds the whole chunk, and its
    memory is reused from block to block; rows not kept are dropped from each block's
    matrix, never scored. Rows are scored independently, so the blocks give the same bits
    as one matrix. The predictor (compiled or LightGBM) is built once per process and
    model, never per chunk.
    """
    out = np.empty(table.num_rows if keep is None else int(keep.sum()), dtype=np.float64)
    if len(out) == 0:
        return out
    predictor = get_predictor(model, engine, threads)
    schema = model.schema
    filled = 0
    for start in range(0, table.num_rows, PREDICT_BLOCK_ROWS):
        block = table.slice(start, PREDICT_BLOCK_ROWS)
        matrix = schema.to_matrix(block)
        if keep is not None:
            rows = keep[start : start + block.num_rows]
            if not rows.all():
                matrix = matrix[rows]
        if len(matrix):
            out[filled : filled + len(matrix)] = predictor.predict(matrix, may_overwrite=True)
            filled += len(matrix)
    return out


def all_different(id_columns: list[str]) -> tuple[str, ...]:
    """The scores file's columns whose values are all or nearly all different, written
    without a dictionary: the score, and the id when one column is the id (a partition's ids
    are unique). Each column of a composite id may repeat, and keeps its dictionary."""
    return ("score", *id_columns) if len(id_columns) == 1 else ("score",)


def scores_table(
    config: Config,
    rows: pa.Table,
    scores: np.ndarray,
    model: ModelRef,
    now: dt.datetime,
    run_id: str,
    keep: np.ndarray | None = None,
) -> pa.Table:
    """The scores file's rows: ids (of the rows `keep` names, or all), score, provenance."""
    n = len(scores)
    mask = None if keep is None else pa.array(keep)
    columns = {
        c: rows.column(c) if mask is None else pc.filter(rows.column(c), mask)
        for c in config.dataset.id_columns
    }
    columns["score"] = pa.array(scores, pa.float64())
    columns["model_version"] = pa.repeat(pa.scalar(model.version, pa.string()), n)
    columns["scored_at"] = pa.repeat(pa.scalar(now, pa.timestamp("us", tz="UTC")), n)
    columns["run_id"] = pa.repeat(pa.scalar(run_id, pa.string()), n)
    return pa.table(columns)


@dataclass(frozen=True)
class PartitionOutcome:
    partition: str
    status: str  # scored | empty | held
    rows_in: int
    rows_scored: int
    rows_quarantined: int
    seconds: float
    reasons: tuple[str, ...] = ()
    reused_chunks: int = 0
    drifted: tuple[str, ...] = ()  # features with any drifted method
    drift: tuple[dict, ...] = ()  # feature, method, statistic, threshold, drifted
    drift_report: str = ""  # the partition's static HTML drift report
    drift_warnings: tuple[str, ...] = ()  # e.g. a rolling reference shorter than asked

    @property
    def rows_per_second(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else 0.0


def publish_partition(
    config: Config,
    plan: PartitionPlan,
    model: ModelRef,
    results: list[ChunkResult],
    run_id: str,
    lease: dict | None = None,
) -> PartitionOutcome:
    """Check the accounting and the staged files, then make the partition's outputs visible
    in one rename each: quarantine, drift report, then scores with `_SUCCESS`, the mark of a
    complete partition. A marker (`publishing_marker`) stands from before the first rename
    to after the last, so that a publishing interrupted between them is done again by the
    next run. With `lease` (the run's on the partition), checked before each rename,
    nothing more is published once it was lost; and the scores are renamed into place only
    while every chunk's staged scores file is there (another run that took the lease over
    and published the partition moved them: `_SUCCESS` alone must never replace them)."""
    started = time.perf_counter()
    store = Location(config.store)
    staging = staging_location(config, plan, model)
    check_lease(lease)
    results = sorted(results, key=lambda r: r.index)
    scored = sum(r.rows_scored for r in results)
    quarantined = sum(r.rows_quarantined for r in results)
    read = sum(r.rows_in for r in results)
    if [r.index for r in results] != [c.index for c in plan.chunks]:
        raise AccountingError(
            f"partition {plan.partition}: chunk results "
            f"{[r.index for r in results]} do not match the plan's chunks"
        )
    if not (read == plan.rows_in == scored + quarantined):
        raise AccountingError(
            f"partition {plan.partition}: rows in {plan.rows_in} (footers), read {read}, "
            f"scored {scored} + quarantined {quarantined} = {scored + quarantined}; "
            "nothing was published"
        )
    missing = _missing_staged(staging, results, ("scores", "quarantine"))
    if missing:
        raise AccountingError(
            f"partition {plan.partition}: {len(missing)} staged file(s) of its finished chunks "
            f"are missing from {staging.uri} ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}); nothing was published"
        )
    failed: dict[str, int] = {}
    unseen: dict[str, int] = {}
    for r in results:
        for k, v in r.failed.items():
            failed[k] = failed.get(k, 0) + v
        for k, v in r.unseen.items():
            unseen[k] = unseen.get(k, 0) + v
    # Worker seconds spent on this partition's chunks (partitions are scored concurrently,
    # so wall time per partition would double-count).
    seconds = sum(sum(r.seconds.values()) for r in results)
    limit = config.validation.max_bad_row_fraction
    base = {
        "partition": plan.partition,
        "rows_in": plan.rows_in,
        "model_name": model.name,
        "model_version": model.version,
        "model_sha256": model.sha256,
        "run_id": run_id,
        "written_at": utc_now(),
        "files": list(plan.files),
        "file_sizes": dict(zip(plan.files, plan.file_sizes, strict=False)),
        "chunks": len(plan.chunks),
        "extra_columns": list(plan.extra_columns),
        "ignored_folders": list(plan.ignored_folders),
        "failed_expectations": failed,
        "unseen_categories": unseen,
        "seconds": round(seconds, 3),
        # Planning's seconds (footers, id columns, schemas, id uniqueness), and publishing's
        # (merging the drift counts, measuring drift, writing the report and quarantine,
        # moving them into place) up to this manifest: the work outside the chunks.
        "plan_seconds": plan.seconds,
        # Chunks finished by an earlier, interrupted attempt and reused, not recomputed.
        "reused_chunks": sum(r.reused for r in results),
    }
    if plan.rows_in and quarantined / plan.rows_in > limit:
        reason = (
            f"{quarantined} of {plan.rows_in} rows ({quarantined / plan.rows_in:.1%}) "
            f"failed validation, more than [validation] max_bad_row_fraction = {limit}"
        )
        staging.delete_dir("scores")
        check_lease(lease)
        kept = _earlier_output(store, plan.partition)
        staging.write_json(
            {
                **base,
                "status": "held",
                "reasons": [reason],
                "rows_scored": 0,
                # What the quarantine folder holds; the rows that passed are in neither
                # output (still in the source), counted apart so the three add up.
                "rows_quarantined": quarantined,
                "rows_held": plan.rows_in - quarantined,
                **({"earlier_output_kept": kept} if kept else {}),
            },
            "quarantine",
            HELD,
        )
        where = _publish_hold(store, staging.child("quarantine"), plan.partition, kept)
        _delete_staging(store, plan.partition)
        return PartitionOutcome(
            plan.partition,
            "held",
            plan.rows_in,
            0,
            quarantined,
            seconds,
            (reason, *_kept_note(kept, where)),
        )
    status = "scored" if plan.rows_in else "empty"
    check_lease(lease)
    marker = publishing_marker(plan.partition)
    store.write_json(
        {"run_id": run_id, "started_at": utc_now(), "staging": staging.uri, **this_process()},
        *marker,
    )
    if quarantined:
        staging.write_json(
            {**base, "status": status, "rows_quarantined": quarantined}, "quarantine", "_MANIFEST"
        )
        store.publish_dir(staging.child("quarantine"), "quarantine", f"dt={plan.partition}")
    else:
        store.delete_dir("quarantine", f"dt={plan.partition}")
    measured = measure_drift(config, plan, model, results, run_id)
    drift = measured.table
    # The report, its counts (a later rolling reference merges them) and its HTML page are
    # staged together, so they appear in one rename.
    staging.write_parquet(drift, DRIFT_DIR, REPORT_FILE)
    staging.write_bytes(
        counts_document(
            plan.partition, model.name, model.version, measured.reference_name, measured.counts
        ),
        DRIFT_DIR,
        COUNTS_FILE,
    )
    staging.write_bytes(measured.html(plan.partition).encode(), DRIFT_DIR, HTML_FILE)
    check_lease(lease)
    store.publish_dir(staging.child(DRIFT_DIR), DRIFT_DIR, f"dt={plan.partition}")
    drifted = sorted({r["feature"] for r in drift.to_pylist() if r["drifted"]})
    staging.makedirs("scores")
    staging.write_json(
        {
            **base,
            "status": status,
            "rows_scored": scored,
            "rows_quarantined": quarantined,
            "drifted_features": drifted,
            "publish_seconds": round(time.perf_counter() - started, 3),
        },
        "scores",
        SUCCESS,
    )
    check_lease(lease)
    gone = _missing_staged(staging, results, ("scores",))
    if gone:
        raise AccountingError(
            f"partition {plan.partition}: the staged scores of {len(gone)} chunk(s) are gone "
            f"from {staging.uri} ({', '.join(gone[:3])}{', ...' if len(gone) > 3 else ''}): "
            "another run published the partition meanwhile; its scores are not replaced"
        )
    store.publish_dir(staging.child("scores"), "scores", f"dt={plan.partition}")
    store.delete_file(*marker)
    _delete_staging(store, plan.partition, replaced=True)
    reused = sum(r.reused for r in results)
    rows = drift.select(["feature", "method", "statistic", "threshold", "drifted"]).to_pylist()
    return PartitionOutcome(
        plan.partition,
        status,
        plan.rows_in,
        scored,
        quarantined,
        seconds,
        reused_chunks=reused,
        drifted=tuple(drifted),
        drift=tuple(rows),
        drift_report=html_report_uri(store, plan.partition),
        drift_warnings=measured.warnings,
    )


def _delete_staging(store: Location, partition: str, replaced: bool = False) -> None:
    """Delete every staging folder of this partition once it is published or held: this
    attempt's, and what other attempts left, runs killed and never resumed under the same
    key (other files, model, validation settings, or cut into chunks for other workers) or
    killed while holding it (`held-D-...`). Only the run holding the partition's lease
    publishes it or holds it, so no live run is writing there.

    `replaced` (its new outputs are in place) also deletes the old outputs a killed
    publishing had moved aside (`scores-dt=D-trash-...`, `Location.publish_dir`), a whole
    copy each, never deleted otherwise. A hold keeps them: where the filesystem cannot
    exchange two folders in one step, a publishing killed between its two renames left the
    partition's earlier scores there alone. (Realised performance, published without that
    lease, is not touched.)"""
    kinds = ("scores", DRIFT_DIR, "quarantine") if replaced else ()
    own = (f"dt={partition}-", f"held-{partition}-", *(f"{k}-dt={partition}-" for k in kinds))
    for entry in store.list(STAGING):
        if entry.base_name.startswith(own):
            store.delete_dir(STAGING, entry.base_name)


@dataclass(frozen=True)
class DriftMeasurement:
    """A partition's drift: report rows, and what they were computed from."""

    table: pa.Table  # the drift report rows (drift.DRIFT_REPORT_SCHEMA)
    results: list[DriftResult]
    reference: ReferenceProfile  # the reference measured against (training or rolling)
    reference_name: str  # training:vNNNN or rolling:N
    counts: dict[str, Counts]  # the partition's merged counts, in the champion's bins
    model_version: str
    warnings: tuple[str, ...] = ()

    def html(self, partition: str) -> str:
        return render_report(
            self.results,
            self.reference,
            self.counts,
            partition=partition,
            reference_name=self.reference_name,
            model_version=self.model_version,
        )


def measure_drift(
    config: Config, plan: PartitionPlan, model: ModelRef, results: list[ChunkResult], run_id: str
) -> DriftMeasurement:
    """Merge the chunks' partial counts and measure them against `[drift] reference`.

    `training`: the champion's stored profile. `rolling:N`: the same bins with the merged
    stored counts of the N newest earlier partitions scored by the same version (fewer, or
    the training profile when there are none, with a warning in the report's `reason`).
    """
    profile = model.load().reference
    features = list(profile)
    counts = {
        f: merge_all(counts_from_dict(r.drift_counts[f]) for r in results if f in r.drift_counts)
        for f in features
        if any(f in r.drift_counts for r in results)
    }
    window = config.drift.rolling_window
    if window is None:
        reference = ReferenceWindow(profile, f"training:{model.version}")
    else:
        reference = rolling_reference(
            Location(config.store), plan.partition, profile, model.version, window
        )
    thresholds = {
        (f, m): config.drift.threshold(f, m) for f in features for m in _methods(f, profile)
    }
    measured = evaluate(reference.profile, counts, thresholds)
    if reference.warning:
        measured = [
            replace(r, reason=f"{r.reason}; {reference.warning}" if r.reason else reference.warning)
            for r in measured
        ]
    table = results_to_table(
        measured,
        dt.date.fromisoformat(plan.partition),
        reference.name,
        model.version,
        run_id,
        dt.datetime.now(dt.UTC),
    )
    warnings = (reference.warning,) if reference.warning else ()
    return DriftMeasurement(
        table, measured, reference.profile, reference.name, counts, model.version, warnings
    )


def _methods(feature: str, reference) -> tuple[str, ...]:
    if feature == SCORE_FEATURE or reference[feature].kind == "numeric":
        return ("ks", "psi")
    return ("psi", "chi2")


def file_reasons(problems: tuple[FileProblem, ...], named: int = 3) -> tuple[str, ...]:
    """Each reason once, after the files it holds (the first `named`, then how many more):
    a partition whose 200 files all lack a column said the same reason 200 times, in the
    hold's message, the run's and `_HELD`'s `reasons` (whose `files` names every one)."""
    files: dict[str, list[str]] = {}
    for p in problems:
        files.setdefault(p.reason, []).append(p.file)
    return tuple(
        f"{', '.join(fs[:named])}{f' and {len(fs) - named} more files' if len(fs) > named else ''}"
        f": {reason}"
        for reason, fs in files.items()
    )


def hold_partition(
    config: Config, plan: PartitionPlan, model: ModelRef, run_id: str, lease: dict | None = None
) -> PartitionOutcome:
    """File-level problems: nothing of the partition is scored; the files and reasons are
    listed in `<store>/quarantine/dt=D/_HELD`, which replaces that folder whole (with
    `lease`, the run's on the partition: not once it was lost)."""
    reasons = file_reasons(plan.problems)
    store = Location(config.store)
    staging = store.child("_staging", f"held-{plan.partition}-{uuid.uuid4().hex[:8]}")
    kept = _earlier_output(store, plan.partition)
    staging.write_json(
        {
            "partition": plan.partition,
            "status": "held",
            "reasons": list(reasons),
            "files": [{"file": p.file, "reason": p.reason} for p in plan.problems],
            "partition_plan": plan_to_json(plan),
            "model_version": model.version,
            "run_id": run_id,
            "written_at": utc_now(),
            **({"earlier_output_kept": kept} if kept else {}),
        },
        HELD,
    )
    check_lease(lease)
    where = _publish_hold(store, staging, plan.partition, kept)
    # Nothing staged for the partition is published: chunks scored before another chunk
    # met an undecodable file, or what an earlier attempt left.
    _delete_staging(store, plan.partition)
    return PartitionOutcome(
        plan.partition, "held", plan.rows_in, 0, 0, 0.0, (*reasons, *_kept_note(kept, where))
    )


def _earlier_output(store: Location, partition: str) -> dict | None:
    """The partition's complete output from an earlier run (its scores' `_SUCCESS`), in
    brief; None when it has none.

    One whose `_SUCCESS` cannot be read is kept too, as it is: its scores are there, and
    a hold replacing its quarantine folder would delete rows they may account for."""
    keys = ("run_id", "model_version", "written_at", "status")
    try:
        done = store.read_json_or_none("scores", f"dt={partition}", SUCCESS, shape=SUCCESS_SHAPE)
    except UnreadableJSON as exc:
        return {**dict.fromkeys(keys), "unreadable": str(exc)}
    if done is None:
        return None
    return {k: done.get(k) for k in keys}


def _publish_hold(store: Location, hold: Location, partition: str, kept: dict | None) -> str:
    """Publish a held partition's folder (its `_HELD`, and the rejected rows when it was
    held for too many), and say where it went.

    Without an earlier output: as the partition's quarantine folder, replacing an earlier
    hold. With one (a `--rescore`, or a run of a new champion, held): in `_held/` inside
    that quarantine folder, so that the earlier output stays whole and consistent (its
    scores, drift report and rejected rows: a hold replacing the folder deleted rows its
    `_SUCCESS` still counted, whose source may be gone); `partitions.pending` then tries the
    partition again, and scoring it replaces the lot. Data readers skip `_held/`, as every
    `_` name."""
    if kept is None:
        store.publish_dir(hold, "quarantine", f"dt={partition}")
        return f"quarantine/dt={partition}/{HELD}"
    store.publish_dir(hold, "quarantine", f"dt={partition}", HELD_BESIDE)
    return f"quarantine/dt={partition}/{HELD_BESIDE}/{HELD}"


def _kept_note(kept: dict | None, where: str) -> tuple[str, ...]:
    if kept is None:
        return ()
    if kept.get("unreadable"):
        earlier = f"the earlier output, whose manifest is unreadable ({kept['unreadable']}),"
    else:
        earlier = (
            f"the output of run {kept['run_id']} ({kept['model_version']}, {kept['written_at']})"
        )
    return (
        f"{earlier} is kept as it was; this hold is in {where}, and the next run tries the "
        "partition again",
    )
