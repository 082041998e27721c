"""Crash safety and concurrent writers, with real processes killed with SIGKILL.

`batchscore score` runs as a subprocess against the session's Prefect API; it is killed at
seeded random moments (the flow process with its workers, or one worker), and after every
kill a reader of <store>/scores/ must see only complete partitions. A final run must then
give exactly the scores of an uninterrupted run.

Each test runs with the store on a local disk and on an S3 API (moto on loopback; fewer
kills there, to keep the suite short). On S3 a reader trusts a partition folder only once its
`_SUCCESS` exists (DESIGN.md): a folder without it may exist while it is being (re)published,
and must never hold a temporary object.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import copy_sample, output_of, start_score, write_config
from objectstore import download, keys, new_bucket, upload

from batchscore.config import load_config
from batchscore.training import train
from flows.score import score

ROOT = Path(__file__).resolve().parents[2]
DAYS = [f"2026-10-{d:02d}" for d in range(1, 7)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, prefect_api):
    """Six labelled partitions, a model trained on them, and an uninterrupted run's scores."""
    base = tmp_path_factory.mktemp("reference")
    source = copy_sample(base / "source", DAYS)  # labelled too: the model is trained on them
    config = _config(base / "reference.toml", {"source": str(source), "store": str(base / "store")})
    train(load_config(config))
    shutil.copytree(base / "store" / "models", base / "models")  # as training left them
    assert score(config=str(config), return_state=True).is_completed()
    return {"source": source, "models": base / "models", "store": base / "store"}


def _config(path: Path, storage: dict) -> Path:
    return write_config(
        path,
        (ROOT / "batchscore.toml").read_text(),
        storage=storage,
        scoring={"chunk_rows": 5_000, "workers": 2},
        retrain={"on_drift": "off", "lightgbm": {"max_rounds": 40}, "window_days": 6},
    )


@pytest.fixture(params=["local", "s3"])
def stores(request, tmp_path, reference):
    """A victim store holding the reference's model over the same six partitions: local, or
    source and store on S3."""
    victim = {"source": str(reference["source"]), "store": str(tmp_path / "victim")}
    if request.param == "s3":
        request.getfixturevalue("s3_api")
        bucket = new_bucket()
        victim = {"source": f"s3://{bucket}/source", "store": f"s3://{bucket}/victim"}
        upload(reference["source"], victim["source"])
        upload(reference["models"], f"{victim['store']}/models")
    else:
        shutil.copytree(reference["models"], tmp_path / "victim" / "models")
    return {
        "configs": {"victim": _config(tmp_path / "victim.toml", victim)},
        "reference": reference["store"],
        "tmp": tmp_path,
        "s3": request.param == "s3",
    }


def _victim(stores) -> Path:
    """The victim store as a local folder (on S3: a fresh download of it)."""
    store = load_config(stores["configs"]["victim"]).store
    if stores["s3"]:
        return download(store, stores["tmp"] / "victim-downloaded")
    return Path(store)


def _finished_chunks(stores) -> set[str]:
    """Staging folders holding a finished chunk's summary."""
    store = load_config(stores["configs"]["victim"]).store
    if stores["s3"]:
        paths = [k for k in keys(store) if k.startswith("_staging/") and "/chunks/" in k]
        return {k.split("/")[1] for k in paths if k.endswith(".json")}
    return {p.parent.parent.name for p in Path(store).glob("_staging/*/chunks/*.json")}


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _assert_readers_see_only_complete_partitions(store: Path, object_store: bool) -> None:
    for folder in sorted((store / "scores").glob("*")):
        names = sorted(p.name for p in folder.iterdir())
        assert all(
            n == "_SUCCESS" or (n.startswith("part-") and n.endswith(".parquet")) for n in names
        ), names  # never a temporary file
        if object_store and "_SUCCESS" not in names:
            continue  # being (re)published: readers skip it until its manifest exists
        manifest = json.loads((folder / "_SUCCESS").read_text())  # complete, or not there
        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in folder.glob("*.parquet"))
        assert rows == manifest["rows_scored"]


def _scores(store: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for day in DAYS:
        table = pq.read_table(store / "scores" / f"dt={day}").sort_by("customer_id")
        out[day] = (table.column("customer_id").to_numpy(), table.column("score").to_numpy())
    return out


def test_kill_at_random_points_then_resume_gives_the_uninterrupted_scores(stores):
    configs, on_s3 = stores["configs"], stores["s3"]

    rng = np.random.default_rng(20261121)
    kills = []
    # First kill: as soon as a chunk has finished, so that the next run must reuse it.
    proc = start_score(configs["victim"])
    deadline = time.time() + 180
    while not _finished_chunks(stores) and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kills.append("flow after first chunk")
    assert _finished_chunks(stores), "no chunk finished before the first kill"
    _assert_readers_see_only_complete_partitions(_victim(stores), on_s3)

    random_kills = 2 if on_s3 else 4
    for i in range(random_kills):
        proc = start_score(configs["victim"])
        time.sleep(float(rng.uniform(2.0, 14.0)))
        if i % 2 == 0 and (workers := _children(proc.pid)):
            os.kill(int(rng.choice(workers)), signal.SIGKILL)  # one worker dies
            kills.append("worker")
            output_of(proc, timeout=300)
        else:
            os.killpg(proc.pid, signal.SIGKILL)  # the flow process and its workers
            kills.append("flow")
            proc.wait()
        _assert_readers_see_only_complete_partitions(_victim(stores), on_s3)

    final = start_score(configs["victim"])
    output = output_of(final, timeout=600)
    assert final.returncode == 0, output
    victim = _victim(stores)
    _assert_readers_see_only_complete_partitions(victim, on_s3)
    assert len(kills) == 1 + random_kills
    assert all((victim / "scores" / f"dt={d}" / "_SUCCESS").exists() for d in DAYS)

    expected, actual = _scores(stores["reference"]), _scores(victim)
    for day in DAYS:
        np.testing.assert_array_equal(actual[day][0], expected[day][0])
        np.testing.assert_array_equal(actual[day][1], expected[day][1])
    reused = sum(
        json.loads((victim / "scores" / f"dt={d}" / "_SUCCESS").read_text())["reused_chunks"]
        for d in DAYS
    )
    # The chunks finished before the first kill were reused by whichever attempt
    # published their partition, not recomputed.
    assert reused >= 1


# Local only, to keep the suite short: on S3 the same leases are conditional PUTs, whose
# exclusion and takeover tests/test_object_storage.py checks against the S3 API.
@pytest.mark.parametrize("stores", ["local"], indirect=True)
def test_two_writers_never_score_the_same_partition_twice(stores):
    configs = stores["configs"]
    first, second = start_score(configs["victim"]), start_score(configs["victim"])
    outputs = [output_of(p, timeout=600) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    store = _victim(stores)
    scored = []
    for output in outputs:
        scored += [
            line.split()[0]
            for line in output.splitlines()
            if line[:4] == "2026" and line.split()[1] == "scored"
        ]
    assert sorted(scored) == DAYS  # every partition once, none by both
    run_ids = {
        json.loads((store / "scores" / f"dt={d}" / "_SUCCESS").read_text())["run_id"] for d in DAYS
    }
    assert 1 <= len(run_ids) <= 2
    for day in DAYS:
        table = pq.read_table(store / "scores" / f"dt={day}")
        assert len(set(table.column("customer_id").to_pylist())) == table.num_rows


@pytest.mark.parametrize("stores", ["local"], indirect=True)
def test_a_worker_killed_while_scoring_is_named_with_its_signal(stores):
    """A worker killed by the kernel (SIGKILL: what its out-of-memory killer sends) breaks
    the process pool; Python says only "A process in the process pool was terminated
    abruptly". The run's reasons name the worker, the signal and what to do."""
    proc = start_score(stores["configs"]["victim"])
    deadline = time.time() + 180
    while not _finished_chunks(stores) and time.time() < deadline:
        time.sleep(0.05)
    # The command's fork server's children are the workers (the fork server is the child
    # whose own children exist).
    workers = [w for child in _children(proc.pid) for w in _children(child)]
    assert workers, "no worker process found"
    os.kill(workers[0], signal.SIGKILL)
    output = output_of(proc, timeout=300)
    if "FAILED" not in output:
        pytest.skip("the run finished before the kill reached a worker")  # too fast to catch
    assert proc.returncode != 0, output
    assert f"worker process {workers[0]} was killed by SIGKILL" in output, output
    assert "out-of-memory killer" in output and "Run again" in output, output
    final = next(line for line in output.splitlines() if line.startswith("run Failed"))
    assert final.count("was killed by SIGKILL") == 1, final  # once, however many partitions
