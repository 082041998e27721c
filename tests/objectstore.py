"""An S3 API on loopback for the object-storage tests: moto's ThreadedMotoServer, and helpers
to move folders between it and local disk (importable as `objectstore`)."""

from __future__ import annotations

import logging
import os
import re
import socket
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.fs as pafs

# Fake credentials: moto accepts any; they keep boto3/pyarrow from looking for real ones.
ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


class RequestCounter(logging.Handler):
    """The requests a `moto_s3` server served, by method (a GET with `list-type` is a LIST),
    from werkzeug's access log: attach it to the `werkzeug` logger at INFO."""

    def __init__(self):
        super().__init__()
        self.seen: Counter = Counter()
        # Each request as (method, path and query), in the order served.
        self.requests: list[tuple[str, str]] = []

    def emit(self, record):
        text = re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage())  # its colours
        request = re.search(r'"([A-Z]+) (\S+) HTTP/', text)
        if request is not None:
            method, target = request.groups()
            self.requests.append((method, target))
            self.seen["LIST" if method == "GET" and "list-type" in target else method] += 1


@contextmanager
def moto_s3() -> Iterator[str]:
    """A real S3 API (moto) on 127.0.0.1 and a free port. The standard AWS variables point at
    it while it runs, so this process and every process it starts (workers, Dask, the CLI)
    reach it the way they would reach MinIO or AWS; the old values come back after."""

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in [*ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update({**ENV, "AWS_ENDPOINT_URL": endpoint})
    try:
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


def new_bucket(prefix: str = "bs") -> str:
    import boto3

    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def s3() -> pafs.S3FileSystem:
    return pafs.S3FileSystem(
        endpoint_override=os.environ["AWS_ENDPOINT_URL"], region=ENV["AWS_DEFAULT_REGION"]
    )


def upload(local: Path, uri: str) -> None:
    """Copy a local folder to `s3://bucket/prefix` (objects keep their relative paths)."""
    pafs.copy_files(str(local), uri.removeprefix("s3://"), destination_filesystem=s3())


def download(uri: str, local: Path) -> Path:
    """Copy everything under `s3://bucket/prefix` into a local folder, replacing it."""
    import shutil

    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    fs, root = s3(), uri.removeprefix("s3://")
    if fs.get_file_info(root).type == pafs.FileType.Directory:
        pafs.copy_files(root, str(local), source_filesystem=fs)
    return local


def keys(uri: str) -> list[str]:
    """Every object under `s3://bucket/prefix`, relative to it."""
    fs, root = s3(), uri.removeprefix("s3://")
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return []
    return sorted(
        e.path[len(root) + 1 :]
        for e in fs.get_file_info(pafs.FileSelector(root, recursive=True))
        if e.type == pafs.FileType.File
    )
