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
"""

from __future__ import annotations

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
    from uvicorn.main import main as uvicorn

    uvicorn(argv[1:], prog_name="uvicorn")


if __name__ == "__main__":
    main(sys.argv[1:])
