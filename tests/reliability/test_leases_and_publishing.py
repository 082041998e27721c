"""Leases and publishing: a partition is published by the run holding its lease, whole, once.

A live holder on this machine keeps its lease past its expiry; a holder's lease is renewed
while it runs; a run that lost its lease publishes nothing; a publishing stopped between its
renames is done again by the next run, with every rejected row; chunks staged from a file
since rewritten are not reused; a partition's rejected rows read as one table whatever
its files' types.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from helpers import write_config

from batchscore import partitions, scoring
from batchscore.config import load_config
from batchscore.registry import Registry
from batchscore.storage import (
    UNWRITTEN_LEASE_SECONDS,
    LeaseKeeper,
    LeaseLost,
    Location,
    check_lease,
    release_lease,
    renew_lease,
    this_process,
    try_lease,
)
from batchscore.training import train

NAME = "dt=2026-10-11.lease"
DAY = "2026-10-11"  # 20,000-odd rows of the sample, some of them rejected by validation

HOLD_A_LEASE = """
import sys
from batchscore.storage import Location, try_lease
ours, holder = try_lease(Location(sys.argv[1]), sys.argv[2], ttl_seconds=0.01)
print("held" if ours else f"busy {holder}", flush=True)
sys.stdin.read()  # until the test closes it
"""


def test_a_live_holder_on_this_machine_keeps_its_lease_past_its_expiry(tmp_path):
    leases = Location(str(tmp_path / "_leases"))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_LEASE, leases.uri, NAME],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        time.sleep(0.05)  # its lease has expired; its holder lives
        ours, seen = try_lease(leases, NAME, ttl_seconds=60)
        assert ours is None and seen["pid"] == holder.pid
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    ours, seen = try_lease(leases, NAME, ttl_seconds=60)  # its holder is gone
    assert ours is not None and seen is None
    release_lease(ours)


def _rewrite(path: Path, **changes) -> None:
    body = json.loads(path.read_text())
    path.write_text(json.dumps({**body, **changes}))


def test_a_lease_is_judged_by_its_holder_process_not_its_pid_alone(tmp_path):
    leases = Location(str(tmp_path / "_leases"))
    path = tmp_path / "_leases" / NAME
    ours, _ = try_lease(leases, NAME, ttl_seconds=3600)
    boot, namespace, pid, started = ours["process"].rsplit("/", 3)
    # Our pid, but another process (the pid was reused): its holder is gone.
    _rewrite(path, token="other", process=f"{boot}/{namespace}/{pid}/{int(started) - 1}")
    taken, seen = try_lease(leases, NAME, ttl_seconds=3600)
    assert taken is not None and seen is None
    # A holder in another pid namespace (another container of this machine) or before a
    # reboot cannot be seen from here: its lease holds until it expires, then goes.
    for process in (f"{boot}/pid:[1]/{pid}/{started}", f"other-boot/{namespace}/{pid}/{started}"):
        _rewrite(path, token="other", process=process, expires_at=time.time() + 3600)
        busy, seen = try_lease(leases, NAME, ttl_seconds=3600)
        assert busy is None and seen["process"] == process
        _rewrite(path, expires_at=time.time() - 1)
        taken, seen = try_lease(leases, NAME, ttl_seconds=3600)
        assert taken is not None and seen is None
    # Another machine's, the same.
    _rewrite(path, token="other", host="elsewhere", expires_at=time.time() + 3600)
    assert try_lease(leases, NAME, ttl_seconds=3600)[0] is None
    _rewrite(path, expires_at=time.time() - 1)
    assert try_lease(leases, NAME, ttl_seconds=3600)[0] is not None


def test_a_stale_lease_is_taken_over_by_one_contender_only(tmp_path):
    """Contenders that all read the lease as stale: one holds it after."""
    leases = Location(str(tmp_path / "_leases"))
    path = tmp_path / "_leases" / NAME
    doubles = 0
    for _ in range(60):
        stale, _ = try_lease(leases, NAME, ttl_seconds=60)
        _rewrite(path, host="elsewhere", expires_at=time.time() - 1)
        start = threading.Barrier(6)

        def contend(start=start):
            start.wait()
            return try_lease(leases, NAME, ttl_seconds=60)[0]

        with ThreadPoolExecutor(6) as pool:
            won = [lease for lease in pool.map(lambda _: contend(), range(6)) if lease]
        assert won and json.loads(path.read_text())["token"] in {w["token"] for w in won}
        doubles += len(won) > 1
        path.unlink()
    assert doubles == 0


def _lease_text(**changes) -> str:
    """A lease of this process (a live holder), with `changes`."""
    body = {"token": "ab", "pid": os.getpid(), "host": socket.gethostname(), "expires_at": 0}
    return json.dumps({**body, **changes})


@pytest.mark.parametrize(
    "text",
    [
        "",
        '{"token": "ab',
        "null",
        "[]",
        "42",
        "{}",
        # Ids of their own: the texts hold this process's pid, another at each run.
        pytest.param(_lease_text(host="elsewhere", expires_at="x"), id="expiry-in-text"),
        pytest.param(_lease_text(process=5), id="process-a-number"),
        pytest.param(_lease_text(pid=None), id="pid-null"),
    ],
)
def test_an_empty_lease_file_is_held_for_a_minute_then_taken_over(tmp_path, text):
    """Its holder was killed between creating the file and writing it (or ran out of
    disk), or the file was edited: the partition must not be skipped for ever, nor the run
    fail. So is one without a lease's keys, or with other types there: `{}` was taken over
    at once, an expiry in text and a process in numbers were TypeErrors that failed the
    run."""
    leases = Location(str(tmp_path / "_leases"))
    path = tmp_path / "_leases" / NAME
    path.parent.mkdir()
    path.write_text(text)
    ours, holder = try_lease(leases, NAME, ttl_seconds=60)
    assert ours is None and holder["unreadable"]
    past = time.time() - UNWRITTEN_LEASE_SECONDS - 1
    os.utime(path, (past, past))
    ours, holder = try_lease(leases, NAME, ttl_seconds=60)
    assert ours is not None and holder is None
    assert json.loads(path.read_text())["token"] == ours["token"]


@pytest.mark.parametrize("process", [5, "x"])
def test_a_publishing_marker_without_its_holder_is_one_left_behind(sample, process):
    """A marker whose holder cannot be read is left behind, as an unreadable one is: its
    partition is published again. A number for its process was an AttributeError, and a
    text without the identity's parts a ValueError, that failed the run's find-partitions
    step."""
    config = load_config(sample)
    store, marker = Location(config.store), partitions.publishing_marker(DAY)
    store.write_json({"run_id": "r", **this_process(), "process": process}, *marker)

    assert partitions.interrupted_publishing(config) == {DAY: store.path(*marker)}


def test_a_keeper_renews_its_leases_and_a_lease_taken_over_is_lost(tmp_path):
    leases = Location(str(tmp_path / "_leases"))
    path = tmp_path / "_leases" / NAME
    ours, _ = try_lease(leases, NAME, ttl_seconds=0.4)
    first = ours["expires_at"]
    with LeaseKeeper([ours]):
        time.sleep(0.5)  # renewed every 0.1 s: never expired
        assert json.loads(path.read_text())["expires_at"] > time.time()
    assert ours["expires_at"] > first
    check_lease(ours)
    _rewrite(path, token="another run's", pid=1)  # taken over
    assert renew_lease(ours) is False
    with pytest.raises(LeaseLost, match="taken over .*held by pid 1"):
        check_lease(ours)


@pytest.fixture
def champion(sample, tmp_path):
    """The sample's champion and a config scoring DAY in chunks of 3,000 rows."""
    config = load_config(sample)
    train(config)
    path = write_config(
        tmp_path / "chunks.toml",
        sample.read_text(),
        storage={"source": config.source, "store": config.store},
        scoring={"workers": 1, "chunk_rows": 3_000},
    )
    config = load_config(path)
    return config, Registry(config.store, config.dataset.name).champion_ref()


def _stage(config, model, day: str = DAY):
    plan = partitions.plan_partition(config, day, model)
    return plan, [scoring.score_chunk(config, c, model, plan, "run-1") for c in plan.chunks]


def test_a_run_that_lost_its_lease_publishes_nothing_of_the_partition(champion, tmp_path):
    config, model = champion
    plan, results = _stage(config, model)
    ours, _ = try_lease(Location(config.store).child("_leases"), NAME, ttl_seconds=60)
    _rewrite(Path(config.store) / "_leases" / NAME, token="another run's")
    with pytest.raises(LeaseLost):
        scoring.publish_partition(config, plan, model, results, "run-1", ours)
    store = Location(config.store)
    for output in ("scores", "quarantine", "drift"):
        assert not store.exists(output, f"dt={DAY}")
    assert not store.exists(*partitions.publishing_marker(DAY))


def test_a_run_that_loses_its_lease_while_it_publishes_stops_before_the_next_rename(
    champion, monkeypatch
):
    """Stalled between two renames longer than its lease (from another machine), a run may
    find the partition taken over: it renames nothing more."""
    config, model = champion
    plan, results = _stage(config, model)
    ours, _ = try_lease(Location(config.store).child("_leases"), NAME, ttl_seconds=60)
    measure = scoring.measure_drift

    def taken_over_meanwhile(*args, **kwargs):
        _rewrite(Path(config.store) / "_leases" / NAME, token="another run's")
        return measure(*args, **kwargs)

    monkeypatch.setattr(scoring, "measure_drift", taken_over_meanwhile)
    with pytest.raises(LeaseLost):
        scoring.publish_partition(config, plan, model, results, "run-1", ours)
    store = Location(config.store)
    assert store.exists("quarantine", f"dt={DAY}")  # renamed before the lease was lost
    assert not store.exists("drift", f"dt={DAY}") and not store.exists("scores", f"dt={DAY}")


def test_scores_are_never_replaced_by_a_staging_folder_another_run_emptied(champion, monkeypatch):
    """Another run that published the partition meanwhile moved the staged scores away:
    `_SUCCESS` alone must not replace its scores."""
    config, model = champion
    plan, results = _stage(config, model)
    scoring.publish_partition(config, plan, model, results, "run-1")
    scores = Path(config.store) / "scores" / f"dt={DAY}"
    before = sorted(p.name for p in scores.iterdir())
    plan, results = _stage(config, model)
    staging = scoring.staging_location(config, plan, model)
    measure = scoring.measure_drift

    def published_by_another_run(*args, **kwargs):
        for name in os.listdir(staging.path("scores")):
            os.remove(staging.path("scores", name))
        return measure(*args, **kwargs)

    monkeypatch.setattr(scoring, "measure_drift", published_by_another_run)
    with pytest.raises(scoring.AccountingError, match="another run published the partition"):
        scoring.publish_partition(config, plan, model, results, "run-2")
    assert sorted(p.name for p in scores.iterdir()) == before
    assert json.loads((scores / "_SUCCESS").read_text())["run_id"] == "run-1"


def test_a_publishing_stopped_between_its_renames_is_done_again_with_every_rejected_row(
    champion, monkeypatch
):
    config, model = champion
    plan, results = _stage(config, model)
    rejected = sum(r.rows_quarantined for r in results)
    with_rejects = [r.index for r in results if r.rows_quarantined]
    assert rejected and 0 < len(with_rejects) < len(results)

    real = Location.publish_dir

    def killed_before_the_scores(self, staging, *parts, **kwargs):
        if parts[0] == "scores":
            raise KeyboardInterrupt  # as a kill between the renames would leave it
        return real(self, staging, *parts, **kwargs)

    monkeypatch.setattr(Location, "publish_dir", killed_before_the_scores)
    with pytest.raises(KeyboardInterrupt):
        scoring.publish_partition(config, plan, model, results, "run-1")
    monkeypatch.setattr(Location, "publish_dir", real)
    store = Path(config.store)
    assert (store / "quarantine" / f"dt={DAY}").exists() and not (store / "scores").exists()
    # While the process that wrote the marker lives, it is publishing: not interrupted.
    assert partitions.interrupted_publishing(config) == {}
    marker = store.joinpath(*partitions.publishing_marker(DAY))
    boot, namespace, pid, started = json.loads(marker.read_text())["process"].rsplit("/", 3)
    _rewrite(marker, process=f"{boot}/{namespace}/{pid}/{int(started) - 1}")  # it died
    interrupted: dict[str, str] = {}
    assert partitions.pending(config, model, [DAY], False, interrupted=interrupted) == [DAY]
    assert interrupted[DAY] == str(marker)

    # The next run: the chunks whose rejected rows were moved with the quarantine are
    # computed again (reusing their records alone would publish a quarantine without
    # them), the others are reused.
    plan, again = _stage(config, model)
    assert [r.index for r in again if not r.reused] == with_rejects
    scoring.publish_partition(config, plan, model, again, "run-2")
    done = json.loads((store / "scores" / f"dt={DAY}" / "_SUCCESS").read_text())
    assert done["rows_quarantined"] == rejected
    quarantine = pq.read_table(store / "quarantine" / f"dt={DAY}")
    assert quarantine.num_rows == rejected
    assert pq.read_table(store / "scores" / f"dt={DAY}").num_rows == done["rows_scored"]
    assert partitions.pending(config, model, [DAY], False) == []
    assert list((store / "_staging").iterdir()) == []


def test_old_outputs_a_publishing_left_moved_aside_go_with_the_partitions_next_publishing(
    champion, monkeypatch
):
    """A publishing killed after it moved a partition's old folder aside (while deleting
    it: a folder of many files takes seconds) left a full copy of the old output under
    `_staging/.trash-<uuid>`, which nothing named or ever deleted."""
    config, model = champion
    plan, results = _stage(config, model)
    scoring.publish_partition(config, plan, model, results, "run-1")

    def killed(self, trash):
        raise KeyboardInterrupt  # as a kill before the old folder was deleted would leave it

    monkeypatch.setattr(Location, "_delete_moved_aside", killed)
    plan, again = _stage(config, model)
    with pytest.raises(KeyboardInterrupt):
        scoring.publish_partition(config, plan, model, again, "run-2")
    monkeypatch.undo()
    store = Path(config.store)
    assert any("trash" in p.name for p in (store / "_staging").iterdir())  # the old quarantine
    # The next run (the killed run's marker names a process that is gone) publishes it again.
    marker = store.joinpath(*partitions.publishing_marker(DAY))
    boot, namespace, pid, started = json.loads(marker.read_text())["process"].rsplit("/", 3)
    _rewrite(marker, process=f"{boot}/{namespace}/{pid}/{int(started) - 1}")
    assert partitions.pending(config, model, [DAY], False) == [DAY]
    plan, third = _stage(config, model)
    scoring.publish_partition(config, plan, model, third, "run-3")
    assert list((store / "_staging").iterdir()) == []
    done = json.loads((store / "scores" / f"dt={DAY}" / "_SUCCESS").read_text())
    assert done["run_id"] == "run-3"
    assert pq.read_table(store / "quarantine" / f"dt={DAY}").num_rows == done["rows_quarantined"]


def _staged(store: Location, run: int, files: list[str]) -> Location:
    staging = store.child("_staging", f"dt={DAY}-attempt-{run}")
    for name in files:
        staging.write_bytes(f"{name} of run {run}".encode(), name)
    staging.write_json({"run": run}, "_SUCCESS")
    return staging


def _folder(path: Path) -> dict[str, bytes] | None:
    return {p.name: p.read_bytes() for p in path.iterdir()} if path.exists() else None


def _publish_killed_after(kill_at: int, store: Location, staging: Location, monkeypatch):
    """Publish `staging` as scores/dt=DAY, killed after its `kill_at`-th filesystem step
    (a rename, an exchange, the delete of what was moved aside): the steps done, or None
    when it finished first."""
    from batchscore import storage

    steps: list[str] = []

    def killed_after(step, real):
        def run(*args):
            result = real(*args)
            steps.append(step)
            if len(steps) == kill_at:
                raise KeyboardInterrupt
            return result

        return run

    with monkeypatch.context() as m:
        m.setattr(storage.os, "rename", killed_after("rename", os.rename))
        m.setattr(storage, "exchange_paths", killed_after("exchange", storage.exchange_paths))
        m.setattr(
            Location, "_delete_moved_aside", killed_after("delete", Location._delete_moved_aside)
        )
        try:
            store.publish_dir(staging, "scores", f"dt={DAY}")
        except KeyboardInterrupt:
            return steps
    return None


@pytest.mark.parametrize("exchange", ["renameat2", "two renames"])
def test_a_publishing_killed_at_any_step_leaves_the_old_folder_or_the_new(
    exchange, tmp_path, monkeypatch
):
    """Locally a folder being replaced trades places with the new one in one step
    (`renameat2` with `RENAME_EXCHANGE`): a kill after any step leaves the old folder or
    the new one in place, never neither. Where the filesystem cannot exchange, two renames
    do it, and a kill between them leaves the folder absent with the old one kept under
    `_staging/`. Either way the attempt's staging folder never holds the old output (a
    resumed attempt would take its files for its own)."""
    from batchscore import storage

    if exchange == "two renames":
        monkeypatch.setattr(storage, "exchange_paths", lambda a, b: False)
    kill_at, outcomes = 1, []
    while True:
        store = Location(str(tmp_path / f"kill-{kill_at}"))
        store.publish_dir(_staged(store, 1, ["a", "b"]), "scores", f"dt={DAY}")
        old = _folder(tmp_path / f"kill-{kill_at}" / "scores" / f"dt={DAY}")
        staging = _staged(store, 2, ["c"])
        new = _folder(Path(staging.root))
        steps = _publish_killed_after(kill_at, store, staging, monkeypatch)
        if steps is None:
            break
        final = _folder(tmp_path / f"kill-{kill_at}" / "scores" / f"dt={DAY}")
        assert _folder(Path(staging.root)) in (new, None), f"old output staged after {steps}"
        aside = [_folder(p) for p in (tmp_path / f"kill-{kill_at}" / "_staging").iterdir()]
        if final is None:
            assert exchange == "two renames" and old in aside, f"after {steps}"
        else:
            assert final in (old, new), f"after {steps}"
        outcomes.append((steps[-1], "old" if final == old else "new" if final else "absent"))
        kill_at += 1
    assert _folder(tmp_path / f"kill-{kill_at}" / "scores" / f"dt={DAY}") == new
    assert not (tmp_path / f"kill-{kill_at}" / "_staging").exists() or not list(
        (tmp_path / f"kill-{kill_at}" / "_staging").iterdir()
    )
    expected = {
        "renameat2": [("rename", "old"), ("exchange", "new"), ("delete", "new")],
        "two renames": [
            ("rename", "old"),
            ("exchange", "old"),  # it could not
            ("rename", "absent"),
            ("rename", "new"),
            ("delete", "new"),
        ],
    }
    assert outcomes == expected[exchange]


def test_two_runs_publishing_a_new_folder_at_once_each_replace_it_whole(tmp_path, monkeypatch):
    """Realised performance takes no lease: two runs measuring one partition may both find
    its folder absent and publish it. The second replaces the first's folder whole, as any
    earlier output; it failed with "Directory not empty"."""
    store = Location(str(tmp_path / "store"))
    first, second = _staged(store, 1, ["a"]), _staged(store, 2, ["b"])
    expected = _folder(Path(second.root))
    store.publish_dir(first, "performance", f"dt={DAY}")
    real = Location.exists
    # The second run looked before the first had published.
    monkeypatch.setattr(
        Location, "exists", lambda self, *parts: parts[0] != "performance" and real(self, *parts)
    )
    store.publish_dir(second, "performance", f"dt={DAY}")
    assert _folder(tmp_path / "store" / "performance" / f"dt={DAY}") == expected
    assert list((tmp_path / "store" / "_staging").iterdir()) == []


def test_publishing_refuses_when_a_finished_chunks_staged_file_is_gone(champion):
    config, model = champion
    plan, results = _stage(config, model)
    staging = scoring.staging_location(config, plan, model)
    os.remove(staging.path("scores", "part-00001.parquet"))
    with pytest.raises(scoring.AccountingError, match="scores/part-00001.parquet"):
        scoring.publish_partition(config, plan, model, results, "run-1")
    assert not Location(config.store).exists("scores", f"dt={DAY}")


def test_chunks_staged_from_a_file_rewritten_since_are_not_reused(champion):
    """Same name, size and rows, other values: only its modification time tells."""
    config, model = champion
    plan, _ = _stage(config, model)
    first = Path(config.source) / plan.files[0]
    later = first.stat().st_mtime + 10
    os.utime(first, (later, later))
    again, results = _stage(config, model)
    assert again.fingerprint != plan.fingerprint
    assert not any(r.reused for r in results)


def test_a_partitions_rejected_rows_read_as_one_table_when_its_files_types_differ(champion):
    """Files of one partition may write a feature as int64 in one and double in the other,
    a category plain or dictionary-encoded, or an extra column as numbers or text: both are
    scored, and every chunk's quarantine file gets the same schema."""
    config, model = champion
    folder = Path(config.source) / "incoming" / "dt=2026-11-01"
    folder.mkdir(parents=True)
    day = pq.read_table(Path(config.source) / "incoming" / "dt=2026-10-03")
    a, b = day.slice(0, 10_000), day.slice(10_000)

    def with_column(table, name, values):
        at = table.schema.get_field_index(name)
        return table.set_column(at, name, values) if at >= 0 else table.append_column(name, values)

    months = a["tenure_months"].to_numpy().copy()
    months[:3] = 10_000  # outside the validation band: rejected
    a = with_column(a, "tenure_months", pa.array(months, pa.int64()))
    a = with_column(a, "note", pa.array(["x"] * a.num_rows))
    a = with_column(a, "tags", pa.array([[1, 2]] * a.num_rows))
    months = b["tenure_months"].to_numpy().astype("float64")
    months[:2] = 10_000.5
    b = with_column(b, "tenure_months", pa.array(months))
    b = with_column(b, "plan", pc.dictionary_encode(b["plan"]))
    b = with_column(b, "note", pa.array(range(b.num_rows)))
    b = with_column(b, "tags", pa.array(["t"] * b.num_rows))
    pq.write_table(a, folder / "a.parquet")
    pq.write_table(b, folder / "b.parquet")

    plan, results = _stage(config, model, "2026-11-01")
    scoring.publish_partition(config, plan, model, results, "run-1")
    quarantine = Path(config.store) / "quarantine" / "dt=2026-11-01"
    assert len(list(quarantine.glob("part-*.parquet"))) >= 2  # rows from both files' chunks
    table = pq.read_table(quarantine)
    assert table.num_rows == sum(r.rows_quarantined for r in results) >= 5
    assert table.schema.field("tenure_months").type == pa.float64()
    assert sorted(v for v in table["tenure_months"].to_pylist() if v > 1_000) == [
        10_000.0,
        10_000.0,
        10_000.0,
        10_000.5,
        10_000.5,
    ]
    assert set(table["note"].to_pylist()) >= {"x", "0"}  # numbers and text: as text
    assert set(table["tags"].to_pylist()) == {"[1, 2]", "t"}  # a list and text: JSON text
    assert pads.dataset(quarantine.parent, partitioning="hive").to_table().num_rows == (
        table.num_rows
    )
