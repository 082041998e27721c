"""The end-to-end tests: marker `e2e` (they run in the default `make test`; they are the
acceptance of deploying batchscore through Prefect). `pytest -m "not e2e"` leaves them out."""

from __future__ import annotations


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "e2e: end to end through a real Prefect server, worker and headless Chromium (minutes)",
    )
