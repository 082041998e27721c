"""Storage: the two roots of DESIGN.md (`source`, read only; `store`, ours) on pyarrow filesystems.

Owns the rules that keep readers safe: every file appears by an atomic rename from a hidden
temporary name (`.name.<uuid>.tmp`, which neither pyarrow.dataset nor a `*.parquet` glob
picks up), partition folders are published whole by renaming a finished staging folder, and
partition folder names are parsed strictly so nothing outside `dt=YYYY-MM-DD` is ever read.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

PARTITION_RE = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")


class StorageError(RuntimeError):
    """A storage operation that failed; the message names the path."""


def parse_partition_dir(name: str) -> dt.date | None:
    """The date of a `dt=YYYY-MM-DD` folder name, or None for anything else."""
    match = PARTITION_RE.match(name)
    if not match:
        return None
    try:
        return dt.date.fromisoformat(match.group(1))
    except ValueError:
        return None


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

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *[p.strip("/") for p in parts if p]])

    def child(self, *parts: str) -> Location:
        return Location("/".join([self.uri.rstrip("/"), *[p.strip("/") for p in parts if p]]))

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
        """The data files of a folder: files whose names start with neither '.' (our
        temporary names) nor '_' (manifests), the rule pyarrow.dataset also follows."""
        return [
            e
            for e in self.list(*parts)
            if e.type == pafs.FileType.File and not e.base_name.startswith((".", "_"))
        ]

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.path(*parts)) as fh:
            return fh.read()

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_bytes(*parts))

    def read_json_or_none(self, *parts: str) -> Any:
        try:
            return self.read_json(*parts)
        except FileNotFoundError:
            return None

    # --- writing -----------------------------------------------------------------------
    def makedirs(self, *parts: str) -> None:
        self.fs.create_dir(self.path(*parts), recursive=True)

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Write a file so that it appears whole or not at all."""
        final = self.path(*parts)
        folder, name = final.rsplit("/", 1)
        self.fs.create_dir(folder, recursive=True)
        tmp = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
        with self.fs.open_output_stream(tmp) as fh:
            fh.write(data)
        _fsync_local(self, tmp)
        self.fs.move(tmp, final)

    def write_json(self, obj: Any, *parts: str) -> None:
        self.write_bytes(json.dumps(obj, indent=2, sort_keys=True, default=str).encode(), *parts)

    def write_parquet(self, table: pa.Table, *parts: str) -> None:
        final = self.path(*parts)
        folder, name = final.rsplit("/", 1)
        self.fs.create_dir(folder, recursive=True)
        tmp = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
        pq.write_table(table, tmp, filesystem=self.fs, compression="zstd")
        _fsync_local(self, tmp)
        self.fs.move(tmp, final)

    def delete_dir(self, *parts: str) -> None:
        if self.exists(*parts):
            self.fs.delete_dir(self.path(*parts))

    def publish_dir(self, staging: Location, *parts: str) -> None:
        """Move a finished staging folder to `parts`, replacing what was there.

        A reader sees the old folder or the new one, never a mix: the old one is first moved
        aside under `_staging/`, then the new one renamed into place, then the old one deleted.
        """
        final = self.path(*parts)
        self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
        if self.exists(*parts):
            self.fs.create_dir(self.path("_staging"), recursive=True)
            trash = self.path("_staging", f".trash-{uuid.uuid4().hex}")
            self.fs.move(final, trash)
            self.fs.move(staging.root, final)
            self.fs.delete_dir(trash)
        else:
            self.fs.move(staging.root, final)


class LeaseBusy(StorageError):
    """Another live holder has the lease."""


def try_lease(location: Location, name: str, ttl_seconds: float) -> tuple[dict | None, dict | None]:
    """Take the lease `name` under `location` if it is free: (our lease, None) or (None, holder).

    A lease is a file created with O_EXCL. It is free when absent, expired, or held by a
    process of this host that no longer exists (a holder killed with -9 leaves its file
    behind; its pid tells it is gone). A stale lease is moved aside by rename, which only one
    contender can win, then deleted.
    """
    if not isinstance(location.fs, pafs.LocalFileSystem):
        raise StorageError(f"leases need a local store; {location.uri} is not local")
    folder = location.path()
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    for _ in range(10):
        now = time.time()
        body = {
            "token": uuid.uuid4().hex,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "acquired_at": now,
            "expires_at": now + ttl_seconds,
            "path": path,
        }
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lease(path)
            if holder is None:
                continue  # released between our open and our read
            if not _stale(holder, now):
                return None, holder
            aside = f"{path}.stale-{uuid.uuid4().hex}"
            with suppress(FileNotFoundError):
                os.rename(path, aside)
                os.remove(aside)
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(body, fh)
        return body, None
    raise LeaseBusy(f"{path}: could not take the lease after 10 attempts")


def release_lease(lease: dict) -> None:
    """Give a lease back, if it is still ours (an expired one may have been taken over)."""
    current = _read_lease(lease["path"])
    if current is not None and current.get("token") == lease["token"]:
        with suppress(FileNotFoundError):
            os.remove(lease["path"])


@contextmanager
def lease(
    location: Location, name: str, ttl_seconds: float = 900.0, wait_seconds: float = 300.0
) -> Iterator[dict]:
    """Hold the lease `name` for the block, waiting up to `wait_seconds` for a live holder."""
    deadline = time.monotonic() + wait_seconds
    while True:
        ours, holder = try_lease(location, name, ttl_seconds)
        if ours is not None:
            break
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
    if holder.get("expires_at", 0) < now:
        return True
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True  # its holder died without releasing it
        except PermissionError:
            return False  # alive, another user's
    return False


def _read_lease(path: str) -> dict | None:
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except ValueError:
        # Created but not yet written by its holder: treat as live, never as stale.
        return {"expires_at": float("inf")}


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
