"""Source and store on an S3 API (moto on loopback), chunks scored on a Dask cluster
(distributed.LocalCluster, two worker processes): the outputs equal those of a local
process-pool run of the same data, ids byte for byte and scores to 1e-12."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import SAMPLE, copy_sample, write_config
from objectstore import download, keys, new_bucket, upload

from batchscore.config import load_config
from batchscore.storage import (
    LeaseLost,
    Location,
    check_lease,
    release_lease,
    renew_lease,
    try_lease,
)
from batchscore.training import train
from flows.score import score

ROOT = Path(__file__).resolve().parent.parent
# Labelled (realised performance), broken rows in quarantine, undrifted, drifted.
DAYS = ["2026-10-10", "2026-10-11", "2026-10-12", "2026-10-14"]


@pytest.fixture(scope="module")
def dask_cluster():
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prefect_api, s3_api, dask_cluster):
    """The same partitions and model scored twice: locally with the process pool, and on
    S3 with the Dask runner. Returns both stores as local folders (the S3 one downloaded)."""
    base = tmp_path_factory.mktemp("s3")
    source = copy_sample(base / "source", DAYS)
    common = dict(
        retrain={"on_drift": "off", "lightgbm": {"max_rounds": 40}},
        scoring={"chunk_rows": 8_000, "workers": 2},  # three chunks per partition
    )
    local = write_config(
        base / "local.toml",
        (ROOT / "batchscore.toml").read_text(),
        storage={"source": str(source), "store": str(base / "local-store")},
        **common,
    )
    trainer = write_config(  # trained on the whole sample's labels, into the local store
        base / "train.toml",
        local.read_text(),
        storage={"source": str(SAMPLE), "store": str(base / "local-store")},
    )
    train(load_config(trainer))
    assert score(config=str(local), return_state=True).is_completed()

    bucket = new_bucket()
    upload(source, f"s3://{bucket}/source")
    upload(base / "local-store" / "models", f"s3://{bucket}/store/models")  # the same model
    remote = write_config(
        base / "s3.toml",
        (ROOT / "batchscore.toml").read_text(),
        storage={"source": f"s3://{bucket}/source", "store": f"s3://{bucket}/store"},
        retrain=common["retrain"],
        scoring={**common["scoring"], "runner": "dask", "dask_address": dask_cluster},
    )
    state = score(config=str(remote), return_state=True)
    assert state.is_completed(), state.message
    return {
        "local": base / "local-store",
        "s3": download(f"s3://{bucket}/store", base / "s3-store"),
        "bucket": bucket,
        "state": state,
    }


def _table(store: Path, kind: str, day: str, key: str):
    return pq.read_table(store / kind / f"dt={day}").sort_by(key)


def test_scores_on_s3_with_dask_equal_the_local_process_pool_run(runs):
    for day in DAYS:
        local = _table(runs["local"], "scores", day, "customer_id")
        remote = _table(runs["s3"], "scores", day, "customer_id")
        assert remote.num_rows == local.num_rows > 0
        ids_l, ids_r = local.column("customer_id"), remote.column("customer_id")
        assert ids_r.to_numpy().tobytes() == ids_l.to_numpy().tobytes()
        np.testing.assert_allclose(
            remote.column("score").to_numpy(), local.column("score").to_numpy(), rtol=0, atol=1e-12
        )
        assert set(remote.column("model_version").to_pylist()) == {"v0001"}
        manifest = json.loads((runs["s3"] / "scores" / f"dt={day}" / "_SUCCESS").read_text())
        expected = json.loads((runs["local"] / "scores" / f"dt={day}" / "_SUCCESS").read_text())
        for key in ("rows_in", "rows_scored", "rows_quarantined", "drifted_features", "chunks"):
            assert manifest[key] == expected[key], (day, key)


def test_quarantine_and_drift_on_s3_equal_the_local_run(runs):
    local = _table(runs["local"], "quarantine", "2026-10-11", "customer_id")
    remote = _table(runs["s3"], "quarantine", "2026-10-11", "customer_id")
    assert remote.num_rows == local.num_rows == 5
    assert remote.column("reason").to_pylist() == local.column("reason").to_pylist()
    for day in DAYS:
        local = _table(runs["local"], "drift", day, "feature").select(["feature", "statistic"])
        remote = _table(runs["s3"], "drift", day, "feature").select(["feature", "statistic"])
        assert remote.column("feature").to_pylist() == local.column("feature").to_pylist()
        np.testing.assert_allclose(
            np.nan_to_num(remote.column("statistic").to_numpy(zero_copy_only=False)),
            np.nan_to_num(local.column("statistic").to_numpy(zero_copy_only=False)),
            rtol=0,
            atol=1e-12,
        )


def test_no_temporary_object_and_no_leftover_staging_or_lease_on_s3(runs):
    store = f"s3://{runs['bucket']}/store"
    objects = keys(store)
    tables = [k for k in objects if k.split("/")[0] in ("scores", "quarantine", "drift")]
    assert tables
    assert not [k for k in tables if k.rsplit("/", 1)[-1].startswith(".")]
    assert not [k for k in objects if k.startswith(("_staging/", "_leases/dt="))]
    scored = {k.split("/")[1] for k in tables if k.startswith("scores/")}
    assert scored == {p.name for p in (runs["local"] / "scores").iterdir()}


def test_a_second_run_on_s3_has_nothing_to_do(runs):
    config = load_config(Path(runs["s3"]).parent / "s3.toml")
    state = score(config=config.path, return_state=True)
    assert state.is_completed() and state.name == "NothingToDo", state.message


def test_s3_leases_exclude_a_second_holder_and_take_over_an_expired_one(s3_api):
    leases = Location(f"s3://{new_bucket()}/store/_leases")
    name = "dt=2026-10-01.lease"
    ours, holder = try_lease(leases, name, ttl_seconds=600)
    assert ours is not None and holder is None
    again, holder = try_lease(leases, name, ttl_seconds=600)
    assert again is None and holder["token"] == ours["token"]
    release_lease(ours)
    short, _ = try_lease(leases, name, ttl_seconds=-1)  # already expired ...
    # ... and held from another machine (a holder on this one is kept while it lives).
    leases.write_bytes(json.dumps({**short, "host": "elsewhere"}).encode(), name)
    taken, _ = try_lease(leases, name, ttl_seconds=600)
    assert taken is not None and taken["token"] != short["token"]
    release_lease(short)  # no longer its lease: must not delete the new holder's
    busy, holder = try_lease(leases, name, ttl_seconds=600)
    assert busy is None and holder["token"] == taken["token"]
    # Renewed by a conditional PUT while it is the holder's; lost once taken over.
    assert renew_lease(taken) and leases.read_json(name)["expires_at"] == taken["expires_at"]
    check_lease(taken)
    assert renew_lease(short) is False
    with pytest.raises(LeaseLost):
        check_lease(short)


def test_publishing_on_s3_replaces_a_folder_whole_and_leaves_no_staging(s3_api):
    store = Location(f"s3://{new_bucket()}/store")
    old = store.child("_staging", "old")
    old.write_bytes(b"a", "part-00000.parquet")
    old.write_bytes(b"b", "part-00001.parquet")
    old.write_json({"run": 1}, "_SUCCESS")
    store.publish_dir(old, "scores", "dt=2026-01-01")
    new = store.child("_staging", "new")
    new.write_bytes(b"c", "part-00000.parquet")
    new.write_json({"run": 2}, "_SUCCESS")
    store.publish_dir(new, "scores", "dt=2026-01-01")

    assert store.files("scores", "dt=2026-01-01") == ["_SUCCESS", "part-00000.parquet"]
    assert store.read_bytes("scores", "dt=2026-01-01", "part-00000.parquet") == b"c"
    assert store.read_json("scores", "dt=2026-01-01", "_SUCCESS") == {"run": 2}
    assert store.files("_staging") == []


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_parquet_file_written_table_by_table_appears_whole_or_not_at_all(
    where, request, tmp_path
):
    """`Location.parquet_writer`: one row group per table written, visible once the block
    ends; locally an error leaves neither the file nor its temporary; nothing written is an
    error naming the file."""
    import pyarrow as pa

    if where == "s3":
        request.getfixturevalue("s3_api")
        store = Location(f"s3://{new_bucket()}/store")
    else:
        store = Location(str(tmp_path / "store"))
    with store.parquet_writer("scores", "part-00000.parquet") as out:
        for start in (0, 3, 6):
            out.write(pa.table({"id": pa.array(range(start, start + 3), pa.int64())}))
        if where == "local":
            assert "part-00000.parquet" not in store.files("scores"), "visible too soon"
    read = pq.ParquetFile(store.fs.open_input_file(store.path("scores", "part-00000.parquet")))
    assert read.metadata.num_row_groups == 3
    assert read.read().column("id").to_pylist() == list(range(9))

    with (
        pytest.raises(ValueError, match="part-00001.parquet: no table was written"),
        store.parquet_writer("scores", "part-00001.parquet"),
    ):
        pass
    if where == "local":
        with (
            pytest.raises(RuntimeError, match="the source changed"),
            store.parquet_writer("scores", "part-00002.parquet") as out,
        ):
            out.write(pa.table({"id": pa.array([1], pa.int64())}))
            raise RuntimeError("the source changed")
        assert store.files("scores") == ["part-00000.parquet"]
        assert sorted(p.name for p in (tmp_path / "store" / "scores").iterdir()) == [
            "part-00000.parquet"
        ]
        # A writer killed mid-file leaves its temporary; publishing the folder drops it.
        staging = store.child("_staging", "run")
        staging.write_bytes(b"{}", "_SUCCESS")
        (tmp_path / "store" / "_staging" / "run" / ".part-00003.parquet.dead.tmp").write_bytes(b"x")
        store.publish_dir(staging, "published")
        assert sorted(p.name for p in (tmp_path / "store" / "published").iterdir()) == ["_SUCCESS"]


def test_an_endpoint_in_the_uri_is_used_and_kept_by_children(s3_api, monkeypatch):
    bucket = new_bucket()
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # only the URI says where the store is
    host = s3_api.removeprefix("http://")
    root = Location(f"s3://{bucket}/store?endpoint_override={host}&scheme=http")
    child = root.child("_leases")
    assert child.uri == f"s3://{bucket}/store/_leases?endpoint_override={host}&scheme=http"
    child.write_json({"x": 1}, "a.json")
    assert root.read_json("_leases", "a.json") == {"x": 1}
    ours, _ = try_lease(child, "l.lease", ttl_seconds=60)  # boto3 finds the endpoint too
    assert ours is not None
    release_lease(ours)
    assert root.files("_leases") == ["a.json"]


def test_registering_on_s3_numbers_versions_and_writes_metadata_last(s3_api):
    from batchscore.registry import Registry

    registry = Registry(f"s3://{new_bucket()}/store", "m")
    first = registry.register("tree text 1", {"note": "a"}, {"reference.json": b"{}"})
    second = registry.register("tree text 2", {"note": "b"})
    assert (first, second) == ("v0001", "v0002")
    assert registry.versions() == ["v0001", "v0002"]
    registry.verify(registry.ref("v0001"))
    assert registry.metadata("v0002")["note"] == "b"
    assert registry.root.files() == [
        "v0001/.claim",
        "v0001/metadata.json",
        "v0001/model.txt",
        "v0001/reference.json",
        "v0002/.claim",
        "v0002/metadata.json",
        "v0002/model.txt",
    ]


def test_the_cli_lists_models_and_shows_drift_from_an_s3_store(runs, capsys):
    from batchscore.cli import main

    config = str(Path(runs["s3"]).parent / "s3.toml")
    assert main(["models", "list", "--config", config]) == 0
    assert "v0001  champion" in capsys.readouterr().out
    # A registration killed between claiming its number and writing metadata.json:
    store = Location(load_config(config).store)
    assert store.create_exclusive(b"", "models", "churn", "v0002", ".claim")
    assert main(["models", "list", "--config", config]) == 0
    listed = capsys.readouterr().out
    assert "v0001  champion" in listed
    assert (
        "v0002  incomplete: no metadata.json (its registration did not finish, or the file "
        "was deleted)"
    ) in listed
    assert main(["drift", "show", "--config", config, "--partition", "2026-10-14"]) == 0
    out = capsys.readouterr().out
    assert "partition 2026-10-14" in out
    assert "feature(s) drifted: days_since_last_login, monthly_charges, plan" in out
    assert f"s3://{runs['bucket']}/store/drift/dt=2026-10-14/_report.html" in out
