"""The temporary Prefect API server's process (`batchscore.prefect_api.TemporaryServer`):
uvicorn serving Prefect's API app, bound to the life of the process that started it.

`python -m batchscore.api_server PARENT_PID UVICORN_ARGS...`. The server runs in a session
of its own, so the terminal's Ctrl-C reaches the command and its workers, not the server:
the command records its interrupted flow run (Crashed) and delivers its last logs there,
then stops it. (Sharing the terminal's signal, the server died first and the command
retried its last requests against it for minutes.) On Linux the kernel sends it SIGTERM
when the thread that started it ends, however it ends (`PR_SET_PDEATHSIG`): a command
killed with SIGKILL leaves no server behind. PARENT_PID 0 skips that (a server started by
a thread that ends before the server should).

The app is Prefect's (`create_app` below), imported and built with the cyclic garbage
collector off, then frozen out of its reach: importing Prefect's server builds ~285,000
objects the collector tracks, which it traversed five times over while they were being built, for
nothing (modules are not garbage); and every full collection of the running server would
traverse them again. The boot took 2.45 s of CPU to import, 1.75 s with the collector off,
on the critical path of every run that boots a temporary server.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def _stop_with(parent: int) -> None:
    if parent == 0 or not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it ended before the line above took effect
        sys.exit(0)


def main(argv: list[str]) -> None:
    _stop_with(int(argv[0]))
    gc.disable()  # until the app is built (`create_app`)
    from uvicorn.main import main as uvicorn

    uvicorn(argv[1:], prog_name="uvicorn")


def create_app():
    """uvicorn's app factory: Prefect's API app, then the collector on again, with all that
    importing and building it made frozen.

    Built as the process's last app (`final`, what Prefect's own temporary server asks with
    `PREFECT__SERVER_FINAL`) only where that frees something: with FastAPI before 0.137,
    whose routers copied their routes, Prefect deletes the originals (~50 MB) and runs a
    full garbage collection. With the FastAPI pinned here nothing is deleted, and that
    collection of the ~285,000 objects just built took 0.2-0.4 s of CPU on the way to the
    server's first answer (medians of three boots: 2.53-2.64 s -> 2.17-2.38 s), to give
    back ~5 MiB."""
    try:
        from prefect.server.api import server

        final = getattr(server, "_FASTAPI_COPIES_ROUTES_ON_INCLUDE", True)
        app = server.create_app(final=final)
        logging.getLogger(RECORDER_LOGGER).addFilter(_flush_cancelled_at_stop)
        return app
    finally:
        gc.freeze()
        gc.enable()


RECORDER_LOGGER = "prefect.server.services.task_run_recorder"


def _flush_cancelled_at_stop(record: logging.LogRecord) -> bool:
    """Keep the task-run recorder's "Error flushing N events (N to retry, 0 dropped)" out
    of the command's output when the flush was cancelled (CancelledError) with nothing
    dropped: that is the recorder's own stop, which cancels a periodic flush in flight,
    puts its events back and writes them in its final flush. The command stops its server
    at every end, so a run that ended while a flush was running printed a traceback (1 run
    in 18 of the Ctrl-C test on two loaded cores). Events dropped, or any other error, are
    logged as before."""
    exc = record.exc_info[1] if record.exc_info else None
    message = record.getMessage()
    benign = (
        isinstance(exc, asyncio.CancelledError)
        and message.startswith("Error flushing")
        and message.endswith(", 0 dropped)")
    )
    return not benign


if __name__ == "__main__":
    main(sys.argv[1:])
