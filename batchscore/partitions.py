"""Partitions: which `dt=YYYY-MM-DD` folders exist, which are pending, and how each is chunked.

A chunk is a `(partition, [(file, row-group range), ...])` key (one file's rows, or several
small files'): small enough to pass to a worker process, which reads the rows itself, in
record batches of at most `[scoring] chunk_rows` rows (a row group larger than that is
never held whole). Nothing here reads feature values;
the plan reads the Parquet footers and the id columns only (for the partition-wide duplicate
check: one integer id column in one sorted int64 array, other ids with Arrow's hash grouping;
a few hundred milliseconds for millions of ids, where Great Expectations' uniqueness check
on a pandas copy took seconds plus its import).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from batchscore import manifest_cache
from batchscore.config import Config
from batchscore.registry import ModelRef
from batchscore.storage import (
    HOLDER_SHAPE,
    Location,
    Maybe,
    Shape,
    UnreadableJSON,
    holder_alive,
    is_data_file,
    parse_partition_dir,
)
from batchscore.validation import (
    FileProblem,
    check_category_kinds,
    check_schema,
    find_duplicate_ids,
    find_duplicate_int_ids,
)

SUCCESS = "_SUCCESS"
# What the readers of a partition's scores `_SUCCESS` need of it (`storage.check_shape`):
# which model and run made it, and the files it was made from (`source_changes`). The
# others are compared where present: without a model name or files, a partition counts as
# another model's or as changed, and is scored again; without sizes (recorded since
# 3e46a3f), its files are compared by name.
SUCCESS_SHAPE: Shape = {
    "run_id": str,
    "model_version": str,
    "model_name": Maybe(str),
    "files": Maybe([str]),
    "file_sizes": Maybe({str: int}),
}
HELD = "_HELD"
# Where a partition's hold goes when it has a complete earlier output (a `--rescore` held):
# `quarantine/dt=D/_held/`, beside that output's quarantine files, which stay as they are.
HELD_BESIDE = "_held"
# A partition whose outputs are being replaced: `_staging/publishing-dt=D.json`, written
# before its quarantine and drift report are moved into place and deleted once its scores
# (with `_SUCCESS`) are. One left behind marks a publish that was interrupted between them.
PUBLISHING = "publishing-"


def publishing_marker(partition: str) -> tuple[str, str]:
    return "_staging", f"{PUBLISHING}dt={partition}.json"


@dataclass(frozen=True)
class Piece:
    """Rows of one file: whole row groups, or a row range inside one row group."""

    file: str  # path relative to the source root
    row_groups: tuple[int, ...]
    rows: int
    # Rows of the first row group before this piece's: a row group larger than chunk_rows
    # is cut into row ranges, so that its rows spread over the workers (see `_cut`).
    offset: int = 0

    def as_list(self) -> list:
        return [self.file, self.row_groups, self.rows, self.offset]


@dataclass(frozen=True)
class Chunk:
    """The rows one task scores: one piece of a file, or the pieces of several small files
    written alike (`_chunks`)."""

    partition: str
    index: int
    pieces: tuple[Piece, ...]

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.pieces)


@dataclass(frozen=True)
class PartitionPlan:
    partition: str
    files: tuple[str, ...]
    rows_in: int
    chunks: tuple[Chunk, ...]
    # Ids held more than once (`validation.IntIds` for one integer id column).
    duplicate_ids: AbstractSet = frozenset()
    duplicate_rows: int = 0
    extra_columns: tuple[str, ...] = ()
    problems: tuple[FileProblem, ...] = ()
    fingerprint: str = ""
    # Per id column, the type its files' ids are written with when the files disagree
    # (`ID_TYPES` names; "" keeps the file's own), so a partition's outputs read as one table.
    id_types: tuple[str, ...] = ()
    # Folders inside the partition's folder: never read (only the files directly in
    # `dt=D/` are), but pyarrow.dataset would read them, so they are reported.
    ignored_folders: tuple[str, ...] = ()
    # Seconds spent planning: reading the footers and id columns, checking the schemas and
    # the ids' uniqueness (reported in `_SUCCESS` as `plan_seconds`).
    seconds: float = 0.0
    # Each of `files`' size in bytes, as listed when planning (`_SUCCESS` `file_sizes`: how
    # a later run sees that the partition's source changed, `source_changes`).
    file_sizes: tuple[int, ...] = ()
    # The partition's rejected rows' schema when its files' schemas differ
    # (`quarantine_schema`); None when they agree.
    quarantine_schema: pa.Schema | None = None

    @property
    def held(self) -> bool:
        return bool(self.problems)


@dataclass
class Discovery:
    partitions: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # folder names that are not dt=YYYY-MM-DD
    # Each partition's data files as listed (`Location.data_files` of its folder), for
    # `pending` to compare with its `_SUCCESS` without listing each folder again.
    files: dict[str, list[pafs.FileInfo]] = field(default_factory=dict)


class SourceError(ValueError):
    """A `[storage]` setting the user fixes: a source with no `incoming/` folder, or a store
    holding another model's outputs."""


def discover(config: Config) -> Discovery:
    """Every partition folder under `<source>/incoming/`, oldest first.

    A local source without an `incoming/` folder is an error, not "nothing to score": a
    mistyped path said every partition was scored. (On an object store a prefix with no
    objects does not exist either, and means no data yet.)"""
    found = Discovery()
    source = Location(config.source)
    if source.is_local and not source.exists("incoming"):
        raise SourceError(
            f"no incoming/ folder under {source.uri} ([storage] source in {config.path}): "
            "partitions are read from <source>/incoming/dt=YYYY-MM-DD/"
        )
    top, inside = listed_partitions(source, "incoming")
    for entry in top:
        day = parse_partition_dir(entry.base_name)
        if day is None or entry.type.name != "Directory":
            found.ignored.append(entry.base_name)
        else:
            found.partitions.append(day.isoformat())
            found.files[day.isoformat()] = inside.get(day.isoformat(), [])
    found.partitions.sort()
    return found


def listed_partitions(
    location: Location, folder: str
) -> tuple[list[pafs.FileInfo], dict[str, list[pafs.FileInfo]]]:
    """The entries directly under `folder`, sorted by name, and the data files directly in
    each of its `dt=YYYY-MM-DD` folders (`Location.data_files`), from one recursive listing.

    On an object store that listing is one LIST request per 1,000 objects, where a listing
    of each partition's folder cost two requests or more per partition on every run (a
    store of 1,000 days: 2,000 round trips to find that nothing was new). Empty when
    `folder` does not exist."""
    base = location.path(folder).rstrip("/")
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    top: list[pafs.FileInfo] = []
    inside: dict[str, list[pafs.FileInfo]] = {}
    for entry in location.fs.get_file_info(selector):
        parent, _, _ = entry.path.rpartition("/")
        if parent == base:
            top.append(entry)
            continue
        up, _, name = parent.rpartition("/")
        day = parse_partition_dir(name) if up == base else None
        if day is not None and is_data_file(entry):
            inside.setdefault(day.isoformat(), []).append(entry)
    for entries in inside.values():
        entries.sort(key=lambda e: e.base_name)
    return sorted(top, key=lambda e: e.base_name), inside


def pending(
    config: Config,
    model: ModelRef,
    partitions: list[str],
    rescore: bool,
    changed: dict[str, str] | None = None,
    interrupted: dict[str, str] | None = None,
    unreadable: dict[str, str] | None = None,
    listed: dict[str, list[pafs.FileInfo]] | None = None,
) -> list[str]:
    """Partitions with no complete output from the current champion, whose last attempt was
    held after one (`held_beside_output`), whose publishing was interrupted
    (`interrupted_publishing`, put in `interrupted` when given), or whose files changed
    since their output (`source_changes`, put in `changed`); all of them on rescore.
    `listed`: the partitions' data files as `discover` listed them (`Discovery.files`);
    without it, each partition's folder is listed here.

    A partition whose `_SUCCESS` cannot be read counts as not scored (why, in `unreadable`
    when given): its output cannot be vouched for, and scoring it again replaces it, where
    failing the run for it stopped every other partition.

    A `_SUCCESS` written for another model stops the run (`SourceError`), rescore or not:
    a store holds one model's outputs, and scoring the partition replaced them.

    What a run costs does not grow with the partitions already scored: the held markers and
    the source's files come from one listing each, and on S3 only the `_SUCCESS` files new
    or changed since the last run are read (`read_manifests`); locally each is read."""
    out = []
    stopped = {} if rescore else interrupted_publishing(config)
    held = set() if rescore else held_beside_outputs(config, partitions)
    manifests = read_manifests(config, partitions)
    for p in partitions:
        done = manifests[p]
        if isinstance(done, UnreadableJSON):
            out.append(p)
            if unreadable is not None:
                unreadable[p] = str(done)
            continue
        if done is not None and done.get("model_name") not in (None, model.name):
            raise SourceError(another_models_output(config, p, done["model_name"], model.name))
        if rescore:
            out.append(p)
        elif p in stopped:
            out.append(p)
            if interrupted is not None:
                interrupted[p] = stopped[p]
        elif (
            done is None
            or done.get("model_version") != model.version
            or done.get("model_name") != model.name
            or p in held
        ):
            out.append(p)
        elif change := source_changes(config, p, done, None if listed is None else listed.get(p)):
            out.append(p)
            if changed is not None:
                changed[p] = change
    return out


def another_models_output(config: Config, partition: str, theirs: str, ours: str) -> str:
    """Why a store whose partition was scored by another model is refused. Two configs with
    one `[storage] store` each took the other's partitions for pending ("scored by another
    model"), and every run replaced the other model's scores, drift and quarantine."""
    return (
        f"{Location(config.store).path('scores', f'dt={partition}', SUCCESS)} was written "
        f"for model {theirs!r}, and {config.path} scores model {ours!r}: a store holds one "
        "model's scores, drift and quarantine, and scoring it would replace those "
        f"of {theirs!r}. Give {ours!r} a store of its own ([storage] store in {config.path})"
    )


def read_manifests(
    config: Config, partitions: list[str]
) -> dict[str, dict | None | UnreadableJSON]:
    """Each partition's `_SUCCESS` (the keys of `SUCCESS_SHAPE`), None when it has none, or
    the `UnreadableJSON` it raised; several at a time on an object store, and on S3 only
    those new or changed since a run last read them (`manifest_cache`). A storage error
    other than a missing file is raised, as one read's was."""
    wanted = {"scores": (partitions, SUCCESS_SHAPE)}
    return manifest_cache.read_manifests(Location(config.store), SUCCESS, wanted)["scores"]


def source_changes(
    config: Config, partition: str, done: dict, now: list[pafs.FileInfo] | None = None
) -> str:
    """What changed among the partition's data files since `done`, its `_SUCCESS`, was
    written: files added, removed, or of another size; "" when none did.

    A file that arrives late in a partition already scored was never scored: it was left
    out for good, silently, as the partition counted as done. A file rewritten with exactly
    its old size is not seen (`--rescore` it); modification times are not compared, as a
    copy of the source that does not keep them would make every partition look changed.
    A manifest written before sizes were recorded has file names only: compared by name.
    `now`: the partition's data files as listed by the caller; without it, its folder is
    listed here."""
    folder = f"incoming/dt={partition}"
    if now is None:
        now = Location(config.source).data_files(folder)
    sizes_now = {f"{folder}/{e.base_name}": e.size for e in now}
    sizes = done.get("file_sizes") or {}
    before = {f: sizes.get(f) for f in done.get("files") or []}
    added = sorted(sizes_now.keys() - before.keys())
    removed = sorted(before.keys() - sizes_now.keys())
    resized = sorted(
        f
        for f in sizes_now.keys() & before.keys()
        if before[f] is not None and before[f] != sizes_now[f]
    )
    changes = []
    if added:
        changes.append(f"added {', '.join(added)}")
    if removed:
        changes.append(f"removed {', '.join(removed)}")
    changes += [f"{f} is {sizes_now[f]:,} bytes, was {before[f]:,}" for f in resized]
    return "; ".join(changes)


def interrupted_publishing(config: Config) -> dict[str, str]:
    """The partitions whose last publishing stopped part way, each with its marker
    (`publishing_marker`, left behind): its quarantine and drift report may be the newer
    attempt's while its scores and `_SUCCESS` are still the earlier output's. Publishing
    the partition again makes them one run's. One listing of `_staging/`; a marker whose
    run is publishing now (a live process of this machine) is not one left behind."""
    staging = Location(config.store).child("_staging")
    found = {}
    for entry in staging.list():
        name = entry.base_name
        day = parse_partition_dir(name.removeprefix(PUBLISHING).removesuffix(".json"))
        if not name.startswith(PUBLISHING) or day is None:
            continue
        try:
            marker = staging.read_json_or_none(name, shape=HOLDER_SHAPE) or {}
        except UnreadableJSON:
            marker = {}
        if holder_alive(marker) is not True:
            found[day.isoformat()] = staging.path(name)
    return found


def held_beside_outputs(config: Config, partitions: list[str]) -> set[str]:
    """Those of `partitions` that are `held_beside_output`: for a few, asked of each; for
    more, found in one recursive listing of `quarantine/` (one LIST request per 1,000
    objects on an object store, where asking each was a HEAD request or more per
    partition on every run, however long ago it was scored)."""
    if len(partitions) <= HELD_ASKED_ONE_BY_ONE:
        return {p for p in partitions if held_beside_output(config, p)}
    store = Location(config.store)
    base = store.path("quarantine").rstrip("/")
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    held = set()
    for entry in store.fs.get_file_info(selector):
        folder, _, name = entry.path.removeprefix(f"{base}/").partition(f"/{HELD_BESIDE}/")
        day = parse_partition_dir(folder)
        if name == HELD and day is not None and entry.type == pafs.FileType.File:
            held.add(day.isoformat())
    return held & set(partitions)


# Up to this many partitions, `held_beside_outputs` asks about each (a run of one partition,
# or a lease's check) rather than list the whole quarantine.
HELD_ASKED_ONE_BY_ONE = 4


def held_beside_output(config: Config, partition: str) -> bool:
    """Whether the partition's last attempt was held while an earlier complete output stayed
    in place (`quarantine/dt=D/_held/_HELD`): its source changed since that output, so it is
    tried again, as a partition held without one is. Scoring it replaces the hold."""
    return Location(config.store).exists("quarantine", f"dt={partition}", HELD_BESIDE, HELD)


def rows_at_most(config: Config, partitions: list[str], limit: int) -> bool:
    """Whether the partitions hold at most `limit` rows in all, from the Parquet footers.

    Stops reading footers as soon as the limit is passed, so asking about a large backlog
    costs a few footer reads. An unreadable file counts as no rows (planning holds it).
    """
    source = Location(config.source)
    total = 0
    for partition in partitions:
        dt.date.fromisoformat(partition)
        for entry in source.data_files(f"incoming/dt={partition}"):
            try:
                total += pq.read_metadata(source.fs.open_input_file(entry.path)).num_rows
            except (pa.ArrowInvalid, OSError):
                continue
            if total > limit:
                return False
    return True


def plan_partition(config: Config, partition: str, model: ModelRef) -> PartitionPlan:
    """Read the footers and id columns of one partition and cut it into chunks."""
    started = time.perf_counter()
    dt.date.fromisoformat(partition)  # never build a path from an unchecked name
    source = Location(config.source)
    folder = f"incoming/dt={partition}"
    problems: list[FileProblem] = []
    extra: set[str] = set()
    pieces: list[tuple[Piece, bool, pa.Schema]] = []
    files: list[str] = []
    sizes: list[int] = []
    readable: list[tuple[str, pq.ParquetFile]] = []
    described: list[dict] = []
    rows_in = 0
    entries = source.list(folder)  # once: a LIST request on an object store
    # '.' and '_' folders are skipped as such files are (pyarrow.dataset too).
    ignored = [
        f"{folder}/{e.base_name}"
        for e in entries
        if e.type.name == "Directory" and not e.base_name.startswith((".", "_"))
    ]
    for entry in filter(is_data_file, entries):
        rel = f"{folder}/{entry.base_name}"
        files.append(rel)
        sizes.append(entry.size)
        try:
            parquet = _with_retries(
                lambda rel=rel: pq.ParquetFile(source.fs.open_input_file(source.path(rel)))
            )
            schema = parquet.schema_arrow
        except (pa.ArrowInvalid, OSError) as exc:
            problems.append(FileProblem(rel, unreadable(entry.size, exc)))
            continue
        file_problems, file_extra = check_schema(schema, rel, config)
        file_problems += check_category_kinds(
            schema,
            rel,
            config.dataset.categorical,
            lambda: model.load().schema.vocabularies,
            f"{model.name} {model.version}",
        )
        problems.extend(file_problems)
        extra.update(file_extra)
        if file_problems:
            # Held, but its footer says how many rows it holds: a held partition's rows are
            # all the rows its readable files hold, not those of the files without a problem
            # (the run's table showed 3,231 rows for a 4,188-row partition).
            rows_in += parquet.metadata.num_rows
            continue
        meta = parquet.metadata
        # The modification time too: chunks staged from a file rewritten since (same name,
        # size and rows, other values) must not be reused.
        described.append(
            {"file": rel, "size": entry.size, "rows": meta.num_rows, "mtime": entry.mtime_ns}
        )
        rows_in += meta.num_rows
        cut = _cut(rel, meta, config.scoring.chunk_rows, config.scoring.worker_count)
        pieces.extend((piece, alone, schema) for piece, alone in cut)
        readable.append((rel, parquet))
    chunks = _chunks(partition, pieces, config.scoring.chunk_rows)
    duplicates, duplicate_rows, id_types = _duplicate_ids(
        readable, config.dataset.id_columns, problems
    )
    fingerprint = hashlib.sha256(
        json.dumps(
            {
                "files": described,
                "chunk_rows": config.scoring.chunk_rows,
                # The cut itself: it also depends on the worker count (a large row group is
                # split into one range per worker), so a run resumed with other workers or
                # on a machine with other cores must not reuse chunks staged for this one.
                # (One piece as before this could group files: their chunks still match.)
                "chunks": [
                    c.pieces[0].as_list() if len(c.pieces) == 1 else [p.as_list() for p in c.pieces]
                    for c in chunks
                ],
                "model": model.sha256,
                "validation": config.validation.model_dump(),
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]
    return PartitionPlan(
        partition,
        tuple(files),
        rows_in,
        tuple(chunks),
        duplicates,
        duplicate_rows,
        tuple(sorted(extra)),
        tuple(problems),
        fingerprint,
        id_types,
        tuple(ignored),
        round(time.perf_counter() - started, 3),
        tuple(sizes),
        quarantine_schema([parquet.schema_arrow for _, parquet in readable]),
    )


def quarantine_schema(schemas: list[pa.Schema]) -> pa.Schema | None:
    """One schema for a partition's rejected rows, when its files' schemas differ: each
    column with the type its files' types promote to (int64 and double: double; a
    dictionary as its values), or as text where they promote to none (int64 and string),
    null where a file lacks it. Rejected rows are kept whole, as read: with each file's own
    types, the partition's quarantine folder could not be read as one table ("Float value
    10000.5 was truncated converting to int64"). None when the files agree."""
    if all(s.remove_metadata().equals(schemas[0].remove_metadata()) for s in schemas[1:]):
        return None
    types: dict[str, list[pa.DataType]] = {}
    for schema in schemas:
        for f in schema:
            t = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
            types.setdefault(f.name, []).append(t)
    fields = []
    for name, seen in types.items():
        try:
            one = pa.unify_schemas(
                [pa.schema([(name, t)]) for t in seen], promote_options="permissive"
            ).field(name)
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            one = pa.field(name, pa.large_string())
        fields.append(one)
    return pa.schema(fields)


def unreadable(size: int, exc: Exception) -> str:
    """Why a file holds its partition: its footer (planning) or its data (a chunk) cannot
    be decoded."""
    return f"not a readable Parquet file ({size:,} bytes): {exc}"


# Integer id types whose every value an int64 holds exactly; and Arrow's null type, a file
# whose ids are all null (nulls are left out of the check anyway).
_INT64_SAFE = (
    pa.int8(),
    pa.int16(),
    pa.int32(),
    pa.int64(),
    pa.uint8(),
    pa.uint16(),
    pa.uint32(),
    pa.null(),
)


def _duplicate_ids(
    readable: list[tuple[str, pq.ParquetFile]], id_columns: list[str], problems: list[FileProblem]
) -> tuple[AbstractSet, int, tuple[str, ...]]:
    """Read the id columns of every readable file and find the ids held more than once;
    with the type each id column is written with, if the files' types differ (`id_types`).

    One integer id column (the common case) is read batch by batch into one int64 array,
    sorted in place: 8 bytes a row, where a hash grouping of a table of ids took over 1 GiB
    for 10 million rows. Other ids (strings, composite) are grouped with Arrow.
    """
    fast = len(id_columns) == 1 and all(
        parquet.schema_arrow.field(id_columns[0]).type in _INT64_SAFE for _, parquet in readable
    )
    values = np.empty(sum(p.metadata.num_rows for _, p in readable) if fast else 0, np.int64)
    filled = 0
    tables: list[pa.Table] = []
    for rel, parquet in readable:
        try:
            if fast:
                for batch in parquet.iter_batches(batch_size=1 << 20, columns=id_columns):
                    column = pc.drop_null(batch.column(0))
                    values[filled : filled + len(column)] = column.to_numpy(zero_copy_only=False)
                    filled += len(column)
            else:
                tables.append(parquet.read(columns=id_columns))
        except (pa.ArrowInvalid, OSError) as exc:
            problems.append(FileProblem(rel, f"cannot read the id columns: {exc}"))
    if problems or not readable:
        return frozenset(), 0, ()
    if fast:
        types = {parquet.schema_arrow.field(id_columns[0]).type for _, parquet in readable}
        return *find_duplicate_int_ids(values[:filled]), ("int64",) if len(types) > 1 else ()
    named = list(zip((rel for rel, _ in readable), tables, strict=True))
    unified = _unified_ids(named, id_columns, problems)
    if unified is None:
        return frozenset(), 0, ()
    ids, id_types = unified
    return *find_duplicate_ids(ids, id_columns), id_types


def _unified_ids(
    tables: list[tuple[str, pa.Table]], id_columns: list[str], problems: list[FileProblem]
) -> tuple[pa.Table, tuple[str, ...]] | None:
    """The files' id columns as one table, each column cast to one type holding every file's
    values, so that an id repeated across files is found whatever its encoding in each file
    (Arrow's permissive concatenation raised on dictionary beside plain strings, and on
    integer beside string ids). None when the files' ids cannot be compared: the reasons,
    which hold the partition like a schema problem, are in `problems`. With the table, the
    `PartitionPlan.id_types` the outputs are written with."""
    types = [_common_id_type(tables, column, problems) for column in id_columns]
    if problems:
        return None
    ids = pa.concat_tables(
        [
            pa.table(
                [table.column(c).cast(t) for c, t in zip(id_columns, types, strict=True)],
                names=id_columns,
            )
            for _, table in tables
        ]
    )
    same = all(len({table.schema.field(c).type for _, table in tables}) == 1 for c in id_columns)
    return ids, () if same else tuple(str(t) for t in types)


# The type that holds every value of one kind of id, whatever each file's encoding:
# dictionary, string, large_string and string_view ids are the same strings.
_COMMON = {"string": pa.large_string(), "date": pa.date64()}
# `PartitionPlan.id_types` names: the types `_common_id_type` can choose.
ID_TYPES = {str(t): t for t in (pa.int64(), pa.uint64(), pa.large_string(), pa.date64())}


def with_id_types(table: pa.Table, plan: PartitionPlan, id_columns: list[str]) -> pa.Table:
    """`table` with its id columns cast to the partition's `id_types` (if its files'
    differ): every chunk's scores and quarantine files then share one schema, and the
    partition's folder reads as one table (int32 and int64 files, or one whose ids are all
    null, wrote parts a reader could not combine)."""
    for column, name in zip(id_columns, plan.id_types, strict=False):
        target = ID_TYPES.get(name)
        at = table.schema.get_field_index(column)
        if target is not None and at >= 0 and table.schema.field(at).type != target:
            table = table.set_column(at, column, table.column(at).cast(target))
    return table


def _common_id_type(
    tables: list[tuple[str, pa.Table]], column: str, problems: list[FileProblem]
) -> pa.DataType:
    """One id column's type across the files. Ids of different kinds (integers in one file,
    strings in another) never compare equal, so ids repeated across the files cannot be
    found: each file is named with its type in `problems`."""
    types = {rel: table.schema.field(column).type for rel, table in tables}
    kinds = {rel: _id_kind(t) for rel, t in types.items()}
    first: dict[str, str] = {}  # a file of each kind, named beside the files of the others
    for rel, kind in kinds.items():
        if kind is not None:
            first.setdefault(kind, rel)
    if len(first) > 1:
        for rel, kind in kinds.items():
            if kind is None:
                continue
            other = next(r for k, r in first.items() if k != kind)
            problems.append(
                FileProblem(
                    rel,
                    f"id column {column!r} has type {types[rel]}, but {other} has "
                    f"{types[other]}: {' and '.join(sorted({kind, kinds[other]}))} ids never "
                    "compare equal, so ids repeated across the files cannot be found",
                )
            )
        return pa.null()
    if len(set(types.values())) == 1:
        return next(iter(types.values()))
    if "integer" in first:
        return _common_integer(tables, column, problems)
    return _COMMON[next(iter(first))]


def _id_kind(t: pa.DataType) -> str | None:
    """What an id type's values are, whatever their encoding: integer, string or date; None
    for Arrow's null type (a column of nulls only, which any type holds)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_date(t):
        return "date"
    return None if pa.types.is_null(t) else "string"  # check_schema allows nothing else


_INT64_MAX = 2**63 - 1


def _common_integer(
    tables: list[tuple[str, pa.Table]], column: str, problems: list[FileProblem]
) -> pa.DataType:
    """int64 when every file's ids fit it (those of any integer type but uint64 do), else
    uint64 when none is negative. Else no 64-bit type holds them all: the files beyond
    either side are named in `problems`."""
    high, low = {}, {}
    for rel, table in tables:
        t = table.schema.field(column).type
        values = table.column(column)
        if pa.types.is_dictionary(t):
            values = values.cast(t.value_type)
        extremes = pc.min_max(values)
        if values.type == pa.uint64() and (extremes["max"].as_py() or 0) > _INT64_MAX:
            high[rel] = f"type {t} and values up to {extremes['max'].as_py()}"
        elif (extremes["min"].as_py() or 0) < 0:
            low[rel] = f"type {t} and values down to {extremes['min'].as_py()}"
    if not high:
        return pa.int64()
    if not low:
        return pa.uint64()
    for files, others in ((high, low), (low, high)):
        other = next(iter(others))
        for rel, described in files.items():
            problems.append(
                FileProblem(
                    rel,
                    f"id column {column!r} has {described}, but {other} has {others[other]}: "
                    "no 64-bit integer type holds both, so ids repeated across the files "
                    "cannot be found",
                )
            )
    return pa.null()


# Seconds before each re-read of a file that failed with an OSError, which pyarrow raises
# for a storage error and for a corrupt file alike: footers here, chunks' data in
# `scoring._read_piece`. One policy, so a file counts as unreadable after the same waits.
REREAD_DELAYS = (0.5, 2.0)


def _with_retries(read, delays: tuple[float, ...] = REREAD_DELAYS):
    """Read, retrying storage errors with backoff: a transient error must not hold a
    partition, but a corrupt file (which pyarrow also reports as OSError) fails every try."""
    for delay in delays:
        try:
            return read()
        except pa.ArrowInvalid:
            raise
        except OSError:
            time.sleep(delay)
    return read()


def _cut(
    file: str, meta: pq.FileMetaData, chunk_rows: int, workers: int = 1
) -> list[tuple[Piece, bool]]:
    """Group consecutive small row groups until a piece holds at least `chunk_rows` rows;
    cut a row group larger than `chunk_rows` into `workers` equal row ranges (fewer when
    they would hold less than `chunk_rows`), so that its rows spread over the workers.
    Each piece with whether it must be a chunk of its own: a piece of `chunk_rows` rows or
    more, or a row range (which may hold fewer: it is there to go to a worker alone).

    pandas and pyarrow write row groups of 1,048,576 rows: as whole-group chunks, a million
    rows went to one worker, and five million to two workers in three rounds. Ranges cost
    decoding: a worker reaches the middle of a group by decoding and dropping the rows
    before it (Parquet offers no cheaper start here), half a group per extra range, so
    groups are cut into no more ranges than there are workers. A worker reads any chunk in
    batches of `chunk_rows` rows, so memory stays bounded however large the range.
    """
    pieces: list[tuple[Piece, bool]] = []
    groups: list[int] = []
    rows = 0

    def add(row_groups: tuple[int, ...], n: int, offset: int = 0, ranged: bool = False) -> None:
        pieces.append((Piece(file, row_groups, n, offset), ranged or n >= chunk_rows))

    for i in range(meta.num_row_groups):
        n = meta.row_group(i).num_rows
        if n > chunk_rows:
            if groups:
                add(tuple(groups), rows)
                groups, rows = [], 0
            ranges = min(-(-n // chunk_rows), max(workers, 1))
            size = -(-n // ranges)
            for start in range(0, n, size):
                add((i,), min(size, n - start), start, ranged=True)
            continue
        groups.append(i)
        rows += n
        if rows >= chunk_rows:
            add(tuple(groups), rows)
            groups, rows = [], 0
    if groups:
        add(tuple(groups), rows)
    return pieces


def _chunks(
    partition: str, pieces: list[tuple[Piece, bool, pa.Schema]], chunk_rows: int
) -> list[Chunk]:
    """The partition's chunks, in its files' order: a piece `_cut` says must be alone, alone;
    smaller pieces (small files, a file's last row groups) with the pieces after them, of
    files with the same schema, until the chunk holds `chunk_rows` rows.

    Writers such as Spark write a partition as many small files (200, one per shuffle
    partition, by default). A chunk a file, 2,000,000 rows in 200 files took 16.6 s here
    against 5.4 s in one file: 200 task runs, each with its own start, state changes, staged
    files and first batch. The same schema, so that the chunk's scores (the id columns
    as read) and quarantined rows (every input column) each make one table."""
    chunks: list[Chunk] = []
    group: list[Piece] = []
    rows = 0
    schema: pa.Schema | None = None

    def flush() -> None:
        nonlocal group, rows
        if group:
            chunks.append(Chunk(partition, len(chunks), tuple(group)))
            group, rows = [], 0

    for piece, alone, piece_schema in pieces:
        if group and (alone or not piece_schema.equals(schema, check_metadata=False)):
            flush()
        if alone:
            chunks.append(Chunk(partition, len(chunks), (piece,)))
            continue
        group.append(piece)
        rows += piece.rows
        schema = piece_schema
        if rows >= chunk_rows:
            flush()
    flush()
    return chunks


def plan_to_json(plan: PartitionPlan) -> dict:
    out = asdict(plan)
    out["duplicate_ids"] = sorted(map(str, plan.duplicate_ids))
    if plan.quarantine_schema is not None:
        out["quarantine_schema"] = {f.name: str(f.type) for f in plan.quarantine_schema}
    return out
