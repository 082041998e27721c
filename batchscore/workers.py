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
connections for its children to inherit. The CLI starts it early: with a Prefect API
already running, at the command's first line, on a guess (`start_on_a_guess`), beside its
own imports, and stops it if the run will not need it; when it boots a temporary
server, once its own imports are done, while it waits for that server, so that two processes
share the two cores (three at once slowed a run of one small partition by 2-3 s). A
deployment's flow-run process starts it when it begins loading the score flow
(`start_for_deployment_run`); anything else, with the first pool. Where `forkserver` does not exist
(Windows), the pool is Prefect's, with `spawn`.
"""

from __future__ import annotations

import atexit
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


def start_on_a_guess() -> bool:
    """Start the fork server now, at a command's first line, before anything decides
    whether the run needs it; `start_for_run` stops it if not. True when it did.

    For a score run with a Prefect API already running, when nothing else boots beside the
    command: the decision (`start_for_run`) needs the config and a look at the store, which
    come after the CLI's first imports, 0.25 s in; and by then the fork server's imports
    (1.4 s of CPU) were what the plan waited for: the flow had claimed its partitions and
    waited for the first worker. A run that turns out not to need workers stops it, having
    spent its CPU on the core the CLI's single thread leaves idle."""
    global _on_a_guess
    if forkserver_context() is None:
        return False
    from multiprocessing import forkserver

    if getattr(forkserver._forkserver, "_forkserver_pid", None) is not None:
        return False  # running already, and not a guess of this function's
    forkserver.ensure_running()
    _on_a_guess = True
    atexit.register(_stop_guessed)  # a command that ends before deciding (a bad config)
    return True


_on_a_guess = False


def _stop_guessed() -> None:
    """Stop a fork server that `start_on_a_guess` started, while it may still be importing
    (it only reads its pipe once it is done: killed, not asked)."""
    global _on_a_guess
    if not _on_a_guess:
        return
    _on_a_guess = False
    from multiprocessing import forkserver

    server = forkserver._forkserver
    pid = getattr(server, "_forkserver_pid", None)
    if pid is None:
        return
    with suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    with suppress(Exception):
        server._stop()  # closes its pipe, reaps it, removes its socket


def start_for_deployment_run() -> bool:
    """In the process a Prefect worker (or `serve`) started for one flow run of the score
    flow, start the fork server as `flows.score` begins loading. True when it did; only the
    first call of a process decides.

    The CLI starts it early itself (`batchscore.cli`); a deployment's flow-run process has
    no CLI, and started it with the first pool, once the flow had begun. The run's
    parameters (from the API) name the config, and `start_for_run` decides as the CLI does.
    A deployment run of 5M rows: 10.43 -> 10.20 s (medians of six, interleaved); little,
    as Prefect's engine loads the flow ~0.4 s before it begins, and a pull step is too early:
    the process worker runs them in a supervisor that then execs the engine, which closed
    the fork server's pipe (it exited). Not in the fork server or its workers, which import
    `flows.score` too; any doubt (no config, an API error) leaves the start to the first
    pool, as before."""
    global _deployment_run_decided
    if (
        _deployment_run_decided
        or not os.environ.get("PREFECT__FLOW_RUN_ID")
        or "batchscore.fork_ready" in sys.modules
    ):
        return False
    _deployment_run_decided = True
    try:
        from prefect.runtime import flow_run

        from batchscore.config import DEFAULT_CONFIG, load_config

        parameters = flow_run.parameters
        config = load_config(parameters.get("config", DEFAULT_CONFIG))
        return start_for_run(config, parameters.get("partition"), bool(parameters.get("rescore")))
    except Exception:  # noqa: BLE001 - a head start only: the flow reports real problems
        return False


_deployment_run_decided = False


def start_for_run(config, partition: str | None, rescore: bool) -> bool:
    """Start the fork server now (`start_early`) for a score run of `config` with these
    options, unless its runner is not the process pool or `runs_in_flow_process` says it will
    not need workers (and stops one `start_on_a_guess` started). True when it did."""
    global _on_a_guess
    if config.scoring.runner != "process" or runs_in_flow_process(config, partition, rescore):
        _stop_guessed()
        return False
    _on_a_guess = False  # no longer a guess: kept
    start_early()
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

        if not (Location(config.store).is_local and Location(config.source).is_local):
            return False
        model = Registry(config.store, config.dataset.name).champion_ref()
        found = partitions.discover(config).partitions
        candidates = [p for p in found if partition is None or p == partition]
        todo = partitions.pending(config, model, candidates, rescore)
        if not partitions.rows_at_most(config, todo, config.scoring.chunk_rows):
            return False
        labelled = set(performance.labelled_partitions(config))
        return not (labelled & set(todo) or performance.pending(config))
    except Exception:  # noqa: BLE001 - a guess: the flow reports real problems
        return False
