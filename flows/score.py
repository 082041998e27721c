"""The `score` flow: find pending partitions, plan, validate and score chunks, publish, report.

Planning and chunk scoring run in worker processes (`[scoring] workers`), or on an existing
Dask cluster (`[scoring] runner = "dask"`); the flow process only passes keys and summaries,
never rows: workers read their chunks from storage themselves. One partition's failure does
not stop the others: it is reported, and the run ends Failed only after every other partition
was published.
"""

from __future__ import annotations

import contextvars
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack, suppress
from dataclasses import replace
from functools import partial

from batchscore.workers import (
    exit_with,
    forkserver_context,
    set_allocator_environment,
    start_for_deployment_run,
)

# Before the imports below load pyarrow: a deployment's flow-run process forks the scoring
# workers' fork server from itself once this module is loaded (at its end), and a fork has
# this process's allocator, set as the workers' must be.
set_allocator_environment()

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.exceptions import ExternalSignal
from prefect.runtime import deployment, flow_run
from prefect.states import Cancelled, Completed, Crashed, Failed
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner

from batchscore.config import DEFAULT_CONFIG, Config, load_config
from batchscore.policy import RetrainDecision
from batchscore.registry import ModelRef
from batchscore.scoring import PartitionHeld, PartitionOutcome, UnreadableFile
from batchscore.storage import LeaseKeeper, disk_full, disk_full_reason
from batchscore.validation import FileProblem
from flows.retrain import retrain
from tasks.common import Sealed
from tasks.performance import find_labelled, measure_performance, report_performance
from tasks.report import report_run
from tasks.retrain import DRIFT_EVENT, decide_retrain, emit_drift_event
from tasks.scoring import (
    claim_partitions,
    find_partitions,
    hold_partition,
    plan_partition,
    prepare_worker,
    publish_partition,
    release_partitions,
    resolve_champion,
    score_chunk,
)


@flow(name="score", log_prints=True)
def score(config: str = DEFAULT_CONFIG, partition: str | None = None, rescore: bool = False):
    """Score every partition not yet scored by the champion (or one, or all with rescore)."""
    started = time.time()
    cfg = load_config(config)
    try:
        return _score(cfg, started, partition, rescore)
    except OSError as exc:
        if not disk_full(exc):
            raise
        # A store too full to take the run's leases, or its retrain decision: the run ends
        # Failed saying where, not with `OSError: [Errno 28] No space left on device`.
        # (A partition it fails on says so in its own reason: `_reason`.)
        return Failed(message=disk_full_reason(exc, cfg.store))


def _score(cfg: Config, started: float, partition: str | None, rescore: bool):
    run_id = flow_run.get_id() or "local"
    model = resolve_champion(cfg)
    pending = find_partitions(cfg, model, partition, rescore)
    todo, leases = claim_partitions(cfg, model, pending, rescore)
    workers = ExitStack()
    try:
        runner = workers.enter_context(task_runner(cfg))
        with LeaseKeeper(leases):  # renewed while the run lasts, however long
            leased = dict(zip(todo, leases, strict=True))
            outcomes, failures = score_partitions(runner, cfg, model, leased, run_id)
        performance, not_measured = measure_all(runner, cfg, run_id)
    except BaseException:
        workers.__exit__(*sys.exc_info())  # an interrupt stops them at once
        raise
    finally:
        release_partitions(leases)
    # Every result is in and the workers are idle: they exit (0.05 s measured at 5M rows)
    # while the run is reported, and the flow waits for them only before it returns.
    closing = threading.Thread(target=workers.close, name="stop-workers")
    closing.start()
    try:
        return _finish(
            cfg,
            model,
            started,
            pending,
            todo,
            outcomes,
            failures,
            performance,
            not_measured,
            partition,
        )
    finally:
        closing.join()


def _finish(
    cfg, model, started, pending, todo, outcomes, failures, performance, not_measured, partition
):
    """Report the run, act on drift, and name the flow run's final state."""
    report_run(cfg, model, outcomes, failures, time.time() - started)
    report_performance(cfg, performance, not_measured)
    # A partition's scores stand whatever its labels are: a measurement that failed is told
    # in the run's message, and fails no run.
    also = not_measured_message(not_measured, failures)
    if not todo:
        busy = len(pending) - len(todo)
        # One partition asked for and already scored: say so, and how to score it again.
        done = (
            f"partition {partition} is scored by {model.version} (--rescore scores it again)"
            if partition and not busy
            else f"every partition is scored by {model.version}"
        )
        return Completed(
            name="NothingToDo",
            data=[],
            message=f"nothing to do: {done}"
            + (f" or being scored by another run ({busy})" if busy else "")
            + also,
        )
    decision = decide_retrain(cfg, outcomes)
    if decision.retrain and cfg.retrain.on_drift != "off":
        act_on_drift(cfg, model, decision)
    data = [o.__dict__ for o in outcomes]
    held = [o.partition for o in outcomes if o.status == "held"]
    if failures:
        return Failed(
            data=data,
            message=failed_message(failures) + also,
        )
    if held:
        return Completed(
            name="CompletedWithHeld",
            data=data,
            message=f"{len(held)} partition(s) held: {', '.join(held)}{also}",
        )
    return Completed(data=data, message=f"{len(outcomes)} partition(s) scored{also}")


def task_runner(cfg: Config):
    """The runner of `[scoring] runner`: a local process pool, or the Dask scheduler at
    `dask_address` (prefect-dask; every worker needs batchscore installed and the storage's
    credentials)."""
    if cfg.scoring.runner == "dask":
        from prefect_dask import DaskTaskRunner

        get_run_logger().info("scoring on the Dask cluster at %s", cfg.scoring.dask_address)
        return DaskTaskRunner(address=cfg.scoring.dask_address)
    return ForkedProcessPool(max_workers=cfg.scoring.worker_count)


class _Multiprocessing:
    """The `multiprocessing` module as Prefect's runner sees it while it starts: every
    context it asks for is the fork server's."""

    def __init__(self, context):
        self._context = context

    def get_context(self, method=None):
        return self._context

    def __getattr__(self, name):
        return getattr(multiprocessing, name)


class ForkedProcessPool(ProcessPoolTaskRunner):
    """Prefect's process pool, its workers forked from a server that already imported what
    they need (`batchscore.workers`): milliseconds to start a worker instead of seconds.
    Its workers end with the process that started the pool (`workers.exit_with`)."""

    def __init__(self, max_workers: int | None = None, **kwargs):
        kwargs.setdefault("initializer", exit_with)
        kwargs.setdefault("initargs", (os.getpid(),))
        # The state of each task run the workers began, from the events they send here to
        # be forwarded to the API: on an interrupt, those left unfinished are recorded
        # Crashed, or Cancelled (`end_task_runs_left_running`).
        self._task_run_states: dict = {}
        self._lost = ""  # `lost_workers`' first answer
        kwargs["subprocess_message_processor_factories"] = (
            *(kwargs.get("subprocess_message_processor_factories") or ()),
            partial(_state_tracker, self._task_run_states),
        )
        super().__init__(max_workers=max_workers, **kwargs)

    def __enter__(self):
        context = forkserver_context()
        if context is None:
            return self._in_order(super().__enter__())
        import prefect.task_runners as runners

        # Prefect asks `multiprocessing.get_context("spawn")` in __enter__ and hands that
        # context to its executor and message queue; swap it for this start only.
        real = runners.multiprocessing
        runners.multiprocessing = _Multiprocessing(context)
        try:
            return self._in_order(super().__enter__())
        finally:
            runners.multiprocessing = real

    def _in_order(self, started):
        """Hand tasks to the workers in the order they were submitted.

        Prefect's pool resolves and pickles each submitted task in a thread pool of
        `max_workers` threads before it reaches the process pool's queue, so two tasks
        submitted one after the other raced there: 3 chunks in 10 ran out of order in a
        5M-row run, and the largest, submitted before the two smallest, ran last, while the
        other worker sat idle (0.36 s of 8.5). One thread keeps the order; the pickling
        was one at a time anyway (the GIL). A task submitted with `wait_for` would hold up
        the ones submitted after it: the score flow submits none."""
        from concurrent.futures import ThreadPoolExecutor

        racing = self._resolver_executor
        self._resolver_executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="submit-in-order"
        )
        racing.shutdown(wait=False)
        return started

    def __exit__(self, exc_type, exc_value, traceback):
        """On an interrupt (Ctrl-C, or SIGTERM as Prefect's TerminationSignal), stop the
        workers now: Prefect's exit waits for the chunks they are scoring, and the ones
        queued next. Chunks already staged are kept; the next run reuses them. The task
        runs the workers were running are then recorded Crashed, or Cancelled when the
        signal is Prefect cancelling the flow run (`end_task_runs_left_running`).

        A pool that lost a worker (the out-of-memory killer's SIGKILL) is shut down the same
        way: the worker may have died holding the lock of the queue that carries the
        workers' logs and events (`_terminate_workers`), and the command then hung at its
        exit, after printing the run's result (a fresh-clone run of the killed-worker test)."""
        interrupted = exc_type is not None and issubclass(
            exc_type, (KeyboardInterrupt, ExternalSignal)
        )
        if interrupted or getattr(self._executor, "_broken", False) or self.lost_workers():
            self._terminate_workers()
        super().__exit__(exc_type, exc_value, traceback)
        if interrupted:
            end_task_runs_left_running(
                [run for run, state in self._task_run_states.items() if state not in FINAL],
                cancelled=cancelling(),
            )

    def lost_workers(self) -> str:
        """Which workers ended while the pool was in use, and how, as a sentence; "" when
        none did. The pool stops the others once one is gone (SIGTERM): those are named
        only when no other is. The first answer stands for the rest of the run: the
        workers that end after it (the others, SIGTERMed once the pool is broken) are its
        consequences, and every partition it failed gets the same reason."""
        if not self._lost:
            # A worker's exit status comes from the fork server's pipe, and is there to be
            # read once: the executor's manager thread, joining the workers of a broken pool,
            # and this thread read it at once, and the one that met the pipe's end took it
            # for status 255 (a SIGKILLed worker named as `exited with status 255`, in a
            # fresh-clone run). Once the pool is broken, its manager reads them all first.
            manager = getattr(self._executor, "_executor_manager_thread", None)
            if getattr(self._executor, "_broken", False) and manager is not None:
                manager.join(timeout=30)
            processes = getattr(self._executor, "_processes", None) or {}
            ended = {pid: p.exitcode for pid, p in processes.items() if p.exitcode not in (None, 0)}
            first = {pid: code for pid, code in ended.items() if code != -signal.SIGTERM} or ended
            self._lost = "; ".join(_ended(pid, code) for pid, code in sorted(first.items()))
        return self._lost

    def _terminate_workers(self) -> None:
        """Terminate the workers, then undo what a terminated worker leaves for the executor
        to wait on for ever.

        A worker killed while it wrote its result left part of a message in the result pipe,
        and the executor's manager thread read on, waiting for the rest: the pool's shutdown
        joined that thread, and the command hung (2 runs in 20 on two loaded cores). With
        the workers gone, this process holds the pipe's last writing end: closing it ends
        that read (the thread takes the pool as broken and stops). And the call queue's
        feeder thread, writing the next tasks to workers that are gone, blocked on a full
        pipe, which the interpreter joined at exit: it is not waited for.

        The queue that carries the workers' logs and events to this process has a write
        lock the workers share: one killed while it held the lock (3 runs in 71) left it
        held for good. Prefect stops that queue's reader by writing a stop message to it,
        which waited on the lock: its reader was given up after 5 s (a warning), and the
        interpreter, joining the thread that was writing, never exited (the command hung
        after `batchscore: interrupted`). The queue is closed here instead, and this
        process's end of its pipe with it: the workers gone, its reader sees the pipe's end."""
        executor = self._executor
        processes = list((getattr(executor, "_processes", None) or {}).values())
        for process in processes:
            process.terminate()
        for process in processes:
            with suppress(Exception):
                process.join(timeout=5)
        call_queue = getattr(executor, "_call_queue", None)
        if call_queue is not None:
            call_queue.cancel_join_thread()
        writer = getattr(getattr(executor, "_result_queue", None), "_writer", None)
        if writer is not None:
            with suppress(OSError):
                writer.close()
        messages = getattr(self, "_subprocess_message_queue", None)
        if messages is not None:
            messages.cancel_join_thread()
            messages.close()  # Prefect's stop message then raises ValueError, which it expects
            with suppress(OSError):
                messages._writer.close()


def _ended(pid: int, code: int) -> str:
    if code >= 0:
        return f"worker process {pid} exited with status {code}"
    name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
    oom = (
        " (what the kernel's out-of-memory killer sends: see `dmesg`; fewer [scoring] "
        "workers, or a smaller chunk_rows, need less memory)"
        if code == -signal.SIGKILL
        else ""
    )
    return f"worker process {pid} was killed by {name}{oom}"


# The state types a task run ends in (Prefect's `StateType` values).
FINAL = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})


def _state_tracker(states: dict):
    """A message processor of Prefect's process pool (called with each message a worker
    sends to be forwarded: logs and events): it notes each task run's latest state from its
    state-change events, and forwards the message as it is."""

    def note(message_type: str, payload):
        event = getattr(payload, "event", "")
        if message_type == "event" and event.startswith("prefect.task-run."):
            with suppress(Exception):  # anything unexpected is only not noted
                run = payload.resource.prefect_object_id("prefect.task-run")
                states[run] = payload.payload["validated_state"]["type"]
        return message_type, payload

    return note


def cancelling() -> bool:
    """Whether this process is being stopped because its flow run was cancelled (from the
    UI, `prefect flow-run cancel`, an automation): the runner or worker that started it says
    so over Prefect's control channel before it sends SIGTERM, and Prefect's flow engine
    then records the flow run Cancelled, not Crashed. False for a Ctrl-C or a SIGTERM from
    anyone else, and where the channel is not there (the `batchscore` command)."""
    try:
        from prefect._internal.control_listener import get_intent
    except ImportError:  # a Prefect without the channel: such runs ended Crashed
        return False
    return get_intent() == "cancel"


def end_task_runs_left_running(
    task_run_ids: list, cancelled: bool = False, within: float = 10.0
) -> None:
    """Record as Crashed (Cancelled, when the flow run is being cancelled) the task runs a
    stopped worker had begun and not finished.

    A worker killed mid-task never reports the end of its task run, so the chunks it was
    scoring stayed Running in the UI for good, under a Crashed or Cancelled flow run. The
    ids are those whose latest state-change event, forwarded from the workers, was not
    final: the API has them, or will once it has recorded those events. So the workers'
    last events are delivered first, and a task run the API does not know yet is asked
    again until it does. Best effort, and at most `within` seconds (an API that does not
    answer is retried for longer): the run is ending on an interrupt, and nothing here may
    hide or delay that."""
    if not task_run_ids:
        return
    failed: list[BaseException] = []
    deadline = time.monotonic() + within
    end = Cancelled if cancelled else Crashed
    stopped = "cancelled" if cancelled else "interrupted"
    state = partial(
        end,
        message=f"the run was {stopped} and its worker stopped mid-task; chunks already "
        "staged are kept for the next run",
    )

    def record() -> None:
        try:
            _record_stopped(task_run_ids, state, deadline)
        except Exception as exc:
            failed.append(exc)

    # With this thread's context: the flow run's, and the settings naming its API.
    worker = threading.Thread(
        target=contextvars.copy_context().run,
        args=(record,),
        name="record-stopped-task-runs",
        daemon=True,
    )
    worker.start()
    worker.join(within)
    if worker.is_alive() or failed:
        reason = failed[0] if failed else f"no answer within {within:.0f} s"
        get_run_logger().warning(
            "could not record the stopped task runs as %s: %s", end.__name__, reason
        )


def _record_stopped(task_run_ids: list, state, deadline: float) -> None:
    """Set each task run to `state()` (forced), asking again every 0.1 s for one the API
    does not know yet, until `deadline`."""
    from prefect.client.orchestration import get_client
    from prefect.events.worker import EventsWorker
    from prefect.exceptions import PrefectHTTPStatusError

    EventsWorker.drain_all(timeout=max(0.0, deadline - time.monotonic()))
    left = list(task_run_ids)
    with get_client(sync_client=True) as client:
        while True:
            for run in list(left):
                try:
                    client.set_task_run_state(run, state(), force=True)
                except PrefectHTTPStatusError as exc:
                    if exc.response.status_code == 404:
                        continue  # not recorded yet: asked again
                    raise
                left.remove(run)
            if not left:
                return
            if time.monotonic() + 0.1 >= deadline:
                raise TimeoutError(f"the API did not know task run(s) {left}")
            time.sleep(0.1)


def score_partitions(
    runner: TaskRunner, cfg: Config, model: ModelRef, leased: dict[str, dict | None], run_id: str
) -> tuple[list[PartitionOutcome], list[str]]:
    """Plan every partition (`leased`: each with the run's lease on it), score all their
    chunks at once, publish each when its are done (while its lease is still the run's).

    With the process pool, work that fits in one chunk (all partitions together, by their
    footers) is planned and scored in this process: starting the workers (their fork server
    imports Prefect, pyarrow and LightGBM) would cost more than the rows.
    Anything larger goes to the worker processes, and this process never sees its rows.
    With `runner = "dask"` every plan and chunk goes to the cluster, whatever its size.

    Each partition is published (drift measured, report and manifest written, files moved
    into place) as soon as its chunks are done: here, while the workers score the next
    partitions. The last one is published in a worker, idle by then, whose fork server has
    loaded the drift p-values' distributions and pandas with the rest
    (`batchscore/fork_ready.py`): a run of one partition, the nightly case, then never loads
    them here (0.5 s of CPU, taken from the workers while they scored, and ~40 MiB).
    """
    from batchscore.partitions import rows_at_most

    todo = list(leased)
    small = cfg.scoring.runner == "process" and rows_at_most(cfg, todo, cfg.scoring.chunk_rows)
    submit = _in_process if small else runner.submit
    last_in_worker = cfg.scoring.runner == "process" and not small
    if not small and (len(todo) > 1 or not last_in_worker):
        # While the workers score, this process is idle: load what publishing the drift
        # report needs (scipy.special and scipy's KS code 0.2 s, pandas 0.3 s) now instead
        # of after the chunks.
        from drift.methods import warm_up

        threading.Thread(target=warm_up, name="warm-up-drift", daemon=True).start()
    planned = [
        submit(plan_partition, {"config": cfg, "partition": p, "model": model}) for p in todo
    ]
    # Worker processes start on demand: without these, a second worker would start (and
    # load and check the compiled model) only once a plan had returned its chunks.
    # (A Dask cluster's workers are already up.)
    warming = (
        []
        if small or cfg.scoring.runner != "process"
        else [
            runner.submit(prepare_worker, {"config": cfg, "model": model})
            for _ in range(cfg.scoring.worker_count - len(todo))
        ]
    )
    work = []
    failures: list[tuple[str, str]] = []  # (partition, why)
    for p, future in zip(todo, planned, strict=True):
        try:
            plan = future.result()
        except Exception as exc:  # an unplannable partition must not stop the others
            why = _reason(runner, cfg, exc)
            get_run_logger().error("partition %s FAILED while planning: %s", p, why)
            failures.append((p, why))
            continue
        # The largest chunks first, so that a partition's smallest (the rest of its last row
        # group) end the run: the workers then finish together, not one a large chunk after
        # the other. Results are still read in the plan's order.
        submitted = {
            c.index: submit(
                score_chunk,
                {
                    "config": cfg,
                    "chunk": c,
                    "model": model,
                    "partition_plan": plan,
                    "run_id": run_id,
                },
            )
            for c in ([] if plan.held else sorted(plan.chunks, key=lambda c: -c.rows))
        }
        work.append((plan, [submitted[c.index] for c in plan.chunks if not plan.held]))
    outcomes: list[PartitionOutcome] = []
    progress = Progress(sum(len(chunks) for _, chunks in work), todo)
    for i, (plan, chunks) in enumerate(work):
        try:
            results, unreadable = _chunk_results(chunks, progress)
            if plan.held or unreadable:
                hold_partition(
                    cfg,
                    replace(plan, problems=plan.problems + unreadable),
                    model,
                    run_id,
                    leased[plan.partition],
                )
            else:
                where = submit if last_in_worker and i == len(work) - 1 else _in_process
                published = where(
                    publish_partition,
                    {
                        "config": cfg,
                        "partition_plan": plan,
                        "model": model,
                        "results": Sealed(results),
                        "run_id": run_id,
                        "lease": leased[plan.partition],
                    },
                )
                outcomes.append(published.result())
        except PartitionHeld as held:  # its task ended Failed with the reason; the run goes on
            outcomes.append(held.outcome)
        except Exception as exc:  # one partition's failure must not hide the others'
            why = _reason(runner, cfg, exc)
            get_run_logger().error("partition %s FAILED: %s", plan.partition, why)
            failures.append((plan.partition, why))
    for future in warming:
        with suppress(Exception):  # a worker that failed to warm fails its chunks, with reasons
            future.result()
    return outcomes, failures


def failed_message(failures: list[tuple[str, str]]) -> str:
    """The run's Failed message: each reason once, after the partitions it failed (a lost
    worker fails every partition still being scored with the same long reason)."""
    return f"{len(failures)} partition(s) failed: " + " | ".join(
        f"{', '.join(ps)}: {why}" for why, ps in _by_reason(failures).items()
    )


def _by_reason(reasons: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """(partition, reason) pairs as each reason, first seen first, with its partitions."""
    partitions: dict[str, list[str]] = {}
    for partition, why in reasons:
        partitions.setdefault(why, []).append(partition)
    return partitions


def not_measured_message(not_measured: dict[str, str], failures: list[tuple[str, str]]) -> str:
    """What the run's message adds for realised performance it could not measure: the first
    reason, after the partitions it applies to (the other reasons are in their tasks), or
    "the same reason" when a failed partition's reason already says it (a lost worker or a
    full disk fails both, with three lines)."""
    if not not_measured:
        return ""
    (why, first), *rest = _by_reason(not_measured.items()).items()
    if any(why == failed for _, failed in failures):
        reason = f", {', '.join(first)} for the same reason as the failed partitions"
    else:
        reason = f": {', '.join(first)}: {why}"
    others = " (the others' reasons: their performance tasks)" if rest else ""
    return (
        f"; realised performance not measured for {len(not_measured)} partition(s) "
        f"({', '.join(not_measured)}){reason}{others}"
    )


def _reason(runner: TaskRunner, cfg: Config, exc: Exception) -> str:
    """`exc` as a partition's reason: with which worker ended and how when the process pool
    broke (Python says only "A process in the process pool was terminated abruptly"), and
    where a full disk is (`disk_full_reason`)."""
    if disk_full(exc):
        return disk_full_reason(exc, cfg.store)
    lost = getattr(runner, "lost_workers", None)
    broken = isinstance(exc, BrokenProcessPool) or "terminated abruptly" in str(exc)
    if not broken or lost is None or not (said := lost()):
        return str(exc)
    return (
        f"{said}; the pool of workers is lost with it, so every partition still being scored "
        "in this run failed. Run again: the chunks already finished are reused"
    )


def _chunk_results(chunks: list, progress: Progress) -> tuple[list, tuple[FileProblem, ...]]:
    """The partition's chunk results, and its files whose data could not be decoded (one
    problem a file). Every chunk is waited for, so that none is still writing to the
    partition's staging folder when a hold deletes it."""
    results, problems = [], {}
    for future in chunks:
        try:
            results.append(progress.done(future.result()))
        except UnreadableFile as exc:
            for problem in exc.problems:
                problems.setdefault(problem.file, problem)
    return results, tuple(problems.values())


class _Done:
    """A finished task run, with the interface of the runner's futures."""

    def __init__(self, value=None, error: BaseException | None = None):
        self.value, self.error = value, error

    def result(self):
        if self.error is not None:
            raise self.error
        return self.value


def _in_process(task, parameters: dict) -> _Done:
    try:
        return _Done(task(**parameters))
    except Exception as exc:  # raised where the flow reads the result, as with a future
        return _Done(error=exc)


class Progress:
    """A Prefect progress artifact, moved forward as chunks finish."""

    def __init__(self, total: int, partitions: list[str]):
        self.total, self.finished = total, 0
        self.id = (
            create_progress_artifact(
                progress=0.0,
                key="score-progress",
                description=f"chunks scored, {len(partitions)} partition(s)",
            )
            if total
            else None
        )

    def done(self, result):
        self.finished += 1
        if self.id is not None:
            update_progress_artifact(self.id, progress=100.0 * self.finished / self.total)
        return result


def measure_all(runner: TaskRunner, cfg: Config, run_id: str) -> tuple[list[dict], dict[str, str]]:
    """Realised performance of scored partitions whose labels arrived (or changed): its
    rows, and the reason for each partition it could not be measured for (its
    `measure-performance` task ends Failed; the labels are the source's, the scores stand)."""
    logger = get_run_logger()
    try:
        labelled = find_labelled(cfg)
    except Exception as exc:  # noqa: BLE001 - told, never the scoring run's failure
        logger.warning("realised performance not measured: %s", exc)
        return [], {"labelled partitions": str(exc)}
    measured = [
        (p, runner.submit(measure_performance, {"config": cfg, "partition": p, "run_id": run_id}))
        for p in labelled
    ]
    rows, not_measured = [], {}
    for partition, future in measured:
        try:
            rows += future.result()
        except Exception as exc:  # noqa: BLE001 - as above; the task run has the traceback
            why = _reason(runner, cfg, exc)
            logger.warning("realised performance of %s not measured: %s", partition, why)
            not_measured[partition] = why
    return rows, not_measured


def act_on_drift(cfg: Config, model: ModelRef, decision: RetrainDecision) -> None:
    """Emit the drift event; retrain in a subflow unless a deployment's trigger will."""
    event_id = emit_drift_event(cfg, model, decision)
    from_deployment = deployment.get_id() is not None
    if cfg.retrain.on_drift == "subflow" or (
        cfg.retrain.on_drift == "auto" and not from_deployment
    ):
        state = retrain(
            config=cfg.path,
            reason=f"drift in {decision.partition}: {', '.join(decision.drifted_features)} "
            f"({DRIFT_EVENT} {event_id})",
            event_id=event_id,
            partition=decision.partition,
            return_state=True,
        )
        if not state.is_completed():
            get_run_logger().error("retrain subflow ended %s: %s", state.name, state.message)


# Last, once everything above exists: in a deployment's flow-run process, the scoring
# workers' fork server is forked from this process now (`start_for_deployment_run`), and
# a fork has this module as it stands. Forked at the top, the workers had a module without
# the functions below its first lines, and failed every task ("Can't get attribute").
start_for_deployment_run()
