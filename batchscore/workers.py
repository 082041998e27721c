"""Scoring worker processes that start in milliseconds instead of seconds.

Prefect's `ProcessPoolTaskRunner` starts its workers with `spawn`: each is a fresh
interpreter that imports Prefect, pyarrow, batchscore and LightGBM before its first task,
about two seconds here, on the critical path of every run (the plan waits for the first
worker; the first chunks for the others). `flows.score.ForkedProcessPool` is that runner
with the `forkserver` start method instead: one server process imports those modules once,
and every worker is a fork of it, started in milliseconds with the modules already loaded.
Nothing else changes: tasks, their context and environment travel to the workers as with
`spawn`.

The fork server is a clean process of its own (not a fork of the flow process, whose threads
make forking it unsafe); it only imports modules, so it holds no threads or open
connections for its children to inherit. The CLI starts it early (`start_early()`): with a
Prefect API already running, at once, beside its own imports; when it boots a temporary
server, once its own imports are done, while it waits for that server, so that two processes
share the two cores (three at once slowed a run of one small partition by 2-3 s). Otherwise
(a deployment's flow run) it starts with the first pool. Where `forkserver` does not exist
(Windows), the pool is Prefect's, with `spawn`.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import threading
import time

# The fork server preloads one module, `batchscore.fork_ready`: it imports what every
# scoring worker uses (its `WORKER_MODULES`), with the cyclic garbage collector off while it
# does, loads Prefect's collections, and freezes it all out of the collector's reach.
PRELOAD = ["batchscore.fork_ready"]


def forkserver_context():
    """The `forkserver` multiprocessing context, preloading `PRELOAD`; None where it does
    not exist."""
    try:
        context = multiprocessing.get_context("forkserver")
    except ValueError:  # no fork server on this platform
        return None
    # Arrow's allocator (mimalloc) keeps pages a batch freed for a while before it gives
    # them back; workers tell it to give them back after 50 ms. Measured at 5M rows: the
    # pool's resident memory (PSS sum) -105 MiB, no measurable change in wall time (100 ms:
    # -60 MiB; 0, at once: +2 s). Set before the fork server starts, as its imports start
    # the allocator, which reads it then; a value already in the environment is kept.
    os.environ.setdefault("MIMALLOC_PURGE_DELAY", "50")
    context.set_forkserver_preload(PRELOAD)
    return context


def exit_with(pid: int) -> None:
    """A pool worker's initializer: end this worker as soon as process `pid` (the flow's)
    ends, however it ends.

    A worker is the fork server's child, not the flow process's, and it holds its task
    queue's both ends, so nothing told it: after a flow process killed with SIGKILL (the
    OOM killer, `kill -9`), its workers scored the chunks already queued to them and then
    waited for more, with the fork server, for good. A chunk cut short is not lost work
    nor half a result: it is staged whole or not at all."""

    def watch() -> None:
        try:
            select.select([os.pidfd_open(pid)], [], [])  # readable once it has ended
        except (AttributeError, OSError):  # no pidfd here (or it has ended already)
            while _alive(pid):
                time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-flow", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        pass
    return True


def start_early() -> None:
    """Start the fork server (and its imports) now, in the background: the first pool
    connects to it when it is ready."""
    if forkserver_context() is not None:
        from multiprocessing import forkserver

        forkserver.ensure_running()
