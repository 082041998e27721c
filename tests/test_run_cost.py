"""What finding the work of a run costs as the store's history grows: the storage calls of
`discover`, `partitions.pending` and `performance.pending`, counted through a filesystem
that passes every call to the local one (real files), per number of scored partitions."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import SAMPLE, write_config
from pyarrow import fs as pafs

from batchscore import performance, storage
from batchscore.config import load_config
from batchscore.partitions import discover, pending
from batchscore.registry import ModelRef
from batchscore.storage import Location

FIRST = dt.date(2024, 1, 1)


class Counting(pafs.FileSystemHandler):
    """A local filesystem that counts the calls made of it, by the request each is on an
    object store: LIST (a listing), HEAD (a path's info), GET (a file opened to read)."""

    def __init__(self, meet: str | None = None):
        self.fs = pafs.LocalFileSystem()
        self.calls: Counter = Counter()
        self._lock = threading.Lock()  # manifests are read from several threads
        # The first two reads of files named `meet` each wait for the other: read one after
        # the other, the first waits in vain and fails.
        self.meet, self._meeting = meet, threading.Barrier(2, timeout=10)

    def _count(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.calls[kind] += n

    def _read(self, path: str) -> None:
        with self._lock:
            self.calls["GET"] += 1
            name = path.rpartition("/")[2]
            meeting = name == self.meet and self.calls[f"GET {name}"] < 2
            self.calls[f"GET {name}"] += 1
        if meeting:
            self._meeting.wait()

    def get_type_name(self):
        return "counting"

    def normalize_path(self, path):
        return path

    def get_file_info(self, paths):
        self._count("HEAD", len(paths))
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        self._count("LIST")
        return self.fs.get_file_info(selector)

    def open_input_stream(self, path):
        self._read(path)
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        self._read(path)
        return self.fs.open_input_file(path)

    def __getattr__(self, name):  # writing is not counted (nothing here writes)
        return getattr(self.fs, name)

    def create_dir(self, path, recursive):
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise NotImplementedError

    def delete_file(self, path):
        self.fs.delete_file(path)

    def move(self, src, dest):
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self.fs.copy_file(src, dest)

    def open_output_stream(self, path, metadata):
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.fs.open_append_stream(path, metadata=metadata)


def _config(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    path = write_config(
        folder / "batchscore.toml",
        (SAMPLE.parent.parent / "batchscore.toml").read_text(),
        storage={"source": "source", "store": "store"},
    )
    return load_config(path)


@pytest.fixture
def config(tmp_path):
    return _config(tmp_path)


MODEL = ModelRef("", "churn", "v0001", "0" * 64)


def _days(n: int) -> list[str]:
    return [(FIRST + dt.timedelta(days=i)).isoformat() for i in range(n)]


def _history(config, days: int) -> list[str]:
    """`days` partitions scored by MODEL, each with labels and its realised performance; the
    newest partition's labels have not arrived."""
    rows = pq.read_table(SAMPLE / "incoming" / "dt=2026-10-02").slice(0, 50)
    labels = pq.read_table(SAMPLE / "labels" / "dt=2026-10-02").slice(0, 50)
    source, store = Path(config.source), Location(config.store)
    out = _days(days)
    for i, day in enumerate(out):
        rel = f"incoming/dt={day}/part-0.parquet"
        (source / rel).parent.mkdir(parents=True)
        pq.write_table(rows, source / rel)
        scores = {
            "run_id": "r",
            "model_name": "churn",
            "model_version": "v0001",
            "files": [rel],
            "file_sizes": {rel: (source / rel).stat().st_size},
        }
        store.write_json(scores, "scores", f"dt={day}", "_SUCCESS")
        if i < days - 1:
            (source / "labels" / f"dt={day}").mkdir(parents=True)
            pq.write_table(labels, source / "labels" / f"dt={day}" / "part-0.parquet")
            computed_from = performance._fingerprint(config, day)
            store.write_json(
                {"computed_from": computed_from}, "performance", f"dt={day}", "_SUCCESS"
            )
    return out


def _counted(config, monkeypatch, meet: str | None = None) -> Counting:
    """Storage calls of the source and the store go through one `Counting` from now on
    (which is not a local filesystem: what runs on an object store runs)."""
    counting = Counting(meet)
    wrapped = pafs.PyFileSystem(counting)
    for uri in (config.source, config.store):
        root = storage._filesystem(uri)[1]
        monkeypatch.setitem(storage._FS_CACHE, uri, (wrapped, root))
    return counting


def _find_work(config) -> tuple[list[str], list[str]]:
    """What a score run finds to do: partitions to score, and labelled ones to measure."""
    found = discover(config)
    todo = pending(config, MODEL, found.partitions, False, listed=found.files)
    return todo, performance.pending(config)


def test_finding_nothing_to_do_costs_listings_that_do_not_grow_with_history(tmp_path, monkeypatch):
    """Beyond reading each `_SUCCESS` (a partition's scores one, and a labelled partition's
    scores and performance ones), the calls are the same for 10 and 40 scored partitions:
    the source's files and the held markers come from one listing each. Asked partition by
    partition, 40 partitions cost 40 listings of `incoming/dt=D/`, 40 of `labels/dt=D/` and
    ~200 path infos more than 10 did (on S3, each a request of 10-50 ms)."""
    calls = {}
    for days in (10, 40):
        config = _config(tmp_path / str(days))
        _history(config, days)
        counting = _counted(config, monkeypatch, meet="_SUCCESS")  # read several at a time
        assert _find_work(config) == ([], [])
        calls[days] = Counter({k: n for k, n in counting.calls.items() if " " not in k})
        # pending reads each scores `_SUCCESS`; performance each labelled day's scores and
        # performance ones (the newest day has no labels)
        assert calls[days]["GET"] == days + 2 * (days - 1)
    others = {days: {k: n for k, n in c.items() if k != "GET"} for days, c in calls.items()}
    assert others[10] == others[40], calls
    assert sum(others[40].values()) <= 6, calls


def test_what_is_pending_among_many_partitions_is_found_as_one_by_one(config, monkeypatch):
    """With the listings, a partition whose source changed (a file added, one rewritten),
    whose `_SUCCESS` is unreadable, that an older model version scored, that was held beside its
    output, or that is new, is found exactly as `pending` finds it asked about alone."""
    days = _history(config, 12)
    source, store = Path(config.source), Path(config.store)
    rows = pq.read_table(SAMPLE / "incoming" / "dt=2026-10-02").slice(0, 70)
    pq.write_table(rows, source / "incoming" / f"dt={days[1]}" / "late.parquet")
    pq.write_table(rows, source / "incoming" / f"dt={days[2]}" / "part-0.parquet")
    (store / "scores" / f"dt={days[3]}" / "_SUCCESS").write_text("{")
    other = store / "scores" / f"dt={days[4]}" / "_SUCCESS"
    other.write_text(other.read_text().replace('"v0001"', '"v0002"'))
    (store / "quarantine" / f"dt={days[5]}" / "_held").mkdir(parents=True)
    (store / "quarantine" / f"dt={days[5]}" / "_held" / "_HELD").write_text("{}")
    (store / "quarantine" / f"dt={days[6]}" / "_held").mkdir(parents=True)  # no marker
    new = (FIRST + dt.timedelta(days=20)).isoformat()
    (source / "incoming" / f"dt={new}").mkdir()
    pq.write_table(rows, source / "incoming" / f"dt={new}" / "part-0.parquet")
    expected = [days[1], days[2], days[3], days[4], days[5], new]

    alone = [p for p in discover(config).partitions if pending(config, MODEL, [p], False)]
    assert alone == expected
    counting = _counted(config, monkeypatch)  # and manifests read from several threads
    changed, unreadable = {}, {}
    found = discover(config)
    todo = pending(
        config,
        MODEL,
        found.partitions,
        False,
        changed=changed,
        unreadable=unreadable,
        listed=found.files,
    )
    assert todo == expected
    assert sorted(changed) == [days[1], days[2]]
    assert changed[days[1]] == f"added incoming/dt={days[1]}/late.parquet"
    assert list(unreadable) == [days[3]]
    assert counting.calls["LIST"] <= 3, counting.calls


def test_a_rolling_reference_after_a_promotion_reads_the_earlier_counts_several_at_a_time(
    tmp_path, monkeypatch
):
    """After a promotion no earlier partition's `_COUNTS.json` was made with the champion,
    and `rolling:N` reads every one of them for each partition scored until N have been: on
    an object store, several at a time (1,000 days one after the other: ~20 s a partition)."""
    from batchscore.drift_store import COUNTS_FILE, rolling_reference
    from drift import ReferenceProfile

    config = _config(tmp_path)
    store = Location(config.store)
    for i in range(30):
        day = (FIRST + dt.timedelta(days=i)).isoformat()
        document = {"format": "batchscore.drift.counts/1", "model_version": "v0001", "counts": {}}
        store.write_json(document, "drift", f"dt={day}", COUNTS_FILE, readable=False)
    counting = _counted(config, monkeypatch, meet=COUNTS_FILE)
    window = rolling_reference(
        Location(config.store), "2024-03-01", ReferenceProfile({}), "v0002", 7
    )
    assert window.name == "training:v0002" and window.partitions == ()
    assert "no partition before 2024-03-01" in window.warning
    assert counting.calls[f"GET {COUNTS_FILE}"] == 30


def _on_s3(tmp_path: Path, days: int):
    """`_history(days)` uploaded to a new bucket of the moto server: the config reading it."""
    from objectstore import new_bucket, upload

    local = _config(tmp_path / f"{days}")
    _history(local, days)
    bucket = new_bucket()
    source, store = f"s3://{bucket}/source", f"s3://{bucket}/store"
    upload(Path(local.source), source)
    upload(Path(local.store), store)
    config = _config(tmp_path / f"s3-{days}")
    path = write_config(
        Path(config.path), Path(config.path).read_text(), storage={"source": source, "store": store}
    )
    config = load_config(path)
    remote = Location(config.store)
    for day in _days(days)[:-1]:  # the upload gave the labels new modification times
        done = {"computed_from": performance._fingerprint(config, day)}
        remote.write_json(done, "performance", f"dt={day}", "_SUCCESS")
    return config


@contextmanager
def _requests() -> Iterator:
    """The requests the moto server serves in the block (`RequestCounter`)."""
    from objectstore import RequestCounter

    requests = RequestCounter()
    access = logging.getLogger("werkzeug")
    level = access.level
    access.setLevel(logging.INFO)
    access.addHandler(requests)
    try:
        yield requests
    finally:
        access.removeHandler(requests)
        access.setLevel(level)


def _manifests_read(requests) -> list[str]:
    """The `_SUCCESS` files GET requests read, as `<folder>/dt=D`, sorted."""
    return sorted(
        "/".join(target.split("/")[-3:-1])
        for method, target in requests.requests
        if method == "GET" and target.endswith("/_SUCCESS")
    )


def _rewrite(config, rel: str, old: str, new: str) -> None:
    """Replace `old` by `new` (as long) in a store's JSON file, in place: the same size."""
    assert len(old) == len(new)
    store = Location(config.store)
    before = store.read_bytes(rel)
    assert old.encode() in before
    store.write_bytes(before.replace(old.encode(), new.encode()), rel)


def test_on_s3_finding_nothing_to_do_reads_only_manifests_new_since_the_last_run(
    tmp_path, s3_api, caplog
):
    """On S3 (moto) a run reads each manifest once with one GET (pyarrow sent a HEAD before
    each: 3 HEAD requests a scored day), then records it with its ETag in the store's
    manifest cache: the next run lists the folders and reads the cache, and no manifest
    unchanged since. Every run read three manifests a scored day (1,000 days: 3,034
    requests, 22.7 s on moto). The HEAD and LIST requests do not grow with the days."""
    seen = {}
    for days in (20, 40):
        config = _on_s3(tmp_path, days)
        with _requests() as first, caplog.at_level(logging.WARNING, "urllib3.connectionpool"):
            assert _find_work(config) == ([], [])
        # 16 reads at a time keep their connections (botocore's pool held 10)
        assert "Connection pool is full" not in caplog.text
        with _requests() as second:
            assert _find_work(config) == ([], [])
        seen[days] = first.seen, second.seen
        # the scores' manifests once (`pending`), the performance ones (`performance.pending`),
        # and the cache once for each (missing, then the one `pending` wrote)
        assert first.seen["GET"] == days + (days - 1) + 2, seen
        assert first.seen["PUT"] == 2, seen
        assert second.seen["GET"] == 2 and _manifests_read(second) == [], seen
        assert second.seen["PUT"] == 0, seen
        assert first.seen["LIST"] == second.seen["LIST"], seen
    for kind in ("HEAD", "LIST"):
        assert seen[20][1][kind] == seen[40][1][kind], seen
    assert seen[40][1]["HEAD"] + seen[40][1]["LIST"] <= 10, seen


def test_on_s3_a_manifest_rewritten_with_its_size_is_read_again_and_decides(tmp_path, s3_api):
    """A run after the cache was filled reads the manifests that changed since, and only
    those, and finds what a run reading every manifest finds: a `_SUCCESS` rewritten in
    place with the same size (another model version), a performance `_SUCCESS` rewritten
    so, a file added to a partition's source, labels that arrived, a new partition, and
    a `_SUCCESS` rewritten for another model, which stops the run."""
    from objectstore import s3

    from batchscore.partitions import SourceError

    config = _on_s3(tmp_path, 20)
    days = _days(20)
    assert _find_work(config) == ([], [])  # fills the cache
    _rewrite(config, f"scores/dt={days[3]}/_SUCCESS", '"v0001"', '"v0002"')
    _rewrite(config, f"performance/dt={days[5]}/_SUCCESS", '"r"', '"s"')
    rows = pq.read_table(SAMPLE / "incoming" / "dt=2026-10-02").slice(0, 70)
    labels = pq.read_table(SAMPLE / "labels" / "dt=2026-10-02").slice(50, 60)
    new = (FIRST + dt.timedelta(days=30)).isoformat()
    source = config.source.removeprefix("s3://")
    for rel, table in (
        (f"incoming/dt={days[4]}/late.parquet", rows),
        (f"incoming/dt={new}/part-0.parquet", rows),
        (f"labels/dt={days[6]}/late.parquet", labels),
    ):
        pq.write_table(table, f"{source}/{rel}", filesystem=s3())

    changed = {}
    with _requests() as requests:
        found = discover(config)
        todo = pending(config, MODEL, found.partitions, False, changed=changed, listed=found.files)
        measure = performance.pending(config)
    assert todo == [days[3], days[4], new]
    assert list(changed) == [days[4]]
    # days[3]'s scores are another version's than its performance was computed from
    assert measure == [days[3], days[5], days[6]]
    assert _manifests_read(requests) == [f"performance/dt={days[5]}", f"scores/dt={days[3]}"]

    _rewrite(config, f"scores/dt={days[7]}/_SUCCESS", '"churn"', '"chorn"')
    with pytest.raises(SourceError, match="'chorn'"):
        pending(config, MODEL, days, False)


@pytest.mark.parametrize("damage", ["deleted", "not JSON", "edited", "stale", "an array"])
def test_on_s3_a_damaged_or_stale_manifest_cache_changes_no_answer(tmp_path, s3_api, damage):
    """A manifest cache that is gone, unreadable, edited (an entry's content changed), of
    another shape, or older than a manifest (as a concurrent run that listed earlier may
    write it last) costs reads, never an answer; the run writes it anew, and the next run
    reads no manifest."""
    config = _on_s3(tmp_path, 20)
    days = _days(20)
    store = Location(config.store)
    assert _find_work(config) == ([], [])  # fills the cache
    before = store.read_bytes("_cache/manifests.json")
    _rewrite(config, f"scores/dt={days[2]}/_SUCCESS", '"v0001"', '"v0002"')
    if damage == "deleted":
        store.delete_file("_cache/manifests.json")
    elif damage == "not JSON":
        store.write_bytes(before[: len(before) // 2], "_cache/manifests.json")
    elif damage == "edited":  # an entry's content, whose manifest is unchanged
        store.write_bytes(before.replace(b'"v0001"', b'"v0002"', 1), "_cache/manifests.json")
    elif damage == "stale":
        assert _find_work(config) == ([days[2]], [days[2]])  # the cache now has days[2]'s
        store.write_bytes(before, "_cache/manifests.json")
    else:
        store.write_bytes(b"[]", "_cache/manifests.json")
    assert _find_work(config) == ([days[2]], [days[2]])
    with _requests() as requests:
        assert _find_work(config) == ([days[2]], [days[2]])
    assert _manifests_read(requests) == []
