"""A store whose filesystem fills up (ENOSPC), on a real filesystem of a few MB: a tmpfs
mounted for the test, skipped where this process may not mount one (not root, or no
CAP_SYS_ADMIN in its container)."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
from helpers import output_of, start_score, write_config

from batchscore import performance
from batchscore.config import load_config
from batchscore.storage import disk_full
from batchscore.training import train
from tasks.common import transient


@pytest.fixture
def small_fs(tmp_path: Path):
    where = tmp_path / "fs"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(folder: Path, leave: int = 0) -> Path:
    """Fill `folder`'s filesystem to its last byte, then give `leave` bytes back."""
    path = folder / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 20, 4096, 1):
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
        os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    finally:
        os.close(fd)
    return path


def test_a_full_disk_is_not_retried_as_other_storage_errors_are():
    from prefect.states import Failed

    assert transient(None, None, Failed(data=OSError(errno.EIO, "I/O error"))) is True
    assert transient(None, None, Failed(data=OSError(errno.ENOSPC, "No space left"))) is False
    assert transient(None, None, Failed(data=OSError(errno.EDQUOT, "Disk quota"))) is False


def test_a_full_store_fails_the_run_at_once_saying_where_and_the_next_run_completes(
    small_fs: Path, sample: Path, prefect_api
):
    """Each chunk's writes were retried 1 + 4 + 16 s (a sample run: 200 s instead of 15);
    the reason was pyarrow's `[Errno 28] Error writing bytes to file`, naming no file and no
    filesystem, under its traceback; realised performance left a staging folder per
    attempt that nothing deleted; and a store too full for the run's leases ended the run
    with `OSError: [Errno 28] No space left on device`."""
    store = small_fs / "store"
    config = write_config(
        sample,
        sample.read_text(),
        storage={"store": str(store)},
        retrain={"on_drift": "off", "lightgbm": {"max_rounds": 30}},
    )
    train(load_config(config), reason="first")
    days = sorted(p.name for p in Path(load_config(config).source, "incoming").iterdir())
    full = f"the store's filesystem is full ({store}: "

    filler = _fill(small_fs, leave=300_000)  # room for leases and a chunk or two
    output = output_of(start_score(config), timeout=600)
    assert "run Failed: " in output and full in output, output
    assert "Retry" not in output and "Traceback" not in output, output
    assert not list(store.glob("_staging/performance-*"))

    filler.unlink()
    filler = _fill(small_fs)  # not a byte: not even a lease can be written
    output = output_of(start_score(config), timeout=600)
    assert f"run Failed: [Errno {errno.ENOSPC}] No space left on device: {full}" in output, output
    assert "Traceback" not in output, output
    assert not list(store.glob("_leases/*.lease"))  # an empty one held its partition a minute

    filler.unlink()
    output = output_of(start_score(config), timeout=600)
    assert "run Completed: " in output, output
    for day in days:
        assert (store / "scores" / day / "_SUCCESS").exists(), (day, output)
    assert not list(store.glob("_staging/performance-*"))

    # Realised performance on a full disk: each attempt (a retry is one) left its staging
    # folder, which nothing deleted (it takes no lease: no run may delete another's).
    _fill(small_fs)
    with pytest.raises(OSError) as failed:
        performance.measure(load_config(config), "2026-10-01", "a-run")
    assert disk_full(failed.value)
    assert not list(store.glob("_staging/performance-*"))
