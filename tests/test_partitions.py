"""How a partition is cut into chunks, and how a worker reads one chunk's rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import SAMPLE, corrupt_a_data_page, write_config

from batchscore.config import load_config
from batchscore.partitions import _cut, plan_partition
from batchscore.registry import ModelRef
from batchscore.scoring import UnreadableFile, _batches, _read_chunk, _read_piece
from batchscore.storage import Location
from batchscore.validation import FileProblem

DAY = "2026-11-01"


@pytest.fixture
def config(tmp_path):
    """A config over an empty source under tmp_path; tests write `incoming/dt=DAY/` files."""
    path = write_config(
        tmp_path / "batchscore.toml",
        (SAMPLE.parent.parent / "batchscore.toml").read_text(),
        storage={"source": "source", "store": "store"},
    )
    return load_config(path)


@pytest.fixture
def rows() -> pa.Table:
    return pq.read_table(SAMPLE / "incoming" / "dt=2026-10-02").slice(0, 1_000)


def _plan(config):
    return plan_partition(config, DAY, ModelRef(config.store, "churn", "v0001", "0" * 64))


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("chunk_rows", [999, 2_000, 5_000, 100_000])
def test_chunks_cover_every_row_once_in_order_and_no_batch_exceeds_chunk_rows(
    tmp_path, chunk_rows, workers
):
    groups = [5_000, 1_200, 800, 7_001, 3, 2_000]
    path = tmp_path / "part.parquet"
    with pq.ParquetWriter(path, pa.schema([("id", pa.int64()), ("x", pa.float64())])) as w:
        start = 0
        for n in groups:
            ids = np.arange(start, start + n)
            w.write_table(pa.table({"id": ids, "x": ids * 0.5}), row_group_size=n)
            start += n
    parquet = pq.ParquetFile(path)
    assert [parquet.metadata.row_group(i).num_rows for i in range(len(groups))] == groups

    chunks = [piece for piece, _ in _cut("part.parquet", parquet.metadata, chunk_rows, workers)]
    ids = []
    for chunk in chunks:
        tables = list(_batches(pq.ParquetFile(path), chunk, chunk_rows))
        assert all(t.num_rows <= chunk_rows for t in tables)
        got = np.concatenate([t.column("id").to_numpy() for t in tables])
        assert len(got) == chunk.rows
        ids.append(got)
    assert np.array_equal(np.concatenate(ids), np.arange(sum(groups)))
    for i, n in enumerate(groups):  # a group larger than chunk_rows: one range per worker
        ranges = [c for c in chunks if c.row_groups == (i,) and n > chunk_rows]
        assert len(ranges) == (min(workers, -(-n // chunk_rows)) if n > chunk_rows else 0)
        assert sum(c.rows for c in ranges) == (n if ranges else 0)


def test_small_files_written_alike_share_chunks_and_every_row_is_in_one(
    tmp_path, rows, monkeypatch
):
    """Small files (and a file's last row groups) join the files after them until a chunk
    holds `chunk_rows` rows; a file of `chunk_rows` rows or more is a chunk of its own, and
    a file with another schema starts a new chunk."""
    path = write_config(
        tmp_path / "batchscore.toml",
        (SAMPLE.parent.parent / "batchscore.toml").read_text(),
        storage={"source": "source", "store": "store"},
        scoring={"chunk_rows": 800},
    )
    config = load_config(path)
    folder = Path(config.source) / "incoming" / f"dt={DAY}"
    folder.mkdir(parents=True)
    sizes = [300, 300, 300, 300, 300, 1_000, 300, 300]
    starts = np.cumsum([0, *sizes])
    table = pa.concat_tables([rows] * 5)
    for i, (start, n) in enumerate(zip(starts, sizes, strict=False)):
        part = table.slice(start, n)
        if i == 4:  # another schema: one column more
            part = part.append_column("note", pa.array(["x"] * n))
        pq.write_table(part, folder / f"part-{i}.parquet")

    plan = _plan(config)
    assert not plan.held
    ranges = min(config.scoring.worker_count, 2)  # 1,000 rows > 800: at most 2 ranges
    assert [[p.file.rsplit("-", 1)[1] for p in c.pieces] for c in plan.chunks] == [
        ["0.parquet", "1.parquet", "2.parquet"],  # 900 >= 800
        ["3.parquet"],  # the next file has another schema
        ["4.parquet"],  # the next file is a chunk of its own
        *[["5.parquet"]] * ranges,  # its one row group: a range per worker, each alone
        ["6.parquet", "7.parquet"],  # the rest
    ]
    assert [c.index for c in plan.chunks] == list(range(4 + ranges))
    assert [c.rows for c in plan.chunks] == [900, 300, 300, *[1_000 // ranges] * ranges, 600]
    source = Location(config.source)
    read = [
        t.column("customer_id")
        for c in plan.chunks
        for p in c.pieces
        for t in _read_piece(source, p, 500)
    ]
    assert pa.chunked_array(read).equals(table.slice(0, sum(sizes)).column("customer_id"))

    # A worker reads a chunk of small files in batches joined across them, up to the batch
    # size, each naming its rows' files in order; a batch is handed over before the next
    # is decoded (none is read ahead and held while the worker scores the one before).
    decoded = [0]

    def counted(*args):
        for t in _batches(*args):
            decoded[0] += t.num_rows
            yield t

    monkeypatch.setattr("batchscore.scoring._batches", counted)
    for batch_rows in (250, 500, 700, 5_000):
        for chunk in plan.chunks:
            problems, read, decoded[0] = [], [], 0
            for files, t in _read_chunk(source, chunk, batch_rows, problems):
                assert decoded[0] == sum(r.num_rows for _, r in read) + t.num_rows
                read.append((files, t))
            assert not problems
            assert all(t.num_rows <= batch_rows for _, t in read)
            assert all(sum(n for _, n in files) == t.num_rows for files, t in read)
            # Joined: a batch ends short only where the next one would not fit.
            for (_, t), (_, after) in zip(read, read[1:], strict=False):
                assert t.num_rows + after.num_rows > batch_rows
            named = [f for files, _ in read for f, n in files for _ in range(n)]
            expected = [p.file for p in chunk.pieces for _ in range(p.rows)]
            assert named == expected
            ids = pa.chunked_array([i for _, t in read for i in t.column("customer_id").chunks])
            first = starts[int(chunk.pieces[0].file[-9])] + chunk.pieces[0].offset
            assert ids.equals(table.slice(first, chunk.rows).column("customer_id"))


def test_folders_inside_a_partition_folder_are_not_read_and_are_reported(config, rows):
    folder = Path(config.source) / "incoming" / f"dt={DAY}"
    for sub in ("sub", "_temporary", ".hidden"):  # the last two pyarrow.dataset skips too
        (folder / sub).mkdir(parents=True)
        pq.write_table(rows, folder / sub / "b.parquet")
    pq.write_table(rows.slice(0, 300), folder / "a.parquet")
    plan = _plan(config)
    assert plan.files == (f"incoming/dt={DAY}/a.parquet",)
    assert plan.rows_in == 300 and not plan.held
    assert plan.ignored_folders == (f"incoming/dt={DAY}/sub",)


def test_planning_lists_the_partition_folder_once(config, rows, monkeypatch):
    """One listing for its data files and its subfolders: a LIST request on an object store."""
    from batchscore.storage import Location

    folder = Path(config.source) / "incoming" / f"dt={DAY}"
    (folder / "sub").mkdir(parents=True)
    pq.write_table(rows.slice(0, 300), folder / "a.parquet")
    listed, real = [], Location.list
    monkeypatch.setattr(
        Location, "list", lambda self, *parts: listed.append(parts) or real(self, *parts)
    )
    plan = _plan(config)
    assert plan.files == (f"incoming/dt={DAY}/a.parquet",)
    assert plan.ignored_folders == (f"incoming/dt={DAY}/sub",)
    assert listed.count((f"incoming/dt={DAY}",)) == 1, listed


def test_a_partitions_source_changes_are_files_added_removed_or_resized(config, rows):
    """`source_changes`: what a scored partition's `_SUCCESS` recorded against its folder now."""
    from batchscore.partitions import source_changes

    folder = Path(config.source) / "incoming" / f"dt={DAY}"
    folder.mkdir(parents=True)
    pq.write_table(rows.slice(0, 300), folder / "a.parquet")
    pq.write_table(rows.slice(300, 300), folder / "b.parquet")
    plan = _plan(config)
    a, b = (f"incoming/dt={DAY}/{n}.parquet" for n in "ab")
    assert plan.files == (a, b)
    assert plan.file_sizes == (
        (folder / "a.parquet").stat().st_size,
        (folder / "b.parquet").stat().st_size,
    )
    done = {
        "files": list(plan.files),
        "file_sizes": dict(zip(plan.files, plan.file_sizes, strict=True)),
    }
    assert source_changes(config, DAY, done) == ""
    # a file that arrives late; one whose name a writer's temporary or manifest has is no data
    pq.write_table(rows.slice(600, 100), folder / "c.parquet")
    (folder / "_SUCCESS").write_text("")
    (folder / ".c.parquet.tmp").write_text("")
    assert source_changes(config, DAY, done) == f"added incoming/dt={DAY}/c.parquet"
    # one removed, one rewritten
    (folder / "c.parquet").unlink()
    (folder / "a.parquet").unlink()
    pq.write_table(rows.slice(0, 400), folder / "b.parquet")
    size = (folder / "b.parquet").stat().st_size
    assert source_changes(config, DAY, done) == (
        f"removed {a}; {b} is {size:,} bytes, was {plan.file_sizes[1]:,}"
    )
    # a manifest from before sizes were recorded: names only
    assert source_changes(config, DAY, {"files": [b]}) == ""
    assert source_changes(config, DAY, {"files": [a, b]}) == f"removed {a}"
    # an empty partition, scored before its files arrived
    assert source_changes(config, DAY, {"files": [], "file_sizes": {}}) == f"added {b}"


def test_a_corrupt_data_page_behind_an_intact_footer_names_the_file(config, rows):
    folder = Path(config.source) / "incoming" / f"dt={DAY}"
    folder.mkdir(parents=True)
    path = folder / "b.parquet"
    pq.write_table(rows, path, compression="zstd")
    corrupt_a_data_page(path)
    with pytest.raises(OSError) as decoding:  # pyarrow's error, as a storage error would be
        pq.ParquetFile(path).read()

    plan = _plan(config)  # the footer and the ids read well: planning cannot tell
    assert not plan.held and len(plan.chunks) == 1
    with pytest.raises(UnreadableFile) as raised:
        list(_read_piece(Location(config.source), plan.chunks[0].pieces[0], 500, delays=(0, 0)))
    assert not isinstance(raised.value, OSError)  # not retried by the task
    assert raised.value.problems == (
        FileProblem(
            f"incoming/dt={DAY}/b.parquet",
            f"not a readable Parquet file ({path.stat().st_size:,} bytes): {decoding.value}",
        ),
    )


def test_pipeline_only_json_is_compact_and_reads_back_equal(tmp_path):
    """`Location.write_json(readable=False)`: a chunk's record (its drift counts are tens
    of thousands of numbers) is written by json's C encoder, on one line; manifests people
    read stay indented."""
    import json

    from batchscore.storage import Location

    record = {"b": [1, 2.5, None], "a": {"counts": list(range(50)), "day": "2026-01-01"}}
    store = Location(str(tmp_path))
    store.write_json(record, "chunk.json", readable=False)
    store.write_json(record, "_SUCCESS")
    compact = (tmp_path / "chunk.json").read_text()
    assert json.loads(compact) == record
    assert "\n" not in compact and ", " not in compact
    assert (tmp_path / "_SUCCESS").read_text().startswith('{\n  "a": {')


MANIFEST = {"model_name": "churn", "model_version": "v0001", "run_id": "r1"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "not valid JSON (0 bytes): Expecting value"),
        ('{"status": "scored", "model_ver', "not valid JSON (31 bytes): Unterminated string"),
        ("[]", "a JSON array, not an object"),
        ("{}", "key 'run_id' is missing"),
        (json.dumps({**MANIFEST, "model_version": None}), "key 'model_version' holds null, not a"),
        (
            json.dumps({**MANIFEST, "file_sizes": "x"}),
            """key 'file_sizes' holds a string ("x"), not an object""",
        ),
        (json.dumps({**MANIFEST, "files": {}}), "key 'files' holds an object ({}), not an array"),
        (
            json.dumps({**MANIFEST, "file_sizes": {"incoming/dt=2026-11-01/a.parquet": "9"}}),
            """key 'file_sizes.incoming/dt=2026-11-01/a.parquet' holds a string ("9"), not an""",
        ),
    ],
)
def test_a_partition_whose_manifest_cannot_be_read_is_pending_and_named(
    config, rows, text, problem
):
    """An emptied or truncated `_SUCCESS` makes its partition not scored (scored again, its
    outputs replaced on publishing), saying which file and why; the others are as before.
    It stopped the whole run with a bare JSONDecodeError. So does one without a key its
    readers need, or with another type there: a string for `file_sizes` was an
    AttributeError that failed the run's find-partitions step, `{}` a partition scored
    again without a word, and a KeyError for realised performance."""
    from batchscore.partitions import pending
    from batchscore.scoring import _earlier_output, _kept_note

    model = ModelRef(config.store, "churn", "v0001", "0" * 64)
    store = Location(config.store)
    for day in ("2026-11-01", "2026-11-02"):
        store.write_json(MANIFEST, "scores", f"dt={day}", "_SUCCESS")
    bad = Path(config.store) / "scores" / "dt=2026-11-01" / "_SUCCESS"
    bad.write_text(text)

    unreadable: dict[str, str] = {}
    todo = pending(config, model, ["2026-11-01", "2026-11-02"], False, unreadable=unreadable)

    assert todo == ["2026-11-01"]
    assert list(unreadable) == ["2026-11-01"]
    assert unreadable["2026-11-01"].startswith(f"{bad}: {problem}")
    assert pending(config, model, ["2026-11-01", "2026-11-02"], False) == ["2026-11-01"]
    # A hold of the partition keeps that output as it is (beside it), naming the file.
    kept = _earlier_output(store, "2026-11-01")
    assert kept["unreadable"] == unreadable["2026-11-01"]
    assert _kept_note(kept, "quarantine/dt=2026-11-01/_held/_HELD")[0].startswith(
        f"the earlier output, whose manifest is unreadable ({bad}: "
    )


def test_a_held_partitions_rows_are_those_of_every_file_with_a_readable_footer(config, rows):
    folder = Path(config.source) / "incoming" / f"dt={DAY}"
    folder.mkdir(parents=True)
    pq.write_table(rows.slice(0, 300), folder / "a.parquet")
    pq.write_table(rows.slice(300, 200).drop_columns(["tenure_months"]), folder / "b.parquet")
    (folder / "c.parquet").write_bytes(b"not parquet")  # its rows cannot be known
    plan = _plan(config)
    assert plan.held
    assert [p.file for p in plan.problems] == [
        f"incoming/dt={DAY}/b.parquet",
        f"incoming/dt={DAY}/c.parquet",
    ]
    assert plan.rows_in == 500


def test_a_held_partitions_reasons_say_each_problem_once_after_its_files(config, rows):
    """Five files without a column and one that is not Parquet: two reasons, the first after
    three of its files and a count of the rest. It said the same reason once per file (200
    times for a partition of 200 such files), in the hold's and the run's messages; `_HELD`
    still names every file with its reason."""
    from batchscore.scoring import hold_partition

    folder = Path(config.source) / "incoming" / f"dt={DAY}"
    folder.mkdir(parents=True)
    for i, name in enumerate("abcde"):
        pq.write_table(rows.slice(i * 100, 100).drop_columns(["plan"]), folder / f"{name}.parquet")
    (folder / "f.parquet").write_bytes(b"not parquet")
    plan = _plan(config)
    model = ModelRef(config.store, "churn", "v0001", "0" * 64)

    outcome = hold_partition(config, plan, model, "run-1")

    missing = plan.problems[0].reason
    assert missing.startswith("missing column 'plan'")
    files = [f"incoming/dt={DAY}/{name}.parquet" for name in "abcdef"]
    assert outcome.reasons == (
        f"{files[0]}, {files[1]}, {files[2]} and 2 more files: {missing}",
        f"{files[5]}: {plan.problems[5].reason}",
    )
    held = json.loads((Path(config.store) / "quarantine" / f"dt={DAY}" / "_HELD").read_text())
    assert held["reasons"] == list(outcome.reasons)
    assert [(f["file"], f["reason"]) for f in held["files"]] == [
        (p.file, p.reason) for p in plan.problems
    ]
    assert [f["file"] for f in held["files"]] == files
