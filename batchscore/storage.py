"""Storage: the two roots of DESIGN.md (`source`, read only; `store`, ours) on pyarrow filesystems.

Owns the rules that keep readers safe, on a local disk and on object storage (S3 API):

- A file appears whole or not at all. Locally it is written under a hidden temporary name
  (`.name.<uuid>.tmp`, which neither pyarrow.dataset nor a `*.parquet` glob picks up), flushed
  and renamed. On object storage a PUT (or a multipart upload) is already atomic, so objects
  are written at their final key and no temporary object ever exists.
- A partition folder is published whole. Locally a finished staging folder trades places
  with the old one in one step (`renameat2` with `RENAME_EXCHANGE`; two renames where the
  filesystem cannot), or is renamed into place when there is none. On object storage, which
  has no rename of folders, the old folder's manifests (`_SUCCESS`, `_MANIFEST`, ... : names
  starting with `_`) are deleted first, the new data objects copied in server-side, stale
  ones deleted, and the new manifests copied last: a reader that trusts a partition only
  when its `_SUCCESS` exists never sees a mix.
- Leases (one run per partition, one promotion at a time): an exclusive create (O_EXCL
  locally, a conditional PUT with `If-None-Match: *` on S3), taken over when stale by a
  rename (locally) or a PUT conditional on the stale lease's ETag (S3), so only one
  contender ever wins. A lease is stale when its holder is a process of this machine that
  no longer exists, or, held from another machine, once it has expired; its holder renews
  it while it works (`LeaseKeeper`), and checks it still holds it before it publishes
  (`check_lease`).

Partition folder names are parsed strictly so nothing outside `dt=YYYY-MM-DD` is ever read.
An S3 location is `s3://bucket/prefix`, optionally with pyarrow's query options, e.g.
`?endpoint_override=minio:9000&scheme=http`; the endpoint may also come from the standard
`AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`) variable, and credentials come from the
standard AWS variables or profile.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import errno
import functools
import json
import logging
import os
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

_log = logging.getLogger("batchscore.storage")
PARTITION_RE = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")


class StorageError(RuntimeError):
    """A storage operation that failed; the message names the path."""


class UnreadableJSON(StorageError):
    """A JSON file of the store (a manifest, a record, an alias) that is there but cannot be
    read as a JSON object with the keys its readers need (`check_shape`): empty, truncated,
    or edited by hand. Its readers decide what it means (a partition not scored, a model
    refused); `path` and `problem` let them say so."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


_JSON_KINDS = {list: "array", str: "string", bool: "true/false", type(None): "null"}

# A full filesystem, or a quota used up: it stays full for the seconds a retry waits.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def disk_full_reason(exc: BaseException, store: str) -> str:
    """A full disk's error as a reason that says where and what to do: pyarrow's says
    `[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device`,
    naming neither the file nor the filesystem."""
    location = Location(store)
    if location.is_local:
        where = f"the store's filesystem is full ({location.root}"
        try:
            usage = os.statvfs(location.root)
            free, total = usage.f_bavail * usage.f_frsize, usage.f_blocks * usage.f_frsize
            where += f": {_mib(free)} free of {_mib(total)})"
        except OSError:
            where += ")"
    else:
        where = "a filesystem of this machine is full"
    return (
        f"{exc}: {where}. Free space, or point [storage] store at a larger disk, and run "
        "again: the partitions already published are complete, and the chunks already "
        "finished are reused"
    )


def _mib(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB"


def json_object(data: bytes, path: str, shape: Shape | None = None) -> dict[str, Any]:
    """`data`, the content of the file at `path`, as a JSON object, with the keys of
    `shape` when given (`check_shape`); `UnreadableJSON` when it is not one."""
    try:
        obj = json.loads(data)
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        raise UnreadableJSON(path, f"not valid JSON ({len(data):,} bytes): {exc}") from exc
    if not isinstance(obj, dict):
        kind = _JSON_KINDS.get(type(obj), "number")
        raise UnreadableJSON(path, f"a JSON {kind}, not an object")
    if shape is not None:
        check_shape(obj, path, shape)
    return obj


# What the readers of one JSON document of the store need of it (`check_shape`): a dict
# from each key they read to what its value must be. A Python type stands for a JSON type
# (str; int; float: any number; bool; dict: any object; list: any array), None null,
# `datetime` a string `datetime.fromisoformat` reads, a tuple for any of its members (of
# several object shapes, one tagged by a key of fixed values is told apart by it), a
# frozenset for one of its values, a dict for an object with those keys (or `{str: s}`: any
# keys, each value `s`), `[s]` for an array of `s`, and `Maybe(s)` for a key that may be
# missing (written by later versions only, or not always).
Shape = dict


@dataclass(frozen=True)
class Maybe:
    """A key of a `Shape` that may be missing; when there, its value is `shape`."""

    shape: Any


def check_shape(obj: dict[str, Any], path: str, shape: Shape) -> dict[str, Any]:
    """`obj`, the JSON object read from `path`, if it has the keys and value types of
    `shape`; else `UnreadableJSON` naming the first key that does not and what it holds.

    Its readers then do what they do about a file that is not JSON (refuse a model, score a
    partition again, leave a record out): a key missing or a string in place of a number
    was a KeyError or a TypeError wherever the value was used. Keys not in `shape` are not
    looked at. A few dozen keys, or the counts of a drift document (11,100 integers for the
    sample's 16 features, 0.5 ms): documents are read once per model, partition or record."""
    problem = _shape_problem(obj, shape, "")
    if problem:
        raise UnreadableJSON(path, problem)
    return obj


def _shape_problem(value: Any, shape: Any, key: str) -> str | None:
    """Why `value`, at `key`, is not `shape`; None when it is."""
    if isinstance(shape, dict | list) and not isinstance(value, type(shape)):
        return _wrong(value, shape, key)
    if isinstance(shape, dict):
        if str in shape:  # any keys, each value of one shape
            items = [(f"{key}.{k}" if key else k, v, shape[str]) for k, v in value.items()]
        else:
            items = []
            for name, inner in shape.items():
                where = f"{key}.{name}" if key else name
                if name in value:
                    items.append((where, value[name], getattr(inner, "shape", inner)))
                elif not isinstance(inner, Maybe):
                    return f"key '{where}' is missing"
        return next((p for k, v, s in items if (p := _shape_problem(v, s, k))), None)
    if isinstance(shape, list):
        if shape[0] in (str, int) and all(type(v) is shape[0] for v in value):
            return None  # the common case, ~20x faster: drift counts hold thousands of ints
        found = (_shape_problem(v, shape[0], f"{key}[{i}]") for i, v in enumerate(value))
        return next((p for p in found if p), None)
    if isinstance(shape, tuple):
        if any(_shape_problem(value, s, key) is None for s in shape):
            return None
        # An object (array) where one is expected says more by what is wrong inside it:
        # inside the object shape its tag names ("kind": "numeric"), when one does.
        inside = [s for s in shape if isinstance(s, dict | list) and isinstance(value, type(s))]
        inside = [s for s in inside if _tagged(value, s)] or inside
        return _shape_problem(value, inside[0], key) if inside else _wrong(value, shape, key)
    if isinstance(shape, frozenset):
        ok = isinstance(value, str | int) and value in shape
    elif shape is dt.datetime:
        ok = isinstance(value, str) and _is_time(value)
    elif shape is None:
        ok = value is None
    elif isinstance(value, bool):  # JSON's true and false are Python ints too
        ok = shape is bool
    else:
        ok = isinstance(value, (int, float) if shape is float else shape)
    return None if ok else _wrong(value, shape, key)


def _tagged(value: Any, shape: Any) -> bool:
    """Whether the object `value` has every fixed-value key of the object shape `shape`."""
    if not isinstance(shape, dict):
        return False
    tags = [(k, v) for k, v in shape.items() if isinstance(v, frozenset)]
    return bool(tags) and all(
        isinstance(value.get(k), str | int) and value[k] in v for k, v in tags
    )


def _is_time(text: str) -> bool:
    try:
        dt.datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


_EXPECTED = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true/false",
    dt.datetime: "a time (ISO 8601)",
}


def _expected(shape: Any) -> str:
    if isinstance(shape, tuple):
        return " or ".join(_expected(s) for s in shape)
    if isinstance(shape, frozenset):
        return "one of " + ", ".join(json.dumps(v) for v in sorted(shape, key=str))
    if shape is dict or isinstance(shape, dict):
        return "an object"
    if shape is list or isinstance(shape, list):
        return "an array"
    return "null" if shape is None else _EXPECTED[shape]


def _wrong(value: Any, shape: Any, key: str) -> str:
    """What `key` holds (its kind and, shortened, its value) and what it should."""
    if value is None or isinstance(value, bool):
        held = json.dumps(value)
    else:
        text = json.dumps(value)
        kind = {dict: "an object", list: "an array", str: "a string"}.get(type(value), "a number")
        held = f"{kind} ({text if len(text) <= 40 else text[:37] + '...'})"
    return f"key '{key}' holds {held}, not {_expected(shape)}"


def parse_partition_dir(name: str) -> dt.date | None:
    """The date of a `dt=YYYY-MM-DD` folder name, or None for anything else."""
    match = PARTITION_RE.match(name)
    if not match:
        return None
    try:
        return dt.date.fromisoformat(match.group(1))
    except ValueError:
        return None


def is_data_file(entry: pafs.FileInfo) -> bool:
    """A data file: a file whose name starts with neither '.' (our temporary names) nor '_'
    (manifests), the rule pyarrow.dataset also follows."""
    return entry.type == pafs.FileType.File and not entry.base_name.startswith((".", "_"))


@dataclass(frozen=True)
class Location:
    """A root folder on a pyarrow filesystem, addressed by relative '/'-separated paths."""

    uri: str

    @property
    def fs(self) -> pafs.FileSystem:
        return _filesystem(self.uri)[0]

    @property
    def root(self) -> str:
        return _filesystem(self.uri)[1]

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *[p.strip("/") for p in parts if p]])

    def child(self, *parts: str) -> Location:
        # Options of an object-store URI (`?endpoint_override=...`) stay with its children.
        base, query = _split_query(self.uri)
        joined = "/".join([base.rstrip("/"), *[p.strip("/") for p in parts if p]])
        return Location(f"{joined}?{query}" if query else joined)

    # --- reading -----------------------------------------------------------------------
    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def list(self, *parts: str) -> list[pafs.FileInfo]:
        """Entries directly under a folder, sorted by name; empty when it does not exist."""
        info = self.fs.get_file_info(self.path(*parts))
        if info.type != pafs.FileType.Directory:
            return []
        entries = self.fs.get_file_info(pafs.FileSelector(self.path(*parts)))
        return sorted(entries, key=lambda e: e.base_name)

    def data_files(self, *parts: str) -> list[pafs.FileInfo]:
        """The data files of a folder (`is_data_file`)."""
        return [e for e in self.list(*parts) if is_data_file(e)]

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.path(*parts)) as fh:
            return fh.read()

    def read_json(self, *parts: str, shape: Shape | None = None) -> dict[str, Any]:
        """A JSON object, with the keys of `shape` when given (`check_shape`);
        `UnreadableJSON` naming the file when it is not one. Every JSON file the pipeline
        writes is an object with its readers' keys, written whole (`write_json`), so this is
        a file damaged or edited after it was written."""
        return json_object(self.read_bytes(*parts), self.path(*parts), shape)

    def read_json_or_none(self, *parts: str, shape: Shape | None = None) -> dict[str, Any] | None:
        """`read_json`, or None when the file does not exist."""
        try:
            return self.read_json(*parts, shape=shape)
        except FileNotFoundError:
            return None

    # --- writing -----------------------------------------------------------------------
    def makedirs(self, *parts: str) -> None:
        if self.is_local:  # object stores have no folders to make
            self.fs.create_dir(self.path(*parts), recursive=True)

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Write a file so that it appears whole or not at all."""
        with self._written_whole(*parts) as path, self.fs.open_output_stream(path) as fh:
            fh.write(data)

    def write_json(
        self, obj: Any, *parts: str, readable: bool = True, allow_nan: bool = True
    ) -> None:
        """`obj` as a JSON file, indented for people; `readable=False` for files only the
        pipeline reads, written by json's C encoder, which indenting turns off (a chunk's
        record with its drift counts: 19.5 -> 4 ms, 807 -> 204 KB). `allow_nan=False` for
        records others parse (the registry's): a NaN or infinity there is an error here,
        as Python's `NaN` is not JSON and other parsers refuse the file."""
        text = (
            json.dumps(obj, indent=2, sort_keys=True, default=str, allow_nan=allow_nan)
            if readable
            else json.dumps(
                obj, sort_keys=True, default=str, separators=(",", ":"), allow_nan=allow_nan
            )
        )
        self.write_bytes(text.encode(), *parts)

    def write_parquet(self, table: pa.Table, *parts: str) -> None:
        with self.parquet_writer(*parts) as out:
            out.write(table)

    @contextmanager
    def parquet_writer(self, *parts: str, plain: Iterable[str] = ()) -> Iterator[ParquetOut]:
        """A Parquet file written table by table (a row group or more each), so that its
        rows need not be in memory at once; it appears whole when the block ends, or (on an
        error, locally) not at all. On object storage an error may leave the rows written
        so far as the object: callers write there only what a later marker vouches for
        (a chunk's staged files count once its `chunks/*.json` exists). The `plain` columns
        are written without dictionary encoding (see `ParquetOut`).
        """
        with self._written_whole(*parts) as path:
            out = ParquetOut(path, self.fs, plain)
            try:
                yield out
                if not out.close():
                    raise ValueError(
                        f"{self.path(*parts)}: no table was written, so the file has no schema"
                    )
            finally:
                out.close()

    @contextmanager
    def _written_whole(self, *parts: str) -> Iterator[str]:
        """The path to write `parts` at. On object storage that is the object itself (a PUT
        or multipart upload is visible only once complete); locally a temporary beside it,
        flushed and renamed into place when the block ends, deleted when it fails."""
        final = self.path(*parts)
        if not self.is_local:
            yield final
            return
        folder, name = final.rsplit("/", 1)
        self.fs.create_dir(folder, recursive=True)
        tmp = _temporary(folder, name)
        try:
            yield tmp
            _fsync_local(self, tmp)
            self.fs.move(tmp, final)
        except BaseException:
            with suppress(FileNotFoundError):  # never created: nothing was written
                self.fs.delete_file(tmp)
            raise

    def create_exclusive(self, data: bytes, *parts: str) -> bool:
        """On object storage: create an object only if it does not exist; False when it does
        (someone was first). Local folders use O_EXCL files and renames instead."""
        return _S3Conditional(self).create_exclusive("/".join(parts), data)

    def delete_file(self, *parts: str) -> None:
        with suppress(FileNotFoundError):
            self.fs.delete_file(self.path(*parts))

    def delete_dir(self, *parts: str) -> None:
        if self.exists(*parts):
            self.fs.delete_dir(self.path(*parts))

    def files(self, *parts: str) -> list[str]:
        """Every file under a folder (recursively), as paths relative to it, sorted."""
        base = self.path(*parts)
        if self.fs.get_file_info(base).type != pafs.FileType.Directory:
            return []
        selector = pafs.FileSelector(base, recursive=True)
        return sorted(
            e.path[len(base) :].lstrip("/")
            for e in self.fs.get_file_info(selector)
            if e.type == pafs.FileType.File
        )

    def publish_dir(
        self, staging: Location, *parts: str, last: tuple[str, ...] | None = None
    ) -> None:
        """Move a finished staging folder to `parts`, replacing what was there.

        Locally a reader, and a process killed at any instant, sees the old folder or the new
        one, never a mix and never neither. The new folder first takes a name of its own,
        `_staging/<parts>-trash-<uuid>` (`scores-dt=D-trash-...`), then trades places with
        the old one in one step (`exchange_paths`: Linux's `renameat2` with
        `RENAME_EXCHANGE`), and that name, now the old folder's, is deleted. A process
        killed before the delete (a folder of many files takes seconds) leaves a whole old
        copy under it, which the partition's next publishing deletes
        (`scoring._delete_staging`). The attempt's own staging folder never holds the old
        output (a resumed attempt would take its files for staged chunks). Where the
        filesystem cannot exchange, the old folder is moved to a second such name and the
        new one renamed into place: killed between those two renames, the folder is absent
        and the old output is left under the second name. Two runs publishing the same folder
        at once (realised performance takes no lease) each replace it whole; the last wins.

        On object storage see the module's docstring; `last` names the files written after
        all others (default: those starting with `_`, the manifests).
        """
        if not self.is_local:
            self._publish_by_copy(staging, parts, last)
            return
        # A writer killed mid-file leaves its temporary behind; it is no part of the result.
        for rel in staging.files():
            if _is_temporary(rel):
                self.fs.delete_file(staging.path(rel))
        final = self.path(*parts)
        self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
        if not self.exists(*parts):
            try:
                os.rename(staging.root, final)
                return
            except OSError as exc:  # published meanwhile by another run: replaced below
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        self.fs.create_dir(self.path("_staging"), recursive=True)

        def moved_aside() -> str:
            return self.path("_staging", f"{'-'.join(parts)}-trash-{uuid.uuid4().hex}")

        new = moved_aside()
        os.rename(staging.root, new)
        if exchange_paths(new, final):
            self._delete_moved_aside(new)  # the old folder, now
            return
        old = moved_aside()
        os.rename(final, old)
        os.rename(new, final)
        self._delete_moved_aside(old)

    def _delete_moved_aside(self, trash: str) -> None:
        self.fs.delete_dir(trash)

    def _publish_by_copy(
        self, staging: Location, parts: tuple[str, ...], last: tuple[str, ...] | None
    ) -> None:
        def is_last(rel: str) -> bool:
            name = rel.rsplit("/", 1)[-1]
            return name in last if last is not None else name.startswith("_")

        old, new = self.files(*parts), staging.files()
        # The partition stops being complete before anything in it changes ...
        for rel in old:
            if is_last(rel):
                self.fs.delete_file(self.path(*parts, rel))
        # ... its data objects are replaced (each copy is atomic) and stale ones deleted ...
        for rel in new:
            if not is_last(rel):
                self.fs.copy_file(staging.path(rel), self.path(*parts, rel))
        for rel in sorted(set(old) - set(new)):
            if not is_last(rel):
                with suppress(FileNotFoundError):
                    self.fs.delete_file(self.path(*parts, rel))
        # ... and it is complete again once its manifests exist.
        for rel in new:
            if is_last(rel):
                self.fs.copy_file(staging.path(rel), self.path(*parts, rel))
        staging.delete_dir()


class LeaseBusy(StorageError):
    """Another live holder has the lease."""


class LeaseLost(StorageError):
    """A holder's lease was taken over by another run (`check_lease`)."""


def try_lease(location: Location, name: str, ttl_seconds: float) -> tuple[dict | None, dict | None]:
    """Take the lease `name` under `location` if it is free: (our lease, None) or (None, holder).

    A lease is a file created exclusively. It is free when absent, or stale (`_stale`): held
    by a process of this machine that no longer exists (a holder killed with -9 leaves its
    file behind), or from another machine and expired. A stale lease is moved aside by
    rename (on S3: overwritten by a PUT conditional on its ETag), which only one contender
    can win.
    """
    if not location.is_local:
        return _S3Conditional(location).try_lease(name, ttl_seconds)
    folder = location.path()
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    for _ in range(10):
        now = time.time()
        body = _new_lease(path, ttl_seconds)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lease(path)
            if holder is None:
                continue  # released between our open and our read
            if not _stale(holder, now):
                return None, holder
            with _takeovers(folder):  # one contender at a time judges and moves it
                current = _read_lease(path)
                if current == holder and _stale(current, time.time()):
                    aside = f"{path}.stale-{uuid.uuid4().hex}"
                    with suppress(FileNotFoundError):
                        os.rename(path, aside)
                        os.remove(aside)
            continue
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(body, fh)
        except BaseException:
            # Not written (a full disk): an empty lease would hold the partition from the
            # next run for a minute (it counts as being written), so it is not left.
            with suppress(OSError):
                os.remove(path)
            raise
        return body, None
    raise LeaseBusy(f"{path}: could not take the lease after 10 attempts")


@contextmanager
def _takeovers(folder: str) -> Iterator[None]:
    """Hold the lock of a local lease folder's takeovers (`flock` on `.takeover.lock`).

    Without it, two contenders that had both read a lease as stale each moved aside what
    was then at its path, and the second moved the first's new lease: both held the lease
    (76 of 200 races). Under the lock a contender reads the lease again and moves it only
    if it is still the stale one it read."""
    import fcntl

    fd = os.open(os.path.join(folder, ".takeover.lock"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


# What `holder_alive` reads of a lease or a publishing marker (`this_process`; a lease of
# an older batchscore, or from elsewhere than Linux, has no "process"), and what `_stale`
# reads of a lease besides (`check_shape`).
HOLDER_SHAPE: Shape = {"pid": int, "host": str, "process": Maybe((str, None))}
LEASE_SHAPE: Shape = {**HOLDER_SHAPE, "token": str, "expires_at": float}


def this_process() -> dict:
    """Who this process is, as a lease (or a publishing marker) records its holder
    (`holder_alive`)."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "process": _process_identity(os.getpid()),
    }


def _new_lease(path: str, ttl_seconds: float, **extra: str) -> dict:
    now = time.time()
    return {
        "token": uuid.uuid4().hex,
        **this_process(),
        "acquired_at": now,
        "expires_at": now + ttl_seconds,
        "ttl_seconds": ttl_seconds,
        "path": path,
        **extra,
    }


def _process_identity(pid: int) -> str | None:
    """Who process `pid` (this one, `_new_lease`) is, on Linux: the boot, the pid
    namespace, the pid and the start time. A lease's holder is alive exactly when a process
    of that identity exists (`holder_alive`): a pid alone may have been reused by another
    process, and another container of this host (its own pid namespace) or the machine
    before a reboot has pids this process cannot see. None elsewhere."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
        namespace = os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None
    started = _start_time(pid)
    return None if started is None else f"{boot}/{namespace}/{pid}/{started}"


def _start_time(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, /proc/PID/stat's field 22);
    None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[19]


def check_lease(lease: dict | None) -> None:
    """Raise `LeaseLost` unless `lease` is still its holder's, as publishing needs: a run
    stalled beyond its lease's expiry (from another machine) may have lost its partitions to
    another run, which then publishes them. No lease (a caller that took none): nothing to
    check."""
    if lease is None:
        return
    if "uri" in lease:
        current, _ = _S3Conditional(Location(lease["uri"])).read_lease(lease["name"])
    else:
        current = _read_lease(lease["path"])
    if current is None or current.get("token") != lease["token"]:
        holder = (
            f"held by pid {current.get('pid')} on {current.get('host')}" if current else "released"
        )
        raise LeaseLost(
            f"{lease['path']}: this run's lease was taken over (now {holder}); another run "
            "scores this partition, and this run publishes nothing of it"
        )


def renew_lease(lease: dict) -> bool:
    """Move `lease`'s expiry `ttl_seconds` past now, if it is still ours: False if it is not."""
    body = {**lease, "expires_at": time.time() + lease["ttl_seconds"]}
    if "uri" in lease:
        renewed = _S3Conditional(Location(lease["uri"])).renew(body)
    else:
        current = _read_lease(lease["path"])
        renewed = current is not None and current.get("token") == lease["token"]
        if renewed:
            folder, name = os.path.split(lease["path"])
            temporary = _temporary(folder, name)
            with open(temporary, "w") as fh:
                json.dump(body, fh)
            os.replace(temporary, lease["path"])
    if renewed:
        lease["expires_at"] = body["expires_at"]
    return renewed


class LeaseKeeper:
    """Renews `leases` every quarter of their time to live until the block ends: a run that
    takes longer than `[scoring] lease_minutes` keeps its partitions (from another machine,
    an expired lease may be taken over). A lease found lost is no longer renewed; its
    partition's publishing refuses (`check_lease`)."""

    def __init__(self, leases: list[dict]):
        self.leases = list(leases)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LeaseKeeper:
        if self.leases:
            interval = min(lease["ttl_seconds"] for lease in self.leases) / 4
            self._thread = threading.Thread(
                target=self._renew_every, args=(interval,), name="renew-leases", daemon=True
            )
            self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _renew_every(self, interval: float) -> None:
        while not self._stop.wait(interval):
            for lease in list(self.leases):
                try:
                    if not renew_lease(lease):
                        self.leases.remove(lease)
                        _log.warning("%s: lease lost, no longer renewed", lease["path"])
                except Exception as exc:  # a storage hiccup: tried again at the next turn
                    _log.warning("%s: could not renew the lease: %s", lease["path"], exc)


def release_lease(lease: dict) -> None:
    """Give a lease back, if it is still ours (an expired one may have been taken over)."""
    if "uri" in lease:
        _S3Conditional(Location(lease["uri"])).release(lease)
        return
    current = _read_lease(lease["path"])
    if current is not None and current.get("token") == lease["token"]:
        with suppress(FileNotFoundError):
            os.remove(lease["path"])


@contextmanager
def lease(
    location: Location,
    name: str,
    ttl_seconds: float = 900.0,
    wait_seconds: float = 300.0,
    waiting: Callable[[dict], None] | None = None,
) -> Iterator[dict]:
    """Hold the lease `name` for the block, waiting up to `wait_seconds` for a live holder
    (`waiting` is told the holder once, when there is one to wait for)."""
    deadline = time.monotonic() + wait_seconds
    while True:
        ours, holder = try_lease(location, name, ttl_seconds)
        if ours is not None:
            break
        if waiting is not None:
            waiting(holder)
            waiting = None
        if time.monotonic() > deadline:
            raise LeaseBusy(
                f"{location.path(name)} is held by pid {holder.get('pid')} on "
                f"{holder.get('host')} (waited {wait_seconds:.0f} s)"
            )
        time.sleep(0.2)
    try:
        yield ours
    finally:
        release_lease(ours)


def _stale(holder: dict, now: float) -> bool:
    """Whether a lease may be taken over: its holder is a process of this machine that no
    longer exists, whatever its expiry (a live holder keeps it, however long its run); from
    another machine, whose processes cannot be seen from here, once it has expired (its
    holder renews it while it runs)."""
    alive = holder_alive(holder)
    if alive is not None:
        return not alive
    return holder.get("expires_at", 0) < now


def holder_alive(holder: dict) -> bool | None:
    """Whether the process a lease (or a publishing marker) names (`this_process`) still
    exists: True or False on this machine, None when that cannot be seen from here (another
    machine or container)."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
        return None
    recorded, ours = holder.get("process"), _process_identity(os.getpid())
    if recorded and ours and recorded.count("/") >= 3:  # else edited: as without one
        where, _, started = recorded.rsplit("/", 2)
        if where != ours.rsplit("/", 2)[0]:
            return None  # another boot, or another container's pid namespace
        now = _start_time(pid)
        if now is not None:
            return now == started  # another start time: the pid was reused
        # No /proc entry: gone, unless /proc hides other users' processes (hidepid).
    try:  # a lease without an identity (elsewhere than Linux, or an older batchscore)
        os.kill(pid, 0)
    except ProcessLookupError:
        return False  # its holder died without releasing it
    except PermissionError:
        return None  # alive, another user's: judged by its expiry, as before
    return None


class _S3Conditional:
    """Leases and exclusive creates on an S3 API store, by conditional requests (boto3:
    pyarrow cannot send them).

    `If-None-Match: *` creates a lease only where none exists; `If-Match: <etag>` replaces
    or deletes one only if it is still the version we read. AWS S3, MinIO and moto honour
    both; a store that ignores them would let two runs hold a partition, so before its
    first lease a process checks, once per bucket, that a second create is refused.
    """

    _checked: set[str] = set()

    def __init__(self, location: Location):
        if not isinstance(location.fs, pafs.S3FileSystem):
            raise StorageError(
                f"{location.uri}: leases need a local folder or an S3 store, not "
                f"{location.fs.type_name}"
            )
        self.location = location
        bucket, _, key = location.root.partition("/")
        self.bucket, self.prefix = bucket, key.strip("/")
        # pyarrow's filesystem knows the bucket's region (from the URI, the environment or
        # the bucket itself): the client uses the same.
        self.client = _s3_client(location.uri, location.fs.region)
        if self.bucket not in self._checked:
            self._check_conditional_writes()
            self._checked.add(self.bucket)

    def _check_conditional_writes(self) -> None:
        from botocore.exceptions import ClientError

        key = self.key(f".conditional-write-check-{uuid.uuid4().hex}")
        self.client.put_object(Bucket=self.bucket, Key=key, Body=b"1", IfNoneMatch="*")
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=b"2", IfNoneMatch="*")
        except ClientError as exc:
            if _precondition_failed(exc):
                return
            raise
        finally:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        raise StorageError(
            f"s3://{self.bucket}: the store ignored `If-None-Match: *` (a second create of "
            f"{key} succeeded); leases need conditional writes (AWS S3 since 2024, MinIO, "
            "Ceph RGW 19+). Refusing to run two writers without them."
        )

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def create_exclusive(self, name: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self.key(name), Body=data, IfNoneMatch="*"
            )
            return True
        except ClientError as exc:
            if _precondition_failed(exc):
                return False
            raise

    def try_lease(self, name: str, ttl_seconds: float) -> tuple[dict | None, dict | None]:
        from botocore.exceptions import ClientError

        key = self.key(name)
        for _ in range(10):
            body = _new_lease(f"s3://{self.bucket}/{key}", ttl_seconds, uri=self.location.uri)
            body["name"] = name
            if self.create_exclusive(name, json.dumps(body).encode()):
                return body, None
            holder, etag = self._read(key)
            if holder is None:
                continue  # released between our put and our read
            if not _stale(holder, time.time()):
                return None, holder
            try:  # take over the stale lease, unless someone else just did
                self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=json.dumps(body).encode(), IfMatch=etag
                )
                return body, None
            except ClientError as exc:
                if not _precondition_failed(exc) and not _not_found(exc):
                    raise StorageError(
                        f"s3://{self.bucket}/{key}: cannot take a lease: {exc}"
                    ) from exc
        raise LeaseBusy(f"s3://{self.bucket}/{key}: could not take the lease after 10 attempts")

    def read_lease(self, name: str) -> tuple[dict | None, str | None]:
        return self._read(self.key(name))

    def renew(self, body: dict) -> bool:
        from botocore.exceptions import ClientError

        key = self.key(body["name"])
        current, etag = self._read(key)
        if current is None or current.get("token") != body["token"]:
            return False
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=json.dumps(body).encode(), IfMatch=etag
            )
        except ClientError as exc:
            if _precondition_failed(exc) or _not_found(exc):
                return False  # taken over (or released) between our read and our write
            raise
        return True

    def release(self, lease: dict) -> None:
        from botocore.exceptions import ClientError

        key = self.key(lease["name"])
        current, etag = self._read(key)
        if current is None or current.get("token") != lease["token"]:
            return  # taken over after it expired: no longer ours to delete
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key, IfMatch=etag)
        except ClientError as exc:
            if not _precondition_failed(exc) and not _not_found(exc):
                raise

    def _read(self, key: str) -> tuple[dict | None, str | None]:
        from botocore.exceptions import ClientError

        try:
            got = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _not_found(exc):
                return None, None
            raise
        body = _lease_body(
            got["Body"].read(), f"s3://{self.bucket}/{key}", got["LastModified"].timestamp()
        )
        return body, got["ETag"]


def _precondition_failed(exc) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412")


# Documents read at a time from an object store (`read_each`): 1,000 `_SUCCESS` GETs of
# ~20 ms each take ~1.3 s at 16, ~20 s one by one.
READERS = 16


def read_each(location: Location, read: Callable[[str], Any], names: list[str]) -> list[Any]:
    """`read(name)` for each of `names`, in their order: on an object store up to `READERS`
    at a time (each a round trip of ~10-50 ms; pyarrow's filesystems and boto3's clients
    are thread-safe), on a local one one by one (~0.1 ms each, mostly parsing)."""
    if location.is_local or len(names) < 2:
        return [read(n) for n in names]
    with ThreadPoolExecutor(READERS, thread_name_prefix="read-each") as pool:
        return list(pool.map(read, names))


def read_json_in_one_request(
    location: Location, *parts: str, shape: Shape | None = None
) -> dict[str, Any] | None:
    """`location.read_json_or_none(*parts)`, in one request on S3: pyarrow asks an object's
    size (a HEAD) before it reads it (a GET), which doubled the requests of the manifests a
    run reads for every partition already scored. boto3 reads it with one GET, with the
    client the leases use (same endpoint, region and credentials). Elsewhere, as pyarrow
    reads it. A storage error other than a missing object is an OSError naming the path."""
    if not isinstance(location.fs, pafs.S3FileSystem):
        return location.read_json_or_none(*parts, shape=shape)
    return read_json_and_etag(location, *parts, shape=shape)[0]


def listed_etags(location: Location, *parts: str) -> dict[str, tuple[str, int]] | None:
    """Every object under the folder `parts` of an S3 store (recursively), by its path
    relative to `location`: its ETag and size, as ListObjectsV2 lists them (1,000 objects a
    request). pyarrow's listing leaves the ETag out, so this lists with boto3, with the
    client the leases use. None on other filesystems, whose listings give no ETag (a local
    file's modification time may not change when it is rewritten within one tick). A
    storage error is an OSError naming the folder."""
    if not isinstance(location.fs, pafs.S3FileSystem):
        return None
    from botocore.exceptions import BotoCoreError, ClientError

    folder = location.path(*parts).rstrip("/")
    bucket, _, prefix = folder.partition("/")
    root = location.path().rstrip("/").partition("/")[2]
    found: dict[str, tuple[str, int]] = {}
    try:
        pages = _s3_client(location.uri, location.fs.region).get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else ""):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(root) + 1 :] if root else obj["Key"]
                found[rel] = (obj.get("ETag") or "", obj["Size"])
    except (BotoCoreError, ClientError) as exc:
        raise OSError(f"cannot list {folder}: {exc}") from exc
    return found


def read_json_and_etag(
    location: Location, *parts: str, shape: Shape | None = None
) -> tuple[dict[str, Any] | None, str, int]:
    """`read_json_in_one_request` on an S3 store, with the ETag and size of the object as
    read (the GET's own, not a listing's: an object rewritten between a listing and the
    read has the new version's). (None, "", 0) when there is no such object. A storage
    error other than a missing object is an OSError naming the path; content that is not
    the JSON object `shape` describes, `UnreadableJSON`."""
    from botocore.exceptions import BotoCoreError, ClientError

    path = location.path(*parts)
    bucket, _, key = path.partition("/")
    try:
        got = _s3_client(location.uri, location.fs.region).get_object(Bucket=bucket, Key=key)
        data = got["Body"].read()
    except ClientError as exc:
        if _not_found(exc):
            return None, "", 0
        raise OSError(f"cannot read {path}: {exc}") from exc
    except BotoCoreError as exc:
        raise OSError(f"cannot read {path}: {exc}") from exc
    return json_object(data, path, shape), got.get("ETag") or "", len(data)


def write_json_in_one_request(location: Location, obj: Any, *parts: str) -> None:
    """`location.write_json(obj, *parts, readable=False)`, in one request on S3: pyarrow
    writes an object by a multipart upload (create, part, complete: 3 requests). A PUT
    is atomic: the object appears whole. A storage error is an OSError naming the path."""
    if not isinstance(location.fs, pafs.S3FileSystem):
        location.write_json(obj, *parts, readable=False)
        return
    from botocore.exceptions import BotoCoreError, ClientError

    data = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    path = location.path(*parts)
    bucket, _, key = path.partition("/")
    try:
        _s3_client(location.uri, location.fs.region).put_object(Bucket=bucket, Key=key, Body=data)
    except (BotoCoreError, ClientError) as exc:
        raise OSError(f"cannot write {path}: {exc}") from exc


def _not_found(exc) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")


@functools.lru_cache(maxsize=16)
def _s3_client(uri: str, region: str | None):
    """A boto3 S3 client for the same endpoint, region and credentials pyarrow uses."""
    import boto3
    import botocore.config

    options = {k: v[-1] for k, v in parse_qs(_split_query(uri)[1]).items()}
    endpoint = options.get("endpoint_override")
    if endpoint and "://" not in endpoint:
        endpoint = f"{options.get('scheme', 'https')}://{endpoint}"
    kwargs: dict[str, Any] = {"endpoint_url": endpoint, "region_name": region or None}
    if options.get("access_key"):
        kwargs["aws_access_key_id"] = options["access_key"]
        kwargs["aws_secret_access_key"] = options.get("secret_key")
    # Without an endpoint in the URI, boto3 reads AWS_ENDPOINT_URL(_S3) itself, as pyarrow does.
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    # A connection for each of `read_each`'s threads: botocore keeps 10, and dropped (then
    # opened again) the others' connections at every read ("Connection pool is full").
    config = botocore.config.Config(max_pool_connections=READERS)
    return boto3.client("s3", config=config, **kwargs)


def _split_query(uri: str) -> tuple[str, str]:
    if "://" not in uri:
        return uri, ""
    base, _, query = uri.partition("?")
    return base, query


def _read_lease(path: str) -> dict | None:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
            changed = os.fstat(fh.fileno()).st_mtime
    except FileNotFoundError:
        return None
    return _lease_body(data, path, changed)


def _lease_body(data: bytes, path: str, changed: float) -> dict:
    """A lease file's content (`changed`: when it was last written). One that is not a JSON
    object with a lease's keys (`LEASE_SHAPE`) was created but not yet written by its
    holder (it writes right after its exclusive create), or was edited: live for a minute
    after it last changed. After that, a holder killed (or out of disk) between the create
    and the write left it: stale."""
    try:
        return json_object(data, path, LEASE_SHAPE)
    except UnreadableJSON:
        return {"expires_at": changed + UNWRITTEN_LEASE_SECONDS, "unreadable": True}


# How long an empty or unparsable lease file counts as being written by its holder.
UNWRITTEN_LEASE_SECONDS = 60.0


_AT_FDCWD = -100  # <fcntl.h>: paths relative to the working directory
_RENAME_EXCHANGE = 2  # <linux/fs.h>


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28+, musl 1.2.2+
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


def exchange_paths(a: str, b: str) -> bool:
    """Swap two existing local paths in one atomic step: True; False where this system or
    filesystem cannot (not Linux, a C library without `renameat2`, a kernel before 3.15, a
    filesystem without `RENAME_EXCHANGE`), having changed nothing."""
    call = _renameat2()
    if call is None:
        return False
    if call(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), a, None, b)


def _temporary(folder: str, name: str) -> str:
    """Where a local file is written before it is renamed to `folder/name`."""
    return f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"


def _is_temporary(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return name.startswith(".") and name.endswith(".tmp")


class ParquetOut:
    """A Parquet file being written, created at the first table (whose schema it takes).

    Columns are dictionary-encoded (Parquet's default) except the `plain` ones: columns
    whose values are all or nearly all different, such as unique ids and scores, for which
    the writer would build each row group's dictionary, hashing every value, only to give
    it up at its size limit, after writing the first values twice (in the dictionary, and as
    its indices). Writing 131,072 scores with their id (sequential or random integers, or
    strings): 28-34 -> 12-18 ms, and files 19-31% smaller. Plain encoding is what every
    Parquet reader reads.
    """

    def __init__(self, path: str, fs: pafs.FileSystem, plain: Iterable[str] = ()):
        self._path, self._fs = path, fs
        self._plain = frozenset(plain)
        self._writer: pq.ParquetWriter | None = None
        self._closed = False
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            dictionary = [n for n in table.schema.names if n not in self._plain]
            self._writer = pq.ParquetWriter(
                self._path,
                table.schema,
                filesystem=self._fs,
                compression="zstd",
                use_dictionary=dictionary if self._plain else True,
            )
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> bool:
        """Finish the file; False when no table was ever written (there is no file)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            self._closed = True
        return self._closed


def _fsync_local(location: Location, path: str) -> None:
    # A rename is only as durable as the data it points to: flush before publishing.
    if isinstance(location.fs, pafs.LocalFileSystem):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_FS_CACHE: dict[str, tuple[pafs.FileSystem, str]] = {}


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    if uri not in _FS_CACHE:
        if "://" in uri:
            try:
                _FS_CACHE[uri] = pafs.FileSystem.from_uri(uri)
            except (pa.ArrowInvalid, OSError) as exc:
                raise StorageError(f"cannot open storage location {uri!r}: {exc}") from exc
        else:
            _FS_CACHE[uri] = (pafs.LocalFileSystem(), os.path.abspath(uri))
    return _FS_CACHE[uri]
