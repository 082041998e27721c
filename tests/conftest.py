"""Shared fixtures: a real Prefect API for the session, and sample data copied per test."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
from helpers import SAMPLE, write_config

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect's home (its profiles, result storage and the temporary server's SQLite database)
# is private to the session, set before Prefect is imported: the suite must neither read a
# developer's profile nor grow ~/.prefect/prefect.db run after run (it held 300 retrain flow
# runs from earlier suites on one machine, past the API's default page of 200).
_PREFECT_HOME = tempfile.mkdtemp(prefix="batchscore-tests-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME

# The commands the tests start get Ctrl-C as a terminal's job does: SIGINT at its default.
# A suite started in the background by a shell without job control (`make test &`, a CI
# script) inherits SIGINT ignored, and a command inherits that from it: it ran to the end
# through the interrupt tests' Ctrl-C (exit 0), as such a command should. A handler here,
# unlike an ignored signal, is reset to the default in every program the suite starts.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_PREFECT_HOME, ignore_errors=True)


SAMPLE_CONFIG = SAMPLE.parent.parent / "batchscore.toml"


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect server on 127.0.0.1 for every flow test, stopped at the end."""
    from batchscore.prefect_api import one_api

    with one_api() as url:
        yield url


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    """A config for a private copy of the sample data and an empty store; returns its path."""
    shutil.copytree(SAMPLE / "incoming", tmp_path / "source" / "incoming")
    shutil.copytree(SAMPLE / "labels", tmp_path / "source" / "labels")
    return write_config(
        tmp_path / "batchscore.toml",
        SAMPLE_CONFIG.read_text(),
        storage={"source": "source", "store": "store"},
    )


@pytest.fixture(scope="session")
def s3_api():
    """A real S3 API (moto) on 127.0.0.1 for the session; AWS_ENDPOINT_URL points at it."""
    from objectstore import moto_s3

    with moto_s3() as endpoint:
        yield endpoint
