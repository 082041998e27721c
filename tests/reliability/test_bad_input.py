"""Bad input, file level and row level: each case held or quarantined with a clear message,
the other partitions scored. One score run covers every case (runs cost Prefect start-up).

Every test runs twice: source and store on a local disk, and on an S3 API (moto on
loopback). On S3 the broken files are uploaded as they are, the model is trained and
registered on S3, and the store is downloaded afterwards for the same assertions."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers import final_task_runs, write_config
from objectstore import download, new_bucket, s3, upload

from batchscore.config import load_config
from batchscore.partitions import discover
from batchscore.storage import Location
from batchscore.training import train
from flows.score import score

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample"
GOOD = "2026-10-02"  # copied unchanged: must be scored whatever happens elsewhere

# A partition per case; each is built from a clean sample day.
FILE_CASES = {
    "2026-11-01": "truncated",
    "2026-11-02": "zero-byte",
    "2026-11-03": "not-parquet",
    "2026-11-04": "missing-column",
    "2026-11-05": "uncastable-type",
    "2026-11-10": "corrupt-page",  # beside a good file, whose chunks are scored first
    "2026-11-11": "duplicate-column",
    "2026-11-12": "categories-as-codes",
}
ROWS = "2026-11-06"  # row-level problems, few enough to be quarantined
TOO_BAD = "2026-11-07"  # 10% bad rows: held whole
EMPTY_DIR = "2026-11-08"  # no files
EMPTY_FILE = "2026-11-09"  # a file with a schema and no rows
BAD_NAMES = ["dt=2026-02-30", "dt=2026-10-1", "backup", "dt=..", "dt=2026-10-02.old"]


def _day(day: str = "2026-10-03") -> pa.Table:
    return pq.read_table(SAMPLE / "incoming" / f"dt={day}")


def _write(source: Path, partition: str, table: pa.Table, name: str = "part-0.parquet") -> Path:
    folder = source / "incoming" / f"dt={partition}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / name, row_group_size=5_000)
    return folder / name


def _set(table: pa.Table, row: int, column: str, value) -> pa.Table:
    values = table.column(column).to_pylist()
    values[row] = value
    i = table.schema.get_field_index(column)
    return table.set_column(i, column, pa.array(values, table.schema.field(column).type))


@pytest.fixture(scope="module", params=["local", "s3"])
def broken_run(request, tmp_path_factory, prefect_api):
    base = tmp_path_factory.mktemp(f"bad-input-{request.param}")
    source = base / "source"
    shutil.copytree(SAMPLE / "labels", source / "labels")
    for day in [f"2026-10-{d:02d}" for d in range(1, 11)]:  # training needs these
        shutil.copytree(SAMPLE / "incoming" / f"dt={day}", source / "incoming" / f"dt={day}")
    storage = {"source": "source", "store": "store"}
    if request.param == "s3":
        request.getfixturevalue("s3_api")
        bucket = new_bucket()
        storage = {"source": f"s3://{bucket}/source", "store": f"s3://{bucket}/store"}
        upload(source, storage["source"])
    config_path = write_config(
        base / "batchscore.toml",
        (ROOT / "batchscore.toml").read_text(),
        storage=storage,
        retrain={"on_drift": "off", "lightgbm": {"max_rounds": 40}},
        validation={"max_string_length": 100},
    )
    config = load_config(config_path)
    train(config)
    # Score the training days first, so the broken run below holds only the cases.
    assert score(config=str(config_path), return_state=True).is_completed()
    Location(config.store).delete_dir("scores", f"dt={GOOD}")  # ... but GOOD again

    clean = _day()
    # File level.
    path = _write(source, "2026-11-01", clean)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _write(source, "2026-11-02", clean, "a.parquet")
    (source / "incoming" / "dt=2026-11-02" / "b.parquet").write_bytes(b"")
    _write(source, "2026-11-03", clean)
    (source / "incoming" / "dt=2026-11-03" / "notes.csv").write_text("customer_id,plan\n1,basic\n")
    _write(source, "2026-11-04", clean.drop(["monthly_charges"]))
    tenure = pa.array([str(v) for v in clean.column("tenure_months").to_pylist()])
    i = clean.schema.get_field_index("tenure_months")
    _write(source, "2026-11-05", clean.set_column(i, "tenure_months", tenure))
    _write(source, "2026-11-10", clean, "a.parquet")
    path = _write(source, "2026-11-10", clean.slice(0, 5_000), "b.parquet")
    page = pq.read_metadata(path).row_group(0).column(clean.schema.get_field_index("age"))
    corrupt = bytearray(path.read_bytes())  # the footer stays intact: planning reads well
    for at in range(page.data_page_offset + 30, page.data_page_offset + 130):
        corrupt[at] ^= 0x5A
    path.write_bytes(bytes(corrupt))
    _write(
        source, "2026-11-11", clean.append_column("tenure_months", pa.array([1] * clean.num_rows))
    )
    # A categorical feature exported as its codes: no code could match a category ("basic").
    plans = pc.unique(clean.column("plan")).sort()
    codes = pc.index_in(clean.column("plan"), value_set=plans).cast(pa.int64())
    i = clean.schema.get_field_index("plan")
    _write(source, "2026-11-12", clean.set_column(i, "plan", codes))
    # Row level: one row per kind of problem, plus an unseen category and an extra column.
    rows = clean
    ids = rows.column("customer_id").to_pylist()
    rows = _set(rows, 10, "customer_id", None)
    rows = _set(rows, 11, "customer_id", ids[12])  # 11 and 12 now share an id
    rows = _set(rows, 13, "age", None)  # never missing in training
    rows = _set(rows, 14, "monthly_charges", float("inf"))
    rows = _set(rows, 15, "tenure_months", 10_000)
    rows = _set(rows, 16, "plan", "x" * 5_000)  # absurd string
    rows = _set(rows, 17, "region", "atlantis")  # unseen: scored and counted
    rows = _set(rows, 18, "avg_session_minutes", None)  # missing seen in training: fine
    rows = rows.append_column("crm_note", pa.array(["n"] * rows.num_rows))
    _write(source, ROWS, rows)
    (source / "incoming" / f"dt={ROWS}" / "sub").mkdir()
    _write(source, ROWS, clean, "sub/part-0.parquet")  # a folder inside: never read
    # Too many bad rows: 10% null ids.
    bad = clean.column("customer_id").to_pylist()
    for i in range(0, len(bad), 10):
        bad[i] = None
    _write(source, TOO_BAD, clean.set_column(0, "customer_id", pa.array(bad, pa.int64())))
    (source / "incoming" / f"dt={EMPTY_DIR}").mkdir(parents=True)
    _write(source, EMPTY_FILE, clean.slice(0, 0))
    for name in BAD_NAMES:
        (source / "incoming" / name).mkdir(parents=True)
        shutil.copy(
            SAMPLE / "incoming" / "dt=2026-10-03" / "part-0.parquet",
            source / "incoming" / name / "part-0.parquet",
        )

    if request.param == "s3":
        upload(source / "incoming", f"{storage['source']}/incoming")
        # An empty folder exists on S3 only as a zero-byte `dt=.../` marker object.
        s3().create_dir(f"{storage['source']}/incoming/dt={EMPTY_DIR}".removeprefix("s3://"))
    state = score(config=str(config_path), return_state=True)
    store = Path(config.store)
    if request.param == "s3":
        store = download(storage["store"], base / "store-downloaded")
    return {
        "config": config,
        "state": state,
        "store": store,
        "source": source,
        "outcomes": {o["partition"]: o for o in state.result(raise_on_failure=False)},
    }


def _held(run, partition: str) -> dict:
    return json.loads((run["store"] / "quarantine" / f"dt={partition}" / "_HELD").read_text())


def test_the_run_ends_in_a_state_that_says_partitions_were_held(broken_run):
    state = broken_run["state"]
    assert state.is_completed() and state.name == "CompletedWithHeld"
    held = sorted([*FILE_CASES, TOO_BAD])
    assert state.message == f"{len(held)} partition(s) held: {', '.join(held)}"


def test_other_partitions_are_scored(broken_run):
    for partition in (GOOD, ROWS):
        manifest = json.loads(
            (broken_run["store"] / "scores" / f"dt={partition}" / "_SUCCESS").read_text()
        )
        assert manifest["status"] == "scored"


@pytest.mark.parametrize(
    ("partition", "file", "message"),
    [
        ("2026-11-01", "part-0.parquet", "not a readable Parquet file"),
        ("2026-11-02", "b.parquet", "not a readable Parquet file (0 bytes)"),
        ("2026-11-03", "notes.csv", "not a readable Parquet file"),
        (
            "2026-11-04",
            "part-0.parquet",
            "missing column 'monthly_charges' (required as an id or feature)",
        ),
        (
            "2026-11-05",
            "part-0.parquet",
            "column 'tenure_months' has type string, which cannot be cast safely to a numeric "
            "feature",
        ),
        ("2026-11-10", "b.parquet", "not a readable Parquet file"),
        (
            "2026-11-11",
            "part-0.parquet",
            "column 'tenure_months' appears 2 times; column names must be unique",
        ),
        (
            "2026-11-12",
            "part-0.parquet",
            "column 'plan' has type int64, but churn v0001 was trained on text categories for "
            "it ('",
        ),
    ],
)
def test_a_file_level_problem_holds_its_partition_naming_file_and_column(
    broken_run, partition, file, message
):
    held = _held(broken_run, partition)
    assert held["status"] == "held"
    rel = f"incoming/dt={partition}/{file}"
    assert any(r.startswith(f"{rel}: {message}") for r in held["reasons"]), held["reasons"]
    assert {"file": rel, "reason": held["files"][0]["reason"]} in held["files"]
    assert not (broken_run["store"] / "scores" / f"dt={partition}").exists()
    assert not list((broken_run["store"] / "_staging").glob(f"dt={partition}-*"))
    assert broken_run["outcomes"][partition]["status"] == "held"


def test_held_partitions_end_their_prefect_task_failed_with_the_reason(broken_run):
    names = [*(f"hold {p}" for p in FILE_CASES), f"publish {TOO_BAD}", f"publish {GOOD}"]
    by_name = final_task_runs(broken_run["state"].state_details.flow_run_id, names)
    for partition in FILE_CASES:
        run = by_name[f"hold {partition}"]
        assert run.state.is_failed()
        assert f"partition {partition} held: incoming/dt={partition}/" in run.state.message
    assert by_name[f"publish {TOO_BAD}"].state.is_failed()
    assert by_name[f"publish {GOOD}"].state.is_completed()


def test_row_level_problems_go_to_quarantine_with_reasons_and_the_rest_is_scored(broken_run):
    store, partition = broken_run["store"], ROWS
    quarantine = pq.read_table(store / "quarantine" / f"dt={partition}")
    reasons = dict(
        zip(
            quarantine.column("customer_id").to_pylist(),
            quarantine.column("reason").to_pylist(),
            strict=True,
        )
    )
    clean_ids = _day().column("customer_id").to_pylist()
    assert reasons[None] == "null id customer_id"
    dup = f"duplicate id customer_id={clean_ids[12]}: the partition holds this id more than once"
    assert quarantine.filter(pc.equal(quarantine.column("customer_id"), clean_ids[12])).column(
        "reason"
    ).to_pylist() == [dup, dup]
    assert reasons[clean_ids[13]] == "age is missing, and was never missing in training"
    assert reasons[clean_ids[14]].startswith("monthly_charges=inf outside the validation band")
    assert reasons[clean_ids[15]].startswith("tenure_months=10000 outside the validation band")
    assert reasons[clean_ids[16]].startswith("plan holds a value of 5,000 characters")
    assert quarantine.num_rows == 7
    assert quarantine.column("crm_note").to_pylist() == ["n"] * 7  # rows kept whole
    manifest = json.loads((store / "scores" / f"dt={partition}" / "_SUCCESS").read_text())
    assert manifest["rows_in"] == _day().num_rows
    assert manifest["rows_scored"] == manifest["rows_in"] - 7
    assert manifest["extra_columns"] == ["crm_note"]
    assert manifest["ignored_folders"] == [f"incoming/dt={ROWS}/sub"]
    assert manifest["unseen_categories"] == {"region": 1}
    scores = pq.read_table(store / "scores" / f"dt={partition}")
    assert clean_ids[17] in scores.column("customer_id").to_pylist()  # unseen: scored
    assert clean_ids[18] in scores.column("customer_id").to_pylist()  # allowed missing


def test_too_many_bad_rows_hold_the_partition_with_its_rows_in_quarantine(broken_run):
    held = _held(broken_run, TOO_BAD)
    n = _day().num_rows
    bad = len(range(0, n, 10))
    assert held["reasons"] == [
        f"{bad} of {n} rows ({bad / n:.1%}) failed validation, more than "
        "[validation] max_bad_row_fraction = 0.05"
    ]
    assert not (broken_run["store"] / "scores" / f"dt={TOO_BAD}").exists()
    rows = pq.read_table(broken_run["store"] / "quarantine" / f"dt={TOO_BAD}")
    assert rows.num_rows == bad and set(rows.column("reason").to_pylist()) == {
        "null id customer_id"
    }
    # The manifest accounts for what is where: the rejected rows in quarantine, the rest held.
    assert (held["rows_in"], held["rows_scored"]) == (n, 0)
    assert (held["rows_quarantined"], held["rows_held"]) == (bad, n - bad)


@pytest.mark.parametrize("partition", [EMPTY_DIR, EMPTY_FILE])
def test_an_empty_partition_completes_with_an_empty_status_and_a_manifest(broken_run, partition):
    manifest = json.loads(
        (broken_run["store"] / "scores" / f"dt={partition}" / "_SUCCESS").read_text()
    )
    assert (manifest["status"], manifest["rows_in"], manifest["rows_scored"]) == ("empty", 0, 0)
    report = pq.read_table(broken_run["store"] / "drift" / f"dt={partition}")
    assert set(report.column("status").to_pylist()) == {"not_computed"}
    assert all(r for r in report.column("reason").to_pylist())


def test_folders_that_are_not_partitions_are_never_read_and_are_reported(broken_run):
    found = discover(broken_run["config"])
    assert sorted(found.ignored) == sorted(BAD_NAMES)
    scored = sorted(p.name for p in (broken_run["store"] / "scores").iterdir())
    assert not set(scored) & set(BAD_NAMES)
    assert np.all([n.startswith("dt=20") for n in scored])


def test_a_folder_inside_a_partition_folder_is_never_read_and_is_logged(broken_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterLevel
    from prefect.logging.handlers import APILogWorker

    config = broken_run["config"]
    expected = (
        f"ignored {config.source}/incoming/dt={ROWS}/sub: a folder inside a partition folder; "
        f"only the files directly in dt={ROWS}/ are read"
    )
    APILogWorker.drain_all(timeout=10)
    run_id = broken_run["state"].state_details.flow_run_id
    deadline = time.monotonic() + 30  # a worker process sends its logs in the background
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(
                log_filter=LogFilter(
                    flow_run_id=LogFilterFlowRunId(any_=[run_id]), level=LogFilterLevel(ge_=30)
                )
            )
            if expected in [log.message for log in logs] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert expected in [log.message for log in logs]
