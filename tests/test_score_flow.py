"""Ring 3: the `score` flow end to end on the sample data, under a real Prefect API."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from helpers import corrupt_a_data_page, dictionary_encoded, write_config

from batchscore.config import load_config
from batchscore.training import train
from drift import DRIFT_REPORT_SCHEMA
from flows.score import failed_message, not_measured_message, score

SAMPLE_DAYS = [f"2026-10-{d:02d}" for d in range(1, 15)]


def _scores(store: Path, partition: str | None = None) -> pa.Table:
    folder = store / "scores" / (f"dt={partition}" if partition else "")
    table = pads.dataset(folder, format="parquet", partitioning="hive" if not partition else None)
    return table.to_table().sort_by("customer_id")


def _manifest(store: Path, partition: str) -> dict:
    return json.loads((store / "scores" / f"dt={partition}" / "_SUCCESS").read_text())


def test_sample_scores_every_partition_once_and_quarantines_the_invalid_rows(sample, prefect_api):
    # Retraining on drift is tested in test_retrain.py; here the champion must stay put.
    write_config(sample, sample.read_text(), retrain={"on_drift": "off"})
    config = load_config(sample)
    store = Path(config.store)
    trained = train(config)
    assert trained.promoted and trained.version == "v0001"

    state = score(config=str(sample), return_state=True)
    assert state.is_completed(), state.message
    outcomes = {o["partition"]: o for o in state.result()}
    assert sorted(outcomes) == SAMPLE_DAYS

    for day in SAMPLE_DAYS:
        manifest = _manifest(store, day)
        source_rows = sum(
            pq.ParquetFile(f).metadata.num_rows
            for f in (Path(config.source) / "incoming" / f"dt={day}").glob("*.parquet")
        )
        assert manifest["rows_in"] == source_rows
        assert manifest["rows_in"] == manifest["rows_scored"] + manifest["rows_quarantined"]
        assert manifest["model_version"] == "v0001"
        assert manifest["status"] == "scored"
        assert _scores(store, day).num_rows == manifest["rows_scored"]
        # Unique ids and scores are written plain: a dictionary of them is only given up.
        assert dictionary_encoded(store / "scores" / f"dt={day}") == {
            "customer_id": False,
            "score": False,
            "model_version": True,
            "scored_at": True,
            "run_id": True,
        }

    # The broken day: its five invalid rows are quarantined with readable reasons, the rest scored.
    quarantine = pq.read_table(store / "quarantine" / "dt=2026-10-11").to_pylist()
    reasons = sorted(r["reason"] for r in quarantine)
    assert len(reasons) == 5
    assert sum("duplicate id customer_id=11009121" in r for r in reasons) == 2
    assert any(r == "null id customer_id" for r in reasons)
    assert any("tenure_months=5000" in r and "outside the validation band" in r for r in reasons)
    assert any("monthly_charges is missing" in r for r in reasons)
    assert all(r["source_file"] == "incoming/dt=2026-10-11/part-0.parquet" for r in quarantine)
    assert _manifest(store, "2026-10-11")["rows_quarantined"] == 5
    assert sorted(p.name for p in (store / "quarantine").iterdir()) == ["dt=2026-10-11"]

    # The scores table: DESIGN.md's schema, one row per valid input row, ids unique.
    table = _scores(store)
    assert table.schema.names[:5] == [
        "customer_id",
        "score",
        "model_version",
        "scored_at",
        "run_id",
    ]
    assert table.schema.field("scored_at").type == pa.timestamp("us", tz="UTC")
    assert table.num_rows == sum(o["rows_scored"] for o in outcomes.values())
    assert pa.compute.count_distinct(table.column("customer_id")).as_py() == table.num_rows
    scores = table.column("score").to_numpy()
    assert np.all((scores > 0) & (scores < 1))
    # README's DuckDB query over the scores folder, as written there (with this store).
    import duckdb

    by_day = duckdb.sql(
        "select dt, count(*), avg(score) from "
        f"read_parquet('{store}/scores/*/*.parquet', hive_partitioning=true) group by dt"
    ).fetchall()
    assert sorted((str(dt), n) for dt, n, _ in by_day) == [
        (day, outcomes[day]["rows_scored"]) for day in SAMPLE_DAYS
    ]

    # Drift: exactly the injected features on exactly the drifted days, nothing elsewhere.
    report = pads.dataset(store / "drift", format="parquet", partitioning="hive").to_table()
    assert report.schema.names[: len(DRIFT_REPORT_SCHEMA)] == DRIFT_REPORT_SCHEMA.names
    assert report.schema.field("partition").type == pa.date32()
    assert set(report.column("status").to_pylist()) == {"ok"}
    drifted: dict[str, set[str]] = {}
    for row in report.to_pylist():
        if row["drifted"]:
            drifted.setdefault(str(row["partition"]), set()).add(row["feature"])
    injected = {"monthly_charges", "days_since_last_login", "plan"}
    assert drifted == {day: injected for day in ("2026-10-12", "2026-10-13", "2026-10-14")}
    per_day = len(config.dataset.features) * 2 + 2  # two methods per feature, and __score__
    assert report.num_rows == per_day * len(SAMPLE_DAYS)
    assert _manifest(store, "2026-10-13")["drifted_features"] == sorted(injected)
    # The statistics data/sample/README.md quotes (computed there with scipy and numpy from
    # the raw rows): PSI to its 3 decimals, KS within that plus the sketch's 1/2048.
    quoted = {
        ("monthly_charges", "ks"): (0.130, 0.168, 0.210),
        ("monthly_charges", "psi"): (0.274, 0.556, 0.778),
        ("days_since_last_login", "ks"): (0.142, 0.207, 0.271),
        ("days_since_last_login", "psi"): (0.159, 0.365, 0.778),
    }
    statistic = {
        (str(r["partition"]), r["feature"], r["method"]): r["statistic"] for r in report.to_pylist()
    }
    for (feature, method), values in quoted.items():
        for day, value in zip(("2026-10-12", "2026-10-13", "2026-10-14"), values, strict=True):
            slack = 0.0005 + (1 / 2048 if method == "ks" else 0)
            assert abs(statistic[day, feature, method] - value) <= slack, (day, feature, method)

    # Scoring again scores nothing and rewrites nothing.
    before = {p: p.stat().st_mtime_ns for p in (store / "scores").rglob("*")}
    again = score(config=str(sample), return_state=True)
    assert again.is_completed() and again.name == "NothingToDo"
    assert {p: p.stat().st_mtime_ns for p in (store / "scores").rglob("*")} == before
    assert not [p for p in (store / "_staging").iterdir() if not p.name.startswith(".")]


def test_rescore_replaces_a_partition_with_identical_scores(sample, prefect_api):
    config = load_config(sample)
    store = Path(config.store)
    train(config)
    assert score(config=str(sample), partition="2026-10-05", return_state=True).is_completed()
    first = _scores(store, "2026-10-05")
    first_run = _manifest(store, "2026-10-05")["run_id"]
    # The work outside the chunks, timed for the benchmark's overhead (bench/bench.py).
    assert _manifest(store, "2026-10-05")["plan_seconds"] > 0
    assert _manifest(store, "2026-10-05")["publish_seconds"] > 0
    # Asked again without --rescore: nothing to do, said of that partition, with the way
    # to score it again (it said "every partition is scored by v0001").
    idle = score(config=str(sample), partition="2026-10-05", return_state=True)
    assert (idle.name, idle.message) == (
        "NothingToDo",
        "nothing to do: partition 2026-10-05 is scored by v0001 (--rescore scores it again)",
    )

    time.sleep(0.01)
    state = score(config=str(sample), partition="2026-10-05", rescore=True, return_state=True)
    assert state.is_completed()
    second = _scores(store, "2026-10-05")
    assert _manifest(store, "2026-10-05")["run_id"] != first_run
    assert second.column("customer_id").equals(first.column("customer_id"))
    np.testing.assert_allclose(
        second.column("score").to_numpy(), first.column("score").to_numpy(), rtol=0, atol=1e-12
    )
    # Only the new files are there: the old partition folder was replaced whole.
    assert set(second.column("run_id").to_pylist()) == {_manifest(store, "2026-10-05")["run_id"]}
    assert sorted(p.name for p in (store / "scores").iterdir()) == ["dt=2026-10-05"]
    assert not list((store / "_staging").iterdir())


def test_a_file_arriving_late_in_a_scored_partition_is_scored_with_it(sample, prefect_api, caplog):
    """A scored partition whose files changed since (here a file arrived late) is scored
    again, whole: its late rows were otherwise left out for good, as the partition counted
    as done. Unchanged, it is not."""
    import logging

    config = load_config(sample)
    store, day = Path(config.store), "2026-10-05"
    folder = Path(config.source) / "incoming" / f"dt={day}"
    train(config)
    assert score(config=str(sample), partition=day, return_state=True).is_completed()
    first = _manifest(store, day)
    assert set(first["file_sizes"]) == set(first["files"]) and len(first["files"]) == 2
    late = pq.read_table(sorted(folder.glob("*.parquet"))[0]).slice(0, 500)
    ids = late.schema.get_field_index("customer_id")
    late_ids = [10_000_000 + i for i in range(500)]  # ids no other file has
    late = late.set_column(ids, "customer_id", pa.array(late_ids, type=pa.int64()))
    pq.write_table(late, folder / "late.parquet")

    with caplog.at_level(logging.WARNING):
        state = score(config=str(sample), partition=day, return_state=True)
    assert state.is_completed() and state.name == "Completed", state.message
    second = _manifest(store, day)
    assert second["run_id"] != first["run_id"]
    assert second["rows_in"] == first["rows_in"] + 500
    assert f"incoming/dt={day}/late.parquet" in second["files"]
    scored = set(_scores(store, day).column("customer_id").to_pylist())
    assert set(late_ids) <= scored
    assert (
        f"partition {day} changed since churn v0001 scored it: added incoming/dt={day}/late.parquet"
        "; scoring it again"
    ) in caplog.text

    again = score(config=str(sample), partition=day, return_state=True)
    assert again.is_completed() and again.name == "NothingToDo", again.message


def test_an_emptied_manifest_scores_its_partition_again_and_the_others_still(
    sample, prefect_api, caplog
):
    """A partition whose `_SUCCESS` was emptied is scored again, with a warning naming the
    file, and the run goes on with the other partitions: the manifest's JSONDecodeError
    failed the whole run before any was scored."""
    import logging

    config = load_config(sample)
    store = Path(config.store)
    train(config)
    for folder in (Path(config.source) / "incoming").iterdir():
        if folder.name not in ("dt=2026-10-05", "dt=2026-10-06"):
            shutil.rmtree(folder)
    assert score(config=str(sample), partition="2026-10-05", return_state=True).is_completed()
    first = _manifest(store, "2026-10-05")
    manifest = store / "scores" / "dt=2026-10-05" / "_SUCCESS"
    manifest.write_text("")

    with caplog.at_level(logging.WARNING):
        state = score(config=str(sample), return_state=True)

    assert state.is_completed() and state.name == "Completed", state.message
    assert sorted(o["partition"] for o in state.result()) == ["2026-10-05", "2026-10-06"]
    again = _manifest(store, "2026-10-05")
    assert again["run_id"] != first["run_id"] and again["rows_scored"] == first["rows_scored"]
    assert _scores(store, "2026-10-05").num_rows == first["rows_scored"]
    assert (
        f"partition 2026-10-05: {manifest}: not valid JSON (0 bytes): Expecting value: line 1 "
        "column 1 (char 0); scoring it again as not scored"
    ) in caplog.text


def _unreadable(path: Path) -> None:
    path.write_bytes(b"not a parquet file")


def _too_many_bad_rows(path: Path) -> None:
    table = pq.read_table(path)
    bad = table.num_rows // 5  # 20% null ids > max_bad_row_fraction
    ids = table.column("customer_id").combine_chunks()
    nulls = pa.array([None] * bad, type=ids.type)
    table = table.set_column(
        table.schema.get_field_index("customer_id"),
        "customer_id",
        pa.concat_arrays([nulls, ids.slice(bad)]),
    )
    pq.write_table(table, path)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [(_unreadable, "not a readable Parquet file"), (_too_many_bad_rows, "failed validation")],
)
def test_a_held_rescore_keeps_the_earlier_output_whole_and_the_next_run_tries_again(
    sample, prefect_api, damage, reason
):
    """A partition scored, then its source changed so that a `--rescore` holds it: the
    earlier output (scores, drift report, rejected rows) stays exactly as it was, the hold
    goes beside it (`quarantine/dt=D/_held/`), and once the file is fixed a plain run scores
    the partition again, replacing both."""
    config = load_config(sample)
    store = Path(config.store)
    train(config)
    day = "2026-10-11"  # it has rejected rows: its quarantine folder holds data
    assert score(config=str(sample), partition=day, return_state=True).is_completed()
    first_run = _manifest(store, day)["run_id"]

    def outputs() -> dict:
        return {
            p.relative_to(store): p.read_bytes()
            for kind in ("scores", "drift", "quarantine")
            for p in (store / kind / f"dt={day}").rglob("*")
            if p.is_file() and "_held" not in p.parts
        }

    before = outputs()
    assert any(p.parts[0] == "quarantine" and p.suffix == ".parquet" for p in before)
    source = sorted((Path(config.source) / "incoming" / f"dt={day}").glob("*.parquet"))[0]
    good = source.read_bytes()
    damage(source)

    held = score(config=str(sample), partition=day, rescore=True, return_state=True)
    assert held.name == "CompletedWithHeld", held.message
    assert outputs() == before
    hold = json.loads((store / "quarantine" / f"dt={day}" / "_held" / "_HELD").read_text())
    assert hold["earlier_output_kept"]["run_id"] == first_run
    assert reason in hold["reasons"][0]

    source.write_bytes(good)
    again = score(config=str(sample), partition=day, return_state=True)  # no --rescore
    assert again.is_completed() and again.name != "NothingToDo", again.message
    assert _manifest(store, day)["run_id"] not in (first_run, None)
    assert not (store / "quarantine" / f"dt={day}" / "_held").exists()
    assert any(p.parts[0] == "quarantine" and p.suffix == ".parquet" for p in outputs())


def test_scores_do_not_depend_on_workers_or_chunk_size(sample, prefect_api, tmp_path):
    config = load_config(sample)
    train(config)
    text = sample.read_text()
    results = {}
    source = tmp_path / "two-days"  # one run scores both days
    for day in ("2026-10-05", "2026-10-11"):
        shutil.copytree(
            Path(config.source) / "incoming" / f"dt={day}", source / "incoming" / f"dt={day}"
        )
    for workers, chunk_rows in ((1, 3_000), (2, 100_000)):
        path = write_config(
            tmp_path / f"w{workers}.toml",
            text,
            storage={"source": str(source), "store": str(tmp_path / f"store-{workers}")},
            scoring={"workers": workers, "chunk_rows": chunk_rows},
        )
        # Same registered model in both stores: copy the registry, not retrain.
        shutil.copytree(Path(config.store) / "models", tmp_path / f"store-{workers}" / "models")
        assert score(config=str(path), return_state=True).is_completed()
        results[workers] = _scores(tmp_path / f"store-{workers}")
        chunks = _manifest(tmp_path / f"store-{workers}", "2026-10-05")["chunks"]
        # 2 files x 3 row groups, or both files in one chunk (small files, written alike)
        assert chunks == (6 if chunk_rows == 3_000 else 1)
    # Drift from 6 chunks merged equals drift from 1: the counts add up exactly.
    reports = [
        pads.dataset(tmp_path / f"store-{w}" / "drift", partitioning="hive")
        .to_table()
        .sort_by([("partition", "ascending"), ("feature", "ascending"), ("method", "ascending")])
        for w in (1, 2)
    ]
    for column in ("statistic", "p_value", "n_current", "drifted"):
        assert reports[0].column(column).equals(reports[1].column(column))
    one, two = results[1], results[2]
    assert one.num_rows == two.num_rows == 20_987 + 20_771
    assert one.column("customer_id").equals(two.column("customer_id"))
    assert np.max(np.abs(one.column("score").to_numpy() - two.column("score").to_numpy())) <= 1e-12


def _split(table: pa.Table, folder: Path, rows: int) -> list[Path]:
    """`table` as files of `rows` rows each, in order: a writer's many small files."""
    folder.mkdir(parents=True)
    paths = []
    for i, start in enumerate(range(0, table.num_rows, rows)):
        paths.append(folder / f"part-{i:05d}.parquet")
        pq.write_table(table.slice(start, rows), paths[-1])
    return paths


def test_small_files_share_a_chunk_and_score_as_one_file_does(sample, prefect_api, tmp_path):
    """A partition written as many small files is scored in chunks of several files (one
    task run, one scores file), with the scores of the same rows in one file, and each
    rejected row's `source_file` naming the file it came from."""
    config = load_config(sample)
    train(config)
    day = "2026-10-11"  # it has rejected rows
    rows = pq.read_table(Path(config.source) / "incoming" / f"dt={day}")
    stores = {}
    for layout, size in (("one", rows.num_rows), ("many", 3_000)):
        files = _split(rows, tmp_path / layout / "incoming" / f"dt={day}", size)
        store = tmp_path / f"store-{layout}"
        path = write_config(
            tmp_path / f"{layout}.toml",
            sample.read_text(),
            storage={"source": str(tmp_path / layout), "store": str(store)},
            scoring={"chunk_rows": 100_000},
        )
        shutil.copytree(Path(config.store) / "models", store / "models")
        assert score(config=str(path), return_state=True).is_completed()
        assert _manifest(store, day)["chunks"] == 1
        stores[layout] = store
    assert len(files) == 7
    one, many = (_scores(stores[k], day) for k in ("one", "many"))
    assert one.num_rows == many.num_rows > 0
    assert one.column("customer_id").equals(many.column("customer_id"))
    assert one.column("score").equals(many.column("score"))

    quarantined = pq.read_table(stores["many"] / "quarantine" / f"dt={day}")
    assert quarantined.num_rows > 0
    ids_in = {  # an id may be in two files: that is why it is rejected
        f"incoming/dt={day}/{f.name}": set(pq.read_table(f).column("customer_id").to_pylist())
        for f in files
    }
    named = quarantined.select(["customer_id", "source_file"]).to_pylist()
    assert len({r["source_file"] for r in named}) > 1
    for row in named:
        assert row["customer_id"] in ids_in[row["source_file"]]


def test_every_undecodable_file_of_a_chunk_of_small_files_is_named(sample, tmp_path):
    """Two files with a corrupt data page (their footers read well, so planning cannot
    tell) in one chunk of small files: the chunk fails naming both, not only the first."""
    from batchscore import partitions, scoring
    from batchscore.registry import Registry

    config = load_config(sample)
    train(config)
    day = "2026-10-11"
    rows = pq.read_table(Path(config.source) / "incoming" / f"dt={day}")
    files = _split(rows, tmp_path / "many" / "incoming" / f"dt={day}", 3_000)
    path = write_config(
        tmp_path / "many.toml",
        sample.read_text(),
        storage={"source": str(tmp_path / "many"), "store": config.store},
        scoring={"chunk_rows": 100_000},
    )
    many = load_config(path)
    for f in (files[2], files[5]):
        pq.write_table(pq.read_table(f), f, compression="zstd")  # pages a flip corrupts
        corrupt_a_data_page(f)
    model = Registry(many.store, many.dataset.name).champion_ref()
    plan = partitions.plan_partition(many, day, model)
    assert not plan.held and len(plan.chunks) == 1
    with pytest.raises(scoring.UnreadableFile) as raised:
        scoring.score_chunk(many, plan.chunks[0], model, plan, "run")
    assert [p.file for p in raised.value.problems] == [
        f"incoming/dt={day}/{f.name}" for f in (files[2], files[5])
    ]
    assert all("not a readable Parquet file" in p.reason for p in raised.value.problems)


def test_a_damaged_record_of_a_staged_chunk_scores_the_chunk_again(sample):
    """A chunk's record (`_staging/.../chunks/part-N.json`) is how a resumed run knows the
    chunk finished; an emptied one failed the chunk, and so the partition, with a bare
    JSONDecodeError. The chunk is scored again instead, and its record rewritten; so it is
    when the record lacks a key, or holds another type there."""
    from batchscore import partitions, scoring
    from batchscore.registry import Registry

    write_config(sample, sample.read_text(), retrain={"lightgbm": {"max_rounds": 20}})
    config = load_config(sample)
    train(config)
    model = Registry(config.store, config.dataset.name).champion_ref()
    plan = partitions.plan_partition(config, "2026-10-11", model)
    chunk = plan.chunks[0]
    first = scoring.score_chunk(config, chunk, model, plan, "run-1")
    record = Path(scoring.staging_location(config, plan, model).path("chunks", "part-00000.json"))
    assert scoring.score_chunk(config, chunk, model, plan, "run-2").reused
    whole = json.loads(record.read_text())
    feature = sorted(whole["drift_counts"])[0]
    # Emptied; a key missing (was a TypeError, or a KeyError for `rows_quarantined`); a
    # string for a count (reused, and publishing failed on it).
    for damaged in (
        "",
        "{}",
        json.dumps({k: v for k, v in whole.items() if k != "rows_quarantined"}),
        json.dumps({**whole, "rows_scored": str(whole["rows_scored"])}),
        json.dumps(
            {
                **whole,
                "drift_counts": {
                    **whole["drift_counts"],
                    feature: {**whole["drift_counts"][feature], "bin_counts": "1,2"},
                },
            }
        ),
    ):
        record.write_text(damaged)

        again = scoring.score_chunk(config, chunk, model, plan, "run-3")

        assert not again.reused, damaged[:40]
        assert (again.rows_in, again.rows_scored, again.rows_quarantined) == (
            first.rows_in,
            first.rows_scored,
            first.rows_quarantined,
        )
        assert again.drift_counts == first.drift_counts
        assert scoring.score_chunk(config, chunk, model, plan, "run-4").reused

    # A key the record does not use (added by hand, or by a later version): still reused
    # (it was a TypeError from the dataclass, which failed the partition).
    record.write_text(json.dumps({**json.loads(record.read_text()), "note": "checked"}))
    kept = scoring.score_chunk(config, chunk, model, plan, "run-5")
    assert kept.reused and kept.drift_counts == first.drift_counts


def test_chunks_staged_by_a_run_with_other_workers_are_not_reused_and_are_deleted(
    sample, prefect_api, tmp_path
):
    """A large row group is cut into one range per worker, so the cut depends on the worker
    count: a run resumed with other workers (or on a machine with other cores) must not mix
    in chunks a killed run staged for another cut. It did: the accounting check refused to
    publish (rows read > rows in), on that run and every later one."""
    from batchscore import partitions, scoring
    from batchscore.registry import Registry

    config = load_config(sample)
    train(config)
    day = "2026-10-05"
    source = tmp_path / "one-day"
    shutil.copytree(
        Path(config.source) / "incoming" / f"dt={day}", source / "incoming" / f"dt={day}"
    )
    store = Path(config.store)  # where the model was registered
    paths = {
        workers: write_config(
            tmp_path / f"w{workers}.toml",
            sample.read_text(),
            storage={"source": str(source), "store": str(store)},
            scoring={"workers": workers, "chunk_rows": 3_000},
        )
        for workers in (1, 2)
    }
    # A run with one worker is killed after its first chunks were staged.
    one = load_config(paths[1])
    model = Registry(one.store, one.dataset.name).champion_ref()
    plan = partitions.plan_partition(one, day, model)
    for chunk in plan.chunks[:3]:
        scoring.score_chunk(one, chunk, model, plan, "killed-run")
    two = partitions.plan_partition(load_config(paths[2]), day, model)
    assert len(two.chunks) != len(plan.chunks)  # the sample's row groups are cut differently

    other_day = store / "_staging" / "dt=2026-10-06-v0001-0123456789abcdef"
    (other_day / "chunks").mkdir(parents=True)
    (other_day / "chunks" / "part-00000.json").write_text("{}")

    assert score(config=str(paths[2]), return_state=True).is_completed()
    manifest = _manifest(store, day)
    assert manifest["status"] == "scored" and manifest["reused_chunks"] == 0
    assert two.fingerprint != plan.fingerprint
    # Publishing the partition deleted what the killed attempt had staged for it, and only
    # that: another partition's staged work waits for its own run.
    assert [p.name for p in (store / "_staging").iterdir() if not p.name.startswith(".")] == [
        other_day.name
    ]
    assert manifest["rows_in"] == sum(
        pq.ParquetFile(f).metadata.num_rows for f in (source / "incoming" / f"dt={day}").iterdir()
    )


class _RecordingRunner:
    """A task runner that records what is submitted to it (and runs it in a real pool)."""

    def __init__(self, runner):
        self.runner, self.submitted, self.chunks = runner, [], []

    def submit(self, task, parameters):
        self.submitted.append(task.name)
        if "chunk" in parameters:
            self.chunks.append(parameters["chunk"])
        return self.runner.submit(task, parameters)


def test_work_of_one_chunk_is_scored_in_the_flow_process_and_more_in_workers(
    sample, prefect_api, tmp_path
):
    """A partition within chunk_rows never starts a worker process (their start-up costs
    more than its rows); a partition of several chunks goes to the workers, so the flow
    process never sees its rows. Both give the same scores."""
    from batchscore.registry import Registry
    from flows.score import ForkedProcessPool, score_partitions

    config = load_config(sample)
    train(config)
    day = "2026-10-05"  # 20,987 rows in 2 files
    scores = {}
    in_workers = ["plan-partition"] + ["score-chunk"] * 6 + ["publish-partition"]
    for chunk_rows, expected in ((100_000, []), (3_000, in_workers)):
        path = write_config(
            tmp_path / f"c{chunk_rows}.toml",
            sample.read_text(),
            storage={"source": config.source, "store": str(tmp_path / f"store-{chunk_rows}")},
            scoring={"workers": 1, "chunk_rows": chunk_rows},
        )
        shutil.copytree(Path(config.store) / "models", tmp_path / f"store-{chunk_rows}" / "models")
        cfg = load_config(path)
        model = Registry(cfg.store, cfg.dataset.name).champion_ref()
        with ForkedProcessPool(max_workers=1) as pool:
            runner = _RecordingRunner(pool)
            outcomes, failures = score_partitions(runner, cfg, model, {day: None}, "run")
        assert failures == [] and [o.status for o in outcomes] == ["scored"]
        assert runner.submitted == expected
        scores[chunk_rows] = _scores(tmp_path / f"store-{chunk_rows}", day)
    one, many = scores[100_000], scores[3_000]
    assert one.num_rows == many.num_rows > 20_000
    assert one.column("customer_id").equals(many.column("customer_id"))
    assert np.array_equal(one.column("score").to_numpy(), many.column("score").to_numpy())


def test_partitions_are_published_as_their_chunks_finish_and_the_last_in_a_worker(
    sample, prefect_api, tmp_path
):
    """Every partition but the last is published in the flow process while the workers score
    the next ones; the last, when the workers are idle, in a worker (which has SciPy loaded)."""
    from batchscore.registry import Registry
    from flows.score import ForkedProcessPool, score_partitions

    config = load_config(sample)
    train(config)
    days = ["2026-10-05", "2026-10-06", "2026-10-07"]
    path = write_config(
        tmp_path / "three.toml",
        sample.read_text(),
        storage={"source": config.source, "store": config.store},
        scoring={"workers": 2, "chunk_rows": 3_000},
    )
    cfg = load_config(path)
    model = Registry(cfg.store, cfg.dataset.name).champion_ref()
    with ForkedProcessPool(max_workers=2) as pool:
        runner = _RecordingRunner(pool)
        outcomes, failures = score_partitions(runner, cfg, model, dict.fromkeys(days), "run")
    assert failures == [] and [(o.partition, o.status) for o in outcomes] == [
        (d, "scored") for d in days
    ]
    assert runner.submitted.count("publish-partition") == 1
    assert runner.submitted[-1] == "publish-partition"
    # Each partition's chunks are submitted largest first, so that its smallest end the run
    # and the workers finish together: 2026-10-05's files each end with a small row group.
    for day in days:
        rows = [c.rows for c in runner.chunks if c.partition == day]
        assert rows == sorted(rows, reverse=True)
    planned = [c.rows for c in sorted(runner.chunks, key=lambda c: (c.partition, c.index))]
    assert planned[:10] == [2500, 2500, 2500, 2500, 493, 2500, 2500, 2500, 2500, 494]
    for day in days:
        manifest = _manifest(Path(cfg.store), day)
        assert manifest["status"] == "scored"
        assert (Path(cfg.store) / "drift" / f"dt={day}").is_dir()


def test_a_reason_shared_by_failed_partitions_is_said_once_in_the_runs_message():
    """A lost worker fails every partition still being scored, each with the same reason of
    three lines: the run's message said it once per partition."""
    lost = "worker process 7 was killed by SIGKILL (...). Run again"
    failures = [("2026-10-01", lost), ("2026-10-02", "cannot read x.parquet"), ("2026-10-03", lost)]
    assert failed_message(failures) == (
        f"3 partition(s) failed: 2026-10-01, 2026-10-03: {lost} | 2026-10-02: cannot read x.parquet"
    )


def test_a_reason_shared_by_failed_partitions_and_performance_is_said_once():
    """A lost worker fails the partitions being scored and the performance being measured,
    with the same reason: the run's message said it twice (a CI run failed so)."""
    lost = "worker process 7 was killed by SIGKILL (...). Run again"
    failures = [("2026-10-02", lost)]
    message = failed_message(failures) + not_measured_message({"2026-10-01": lost}, failures)

    assert message.count(lost) == 1, message
    assert message.endswith(
        "; realised performance not measured for 1 partition(s) (2026-10-01), "
        "2026-10-01 for the same reason as the failed partitions"
    )
    other = {"2026-10-01": "labels are bad", "2026-10-03": lost}
    assert not_measured_message(other, failures) == (
        "; realised performance not measured for 2 partition(s) (2026-10-01, 2026-10-03): "
        "2026-10-01: labels are bad (the others' reasons: their performance tasks)"
    )
    both = {"2026-10-01": lost, "2026-10-03": lost}
    assert not_measured_message(both, failures) == (
        "; realised performance not measured for 2 partition(s) (2026-10-01, 2026-10-03), "
        "2026-10-01, 2026-10-03 for the same reason as the failed partitions"
    )
    assert not_measured_message({}, failures) == ""


def test_a_partitions_log_line_writes_its_counts_as_the_commands_table_does():
    """19319 rows in, 2002 rows/s in the log read as other numbers than 19,319 in the table
    printed beside it."""
    from batchscore.scoring import PartitionOutcome
    from tasks.scoring import outcome_line

    outcome = PartitionOutcome("2026-10-01", "scored", 1_219_319, 1_219_314, 5, 9.65)

    assert outcome_line(outcome) == (
        "partition 2026-10-01 scored: 1,219,319 rows in, 1,219,314 scored, 5 quarantined, "
        "9.7 s, 126,354 rows/s"
    )
