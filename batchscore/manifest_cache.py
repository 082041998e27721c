"""Manifests of many partitions, read on an object store only when they changed.

A run decides what to do from every scored partition's `_SUCCESS` (`partitions.pending`)
and every labelled one's performance `_SUCCESS` (`performance.pending`). On S3 that was a
GET per manifest on every run, growing with the days kept (1,000 days on moto: 3,034
requests, 22.7 s to find nothing to do). Here the folder is listed instead (ListObjectsV2
gives every object's ETag and size, 1,000 objects a request), and a manifest whose listed
ETag and size are those it had when it was last read is taken from a cache of what was read
then: one JSON object of the store, `<store>/_cache/manifests.json`, read with one GET and
rewritten with one PUT when something in it changed. Only new and changed manifests are
read.

The `_SUCCESS` files stay the markers (DESIGN.md): the cache holds nothing a manifest does
not, and is used only for a manifest that is listed now with the ETag and size recorded
beside its content (the ETag of the GET that read it, so a manifest rewritten between the
listing and the read is recorded as the version read). An S3 ETag changes whenever an
object's content does (an MD5 of it, or for a multipart upload or a KMS-encrypted object
another value that still changes with it). A cache that is missing, unreadable, of another
format, whose digest does not match its entries, or written by a concurrent run from older
listings, costs reads, never an answer: an entry whose ETag is not the one listed now is
not used. It lives in the store rather than on the machine so that deployment workers that
start empty (a container per run) find it.

Elsewhere than on S3, and for fewer than `LISTED_FROM` partitions (a lease's re-check of
one partition, `--partition`), the manifests are read as before: a local read costs ~0.1 ms,
and a listing costs more requests than a few GETs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from batchscore.storage import (
    Location,
    Shape,
    UnreadableJSON,
    check_shape,
    listed_etags,
    read_each,
    read_json_and_etag,
    read_json_in_one_request,
    write_json_in_one_request,
)

_log = logging.getLogger("batchscore.manifest_cache")

CACHE = ("_cache", "manifests.json")
FORMAT = "batchscore.manifest-cache/1"
# Below this many manifests they are read one GET each (16 at a time): a listing of the
# folder and the cache's GET and PUT cost more than they save.
LISTED_FROM = 16

Manifest = dict | None | UnreadableJSON


def read_manifests(
    location: Location, name: str, wanted: dict[str, tuple[list[str], Shape]]
) -> dict[str, dict[str, Manifest]]:
    """For each folder of `wanted` (`{"scores": (partitions, shape)}`), each partition's
    `<folder>/dt=D/<name>` with the keys of `shape` only (those its readers use, which is
    what the cache keeps): None when it has none, the `UnreadableJSON` it raised when it
    cannot be read. A storage error other than a missing file is raised, as one read's was.
    The folders share one read and one write of the cache."""
    shapes = {
        f"{folder}/dt={p}/{name}": shape
        for folder, (partitions, shape) in wanted.items()
        for p in partitions
    }
    found = _read(location, shapes, list(wanted))
    return {
        folder: {p: found[f"{folder}/dt={p}/{name}"] for p in partitions}
        for folder, (partitions, _) in wanted.items()
    }


def _read(location: Location, shapes: dict[str, Shape], folders: list[str]) -> dict[str, Manifest]:
    """Each manifest of `shapes` (its path under `location`, within `folders`), by path."""

    def read(rel: str) -> Manifest:
        try:
            return _kept(read_json_in_one_request(location, rel, shape=shapes[rel]), shapes[rel])
        except UnreadableJSON as exc:
            return exc

    paths = list(shapes)
    listings = [listed_etags(location, f) for f in folders] if len(paths) >= LISTED_FROM else []
    if not listings or any(listing is None for listing in listings):
        return dict(zip(paths, read_each(location, read, paths), strict=True))
    listed = {rel: now for listing in listings for rel, now in (listing or {}).items()}
    cached = _load(location)
    found: dict[str, Manifest] = {}
    unread = []
    for rel in paths:
        now = listed.get(rel)
        if now is None:
            found[rel] = None  # not listed: there is no manifest to read
        elif _same(cached.get(rel), now, shapes[rel]):
            found[rel] = cached[rel]["content"]
        else:
            unread.append(rel)

    def read_with_etag(rel: str) -> tuple[Manifest, str, int]:
        try:
            obj, etag, size = read_json_and_etag(location, rel, shape=shapes[rel])
        except UnreadableJSON as exc:
            return exc, "", 0
        return _kept(obj, shapes[rel]), etag, size

    # Entries of manifests listed as they were recorded stay; those of manifests changed
    # or gone since are replaced or dropped (those of other folders are left as they are).
    entries = {
        rel: entry
        for rel, entry in cached.items()
        if not rel.startswith(tuple(f"{f}/" for f in folders)) or _unchanged(entry, listed.get(rel))
    }
    for rel, (obj, etag, size) in zip(
        unread, read_each(location, read_with_etag, unread), strict=True
    ):
        found[rel] = obj
        entries.pop(rel, None)
        if isinstance(obj, dict) and etag:
            entries[rel] = {"etag": etag, "size": size, "content": obj}
    if entries != cached:
        _save(location, entries)
    return found


def _kept(obj: dict | None, shape: Shape) -> dict | None:
    """The keys of `shape` of a manifest: all its readers use, and all the cache keeps, so
    that a manifest reads the same from the cache as from the store."""
    return None if obj is None else {k: obj[k] for k in shape if k in obj}


def _unchanged(entry: dict, now: tuple[str, int] | None) -> bool:
    return now is not None and bool(now[0]) and (entry["etag"], entry["size"]) == now


def _same(entry: dict | None, now: tuple[str, int], shape: Shape) -> bool:
    """Whether a cache entry holds the manifest listed now with ETag and size `now`, and
    what its readers need of it (an entry edited by hand may not)."""
    if entry is None or not _unchanged(entry, now) or not isinstance(entry["content"], dict):
        return False
    try:
        check_shape(entry["content"], "", shape)
    except UnreadableJSON:
        return False
    return True


def _digest(entries: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


def _load(location: Location) -> dict[str, dict]:
    """The cache's entries, by manifest path: {"etag", "size", "content"}. Empty when it is
    missing, cannot be read (a storage error included: it costs reads, and the manifests'
    own reads report a store that fails), is of another format, or its entries do not
    match the digest written with them."""
    try:
        cache = read_json_in_one_request(
            location, *CACHE, shape={"format": str, "entries": dict, "sha256": str}
        )
    except (UnreadableJSON, OSError) as exc:
        _log.warning("%s: %s; reading every manifest", location.path(*CACHE), exc)
        return {}
    if cache is None or cache["format"] != FORMAT:
        return {}
    entries = cache["entries"]
    if _digest(entries) != cache["sha256"]:
        _log.warning(
            "%s: its entries do not match its sha256; reading every manifest",
            location.path(*CACHE),
        )
        return {}
    return {
        key: entry
        for key, entry in entries.items()
        if isinstance(entry, dict)
        and isinstance(entry.get("etag"), str)
        and type(entry.get("size")) is int
        and "content" in entry
    }


def _save(location: Location, entries: dict[str, dict]) -> None:
    """Write the cache whole (one PUT). A run that cannot write it still has its answers:
    the next run reads the manifests again."""
    cache = {"format": FORMAT, "entries": entries, "sha256": _digest(entries)}
    try:
        write_json_in_one_request(location, cache, *CACHE)
    except OSError as exc:
        _log.warning(
            "%s: cannot write it (%s); manifests are read again", location.path(*CACHE), exc
        )
