"""Scoring worker processes that start in milliseconds instead of seconds.

Prefect's `ProcessPoolTaskRunner` starts its workers with `spawn`: each is a fresh
interpreter that imports Prefect, pyarrow, batchscore and LightGBM before its first task,
about two seconds here, on the critical path of every run (the plan waits for the first
worker; the first chunks for the others). `flows.score.ForkedProcessPool` is that runner
with the `forkserver` start method instead: one server process imports those modules once,
and every worker is a fork of it, started in milliseconds with the modules already loaded.
Nothing else changes: tasks, their context and environment travel to the workers as with
`spawn`.

The fork server only imports modules, so it holds no Python threads or open connections
for its children to inherit. A score run of the `batchscore` command forks it from itself
(`_fork_here`) once it has imported Prefect, pyarrow and the flows, which the workers need
too, and before its flow begins (one thread, no connection yet), unless the run looks like
it will not need workers (`start_for_run`): the fork imports only what the command does not
need (lleaves, LightGBM, SciPy's special functions). A deployment's flow-run process forks
it the same way once Prefect's engine has loaded the score flow, before the flow begins
(`start_for_deployment_run`); anything else spawns it (a fresh interpreter) with the first
pool.
Where `forkserver` does not exist (Windows), the pool is Prefect's, with `spawn`.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from contextlib import suppress

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
    set_allocator_environment()
    context.set_forkserver_preload(PRELOAD)
    return context


def set_allocator_environment() -> None:
    """Arrow's allocator (mimalloc) keeps pages a batch freed for a while before it gives
    them back; workers tell it to give them back after 50 ms. Measured at 5M rows: the
    pool's resident memory (PSS sum) -105 MiB, no measurable change in wall time (100 ms:
    -60 MiB; 0, at once: +2 s). Read once, when pyarrow loads the allocator: set before the
    fork server starts, and in the command before it imports pyarrow, as a fork server
    forked from it (`_fork_here`) has its allocator. A value already there is kept."""
    os.environ.setdefault("MIMALLOC_PURGE_DELAY", "50")


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


def start_early(fork: bool = False) -> None:
    """Start the fork server (and its imports) now, in the background: the first pool
    connects to it when it is ready. With `fork`, as a fork of this process where that is
    safe (`_fork_here`); else spawned, a fresh interpreter."""
    if forkserver_context() is not None and not (fork and _fork_here()):
        from multiprocessing import forkserver

        forkserver.ensure_running()


def _fork_here() -> bool:
    """Start the fork server as a fork of this process; False, with nothing started, where
    this process has more than one thread, or a fork server is running already.

    Multiprocessing spawns its fork server: a fresh interpreter that imports Prefect,
    pyarrow, batchscore, lleaves and LightGBM (`fork_ready`), 1.5 s of CPU. This process
    has imported most of those itself (Prefect, pyarrow, the flows: what its run needs
    anyway); a fork of it has them already and imports only the rest (lleaves, LightGBM,
    SciPy's special functions), ~0.5 s. The rest is as with a spawned server: its workers
    are its forks, pools reach it through multiprocessing's socket, and it ends once every
    process holding the "alive" pipe has (`forkserver.main`).

    Called before a flow begins: by the command, and by a deployment's flow-run process as
    Prefect's engine loads the score flow (`start_for_deployment_run`). One Python thread,
    so no lock is held by a thread the fork leaves behind; a connection Prefect's client
    left open is inherited and never used (nothing in the fork server talks to the API,
    and its workers make their own clients). Native threads (OpenBLAS's, Arrow's
    allocator's, and Arrow's pools once it has read a footer) have at-fork handlers, and a
    spawned server forked them into every worker too. Linux only: macOS's system
    libraries are not safe to use in a fork."""
    if not sys.platform.startswith("linux") or threading.active_count() > 1:
        return False
    if threading.current_thread() is not threading.main_thread():
        return False
    import socket
    from multiprocessing import connection, forkserver, resource_tracker, util

    server = forkserver._forkserver
    if server._forkserver_pid is not None:
        return False
    resource_tracker.ensure_running()
    # As `ForkServer.ensure_running` sets up a spawned server's socket and pipe.
    listener = socket.socket(socket.AF_UNIX)
    address = connection.arbitrary_address("AF_UNIX")
    listener.bind(address)
    if not util.is_abstract_socket_namespace(address):
        os.chmod(address, 0o600)
    listener.listen()
    alive_r, alive_w = os.pipe()
    for stream in (sys.stdout, sys.stderr):  # or the child's copy of the buffer prints again
        with suppress(Exception):
            stream.flush()
    try:
        pid = os.fork()
    except OSError:  # no memory or process left for a fork: spawned instead
        os.close(alive_r)
        os.close(alive_w)
        listener.close()
        if not util.is_abstract_socket_namespace(address):
            with suppress(OSError):
                os.unlink(address)
        return False
    if pid == 0:
        _serve_forked(listener.detach(), alive_r, alive_w)  # never returns
    os.close(alive_r)
    listener.close()
    server._forkserver_address = address
    server._forkserver_alive_fd = alive_w
    server._forkserver_pid = pid
    return True


def _serve_forked(listener_fd: int, alive_r: int, alive_w: int) -> None:
    """The forked fork server's life: what a spawned one would not have from this process
    undone (the other end of the alive pipe, Python's signal handlers), then
    multiprocessing's server loop, which first imports the rest of the workers' modules
    (`PRELOAD`: `fork_ready`). It ends with `os._exit`: this process's exit handlers (a
    temporary API server's stop among them) are the command's, not its."""
    code = 1
    try:
        os.close(alive_w)
        for signum in signal.valid_signals():
            with suppress(OSError, ValueError):
                if callable(signal.getsignal(signum)):
                    signal.signal(signum, signal.SIG_DFL)
        from multiprocessing import forkserver

        forkserver.main(listener_fd, alive_r, PRELOAD)  # imports PRELOAD, as when spawned
        code = 0
    except SystemExit:  # every process holding the alive pipe has ended
        code = 0
    except BaseException:  # noqa: BLE001 - reported, then ended: never back to the caller
        with suppress(Exception):
            import traceback

            traceback.print_exc()
    finally:
        os._exit(code)


def start_for_deployment_run() -> bool:
    """In the process a Prefect worker (or `serve`) started for one flow run of the score
    flow, start the fork server once `flows.score` is loaded, before the flow begins. True
    when it did; only the first call of a process decides.

    The CLI starts it itself (`batchscore.cli`); a deployment's flow-run process has no CLI.
    The run's parameters (from the API) name the config, and `start_for_run` decides as the
    CLI does. Prefect's engine loads the flow in its main thread before it starts any other,
    so the fork server is a fork of this process, as the command's is (`_fork_here`), that
    imports only lleaves, LightGBM and SciPy's special functions: 5M rows, API running,
    medians of six interleaved deployment runs each, against a spawned server started as
    the module began loading: 14.82 -> 13.70 s (from the worker's Pending to Completed),
    CPU 21.1 -> 19.6 s, tree PSS 766 -> 710 MiB. The parameters are read with a sync
    client, closed after: Prefect's runtime lookup (`prefect.runtime.flow_run.parameters`)
    starts its event-loop thread, and a process with a second thread spawns its fork
    server instead. A pull step is too early: the process worker runs them in a supervisor
    that then execs the engine, which closed the fork server's pipe (it exited). Not in the
    fork server or its workers, which import `flows.score` too; any doubt (no config, an
    API error) leaves the start to the first pool, as before."""
    global _deployment_run_decided
    if (
        _deployment_run_decided
        or not os.environ.get("PREFECT__FLOW_RUN_ID")
        or "batchscore.fork_ready" in sys.modules
    ):
        return False
    _deployment_run_decided = True
    try:
        from uuid import UUID

        from prefect.client.orchestration import get_client

        from batchscore.config import DEFAULT_CONFIG, load_config

        with get_client(sync_client=True) as client:
            run = client.read_flow_run(UUID(os.environ["PREFECT__FLOW_RUN_ID"]))
        parameters = run.parameters
        config = load_config(parameters.get("config", DEFAULT_CONFIG))
        return start_for_run(
            config, parameters.get("partition"), bool(parameters.get("rescore")), fork=True
        )
    except Exception:  # noqa: BLE001 - a head start only: the flow reports real problems
        return False


_deployment_run_decided = False


def start_for_run(config, partition: str | None, rescore: bool, fork: bool = False) -> bool:
    """Start the fork server now (`start_early`, forked from this process with `fork`) for a
    score run of `config` with these options, unless its runner is not the process pool or
    `runs_in_flow_process` says it will not need workers. True when it did."""
    if config.scoring.runner != "process" or runs_in_flow_process(config, partition, rescore):
        return False
    start_early(fork)
    return True


def runs_in_flow_process(config, partition: str | None, rescore: bool) -> bool:
    """Whether a score run will do all its work in its flow process, by what the store holds
    now: everything pending fits in one chunk (by the Parquet footers; the flow then scores it
    there) and no labelled partition needs realised performance (measured in workers). Then a
    fork server would only take CPU from the flow: a 20,000-row partition took 6.7 s instead
    of 5.8 s with a temporary server, 3.1 s instead of 2.6 s with an API running. A guess, a
    few file reads, the cheap ones first: any doubt (an error, a partition arriving meanwhile)
    costs time, never results, as a pool starts its fork server when it first needs a
    worker. Asked of local folders only: on an object store the reads are round trips (a
    manifest per labelled partition), and the fork server starts early as before."""
    try:
        from batchscore import partitions, performance
        from batchscore.registry import Registry
        from batchscore.storage import Location
        from batchscore.training import labelled_partitions

        if not (Location(config.store).is_local and Location(config.source).is_local):
            return False
        model = Registry.for_config(config).champion_ref()
        found = partitions.discover(config)
        candidates = [p for p in found.partitions if partition is None or p == partition]
        todo = partitions.pending(config, model, candidates, rescore, listed=found.files)
        if not partitions.rows_at_most(config, todo, config.scoring.chunk_rows):
            return False
        labelled = set(labelled_partitions(config))
        return not (labelled & set(todo) or performance.pending(config))
    except Exception:  # noqa: BLE001 - a guess: the flow reports real problems
        return False
