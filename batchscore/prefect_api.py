"""One Prefect API for every process of a run.

Without `PREFECT_API_URL`, Prefect starts a temporary server per process, and with a process
pool each worker starts its own (ENVIRONMENT.md: 32 s instead of 7 s for 50 tasks). When no
API is configured, `one_api()` starts a single temporary server on 127.0.0.1 and points this
process and every child at it; with a configured API (a `prefect server start`, a worker) it
does nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress


@contextmanager
def one_api() -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    configured = get_current_settings().api.url
    if configured:
        yield str(configured)
        return
    from prefect.server.api.server import SubprocessASGIServer

    # The temporary server has no network to send telemetry to; asking costs seconds.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    server = SubprocessASGIServer()
    server.start(timeout=120)
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        _drain()
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


def _drain() -> None:
    # Logs and events are sent in the background; deliver them before the server goes away.
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        # A lost log line must not turn a finished run into an error.
        with suppress(Exception):
            service.drain_all(timeout=10)
