"""The scoring pool's workers: forked from a server that preloaded their imports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import SlowToPickle, settings_seen, submission_index, where_am_i
from prefect import flow, task

from batchscore import workers
from flows.score import ForkedProcessPool

ROOT = Path(__file__).resolve().parent.parent


def test_workers_are_forked_with_their_imports_done_and_get_the_flows_environment(
    prefect_api, monkeypatch
):
    assert workers.forkserver_context() is not None  # Linux has it
    monkeypatch.setenv("BATCHSCORE_TEST_MARKER", "set after the fork server started")
    probe = task(where_am_i, name="where-am-i")

    @flow
    def two_workers():
        with ForkedProcessPool(max_workers=2) as pool:
            futures = [pool.submit(probe, {}) for _ in range(4)]
            return [f.result() for f in futures]

    seen = two_workers()
    assert len({s["pid"] for s in seen}) <= 2 and os.getpid() not in {s["pid"] for s in seen}
    for s in seen:
        # A spawned worker would be this process's child and import these at its first task.
        assert s["parent"] != os.getpid()
        assert s["preloaded"]
        # the fork server froze its imports out of the collector's reach (`fork_ready`)
        assert s["frozen_objects"] > 100_000
        # and turned the collector, off while it imported, on again
        assert s["gc_enabled"]
        # and the task ran without importing Prefect's collections (prefect-dask, 0.2 s),
        # which its context's block lookup imported
        # (`prefect_api.look_up_block_classes_before_loading_collections`)
        assert not s["collections_loaded"]
        assert s["marker"] == "set after the fork server started"
        # Arrow's allocator gives freed pages back after 50 ms (`forkserver_context`)
        assert s["mimalloc_purge_delay"] == os.environ.get("MIMALLOC_PURGE_DELAY") == "50"


def test_the_command_forks_the_fork_server_from_itself_with_nothing_it_would_not_have(
    prefect_api, tmp_path
):
    """`workers._fork_here` (the CLI's `start_early(fork=True)`): the fork server is a fork of
    the command, which has imported the flows, not a fresh interpreter. Its workers have
    every import (`fork_ready`'s too) and none of what a spawned server would not have
    had: the command's Python signal handler, output still in the command's buffer (printed
    again by the first worker that flushes), the other end of the "alive" pipe (the server
    would outlive the command). A process with a second thread spawns it instead."""
    import json
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    code = textwrap.dedent(
        """
        import json, os, signal, sys, threading, time
        sys.path.insert(0, "tests")
        signal.signal(signal.SIGTERM, lambda *_: print("the command's handler"))
        import flows.score
        from multiprocessing import forkserver
        from prefect import flow, task
        from helpers import where_am_i_aloud
        from batchscore import workers
        from flows.score import ForkedProcessPool

        second = threading.Thread(target=time.sleep, args=(0.3,))
        second.start()
        assert not workers._fork_here()  # two threads: not forked
        assert forkserver._forkserver._forkserver_pid is None
        second.join()
        sys.stdout.write("written once, ")  # in the buffer at the fork (a pipe)
        workers.start_early(fork=True)
        server = forkserver._forkserver._forkserver_pid
        with open(f"/proc/{server}/cmdline", "rb") as fh:
            forked = fh.read() == open("/proc/self/cmdline", "rb").read()

        @flow
        def two_workers():
            with ForkedProcessPool(max_workers=2) as pool:
                probe = task(where_am_i_aloud, name="where-am-i")
                futures = [pool.submit(probe, {}) for _ in range(2)]
                return [f.result() for f in futures]

        seen = two_workers()
        print(json.dumps({"server": server, "forked": forked, "seen": seen}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        # Block-buffered output, as a command's is on a pipe or a file.
        env={**unbuffered_off(), "PREFECT_API_URL": prefect_api},
        capture_output=True,
        text=True,
        timeout=90,  # a server holding the alive pipe, and the output pipe, never ends
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert out.count("written once") == 1, out
    assert out.count("a worker prints") == 2, out
    assert "the command's handler" not in out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["forked"]  # the server's command line is the command's: not spawned
    for worker in result["seen"]:
        assert worker["parent"] == result["server"]
        assert worker["preloaded"] and worker["frozen_objects"] > 100_000 and worker["gc_enabled"]
        assert worker["mimalloc_purge_delay"] == "50"
        assert worker["sigterm_default"] and worker["sigint_ignored"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # it ends with the command (its alive pipe closed)
        try:
            os.kill(result["server"], 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(result["server"], signal.SIGKILL)
        raise AssertionError("the forked fork server outlived the command")


def unbuffered_off() -> dict:
    env = dict(os.environ)
    env.pop("PYTHONUNBUFFERED", None)
    return env


def test_a_worker_builds_the_flows_settings_once_per_run(prefect_api):
    """`build_task_settings_once`: a worker rebuilds the flow's settings for its first task
    only, and every task sees the flow's values."""
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    probe = task(settings_seen, name="settings-seen")

    @flow
    def eight_tasks():
        with (
            temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 7}),
            ForkedProcessPool(max_workers=2) as pool,
        ):
            futures = [pool.submit(probe, {"tag": tag}) for tag in range(8)]
            return [f.result() for f in futures]

    seen = eight_tasks()
    assert {(s["max_retries"], s["api"]) for s in seen} == {(7, prefect_api)}
    by_worker: dict[int, set[int]] = {}
    for s in seen:
        by_worker.setdefault(s["pid"], set()).add(s["settings"])
    assert all(len(ids) == 1 for ids in by_worker.values()), by_worker


def test_tasks_reach_the_workers_in_the_order_they_were_submitted(prefect_api, monkeypatch):
    """`ForkedProcessPool._in_order`: Prefect's pool prepares each submitted task (resolves
    and pickles it) in a pool of threads before queueing it for the workers, and a task
    submitted later overtook one slower to prepare. Here the first is slow to pickle."""
    import prefect.task_runners as runners

    queued: list[int] = []
    pickle = runners.cloudpickle_wrapped_call

    def record(*args, **kwargs):
        call = pickle(*args, **kwargs)  # the step before the process pool's queue
        queued.append(kwargs["parameters"]["i"])
        return call

    monkeypatch.setattr(runners, "cloudpickle_wrapped_call", record)
    probe = task(submission_index, name="submission-index")

    @flow
    def four_tasks():
        with ForkedProcessPool(max_workers=2) as pool:
            futures = [
                pool.submit(probe, {"i": i, "slow": SlowToPickle(0.5 if i == 0 else 0.0)})
                for i in range(4)
            ]
            return [f.result() for f in futures]

    assert four_tasks() == [0, 1, 2, 3]
    assert queued == [0, 1, 2, 3]


def test_settings_built_once_follow_a_change_of_settings_or_environment(monkeypatch):
    """A long-lived worker (Dask's) runs tasks of many flow runs: each run's settings, and
    a changed `PREFECT_*` environment, get their own settings."""
    import prefect.context as context
    from prefect.settings import (
        PREFECT_CLIENT_MAX_RETRIES,
        get_current_settings,
        temporary_settings,
    )

    import flows  # noqa: F401  (installs it)

    def serialized(retries: int) -> dict:
        with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: retries}):
            return {"settings_context": context.SettingsContext.get().serialize()}

    def hydrated(ctx: dict):
        with context.hydrated_context(ctx):
            return get_current_settings()

    seven, nine = serialized(7), serialized(9)
    first = hydrated(seven)
    assert first.client.max_retries == 7
    assert hydrated(seven) is first
    assert hydrated(nine).client.max_retries == 9
    assert hydrated(seven) is first
    monkeypatch.setenv("PREFECT_BATCHSCORE_TEST_MARKER", "changed")
    assert hydrated(seven) is not first
    assert hydrated(seven).client.max_retries == 7


def test_a_deployments_flow_run_process_forks_the_fork_server_once_the_score_flow_is_loaded(
    prefect_api, sample, tmp_path
):
    """`workers.start_for_deployment_run`: with PREFECT__FLOW_RUN_ID set (a process a Prefect
    worker started for one flow run), loading `flows.score` starts the fork server, when
    the run's config (a parameter, read from the API) uses the process pool; not for a Dask
    runner, and not outside a flow-run process. It is a fork of that process (its command
    line), made once the module is complete: a worker's `flows.score` has every name the
    process's has (forked as the module began loading, the workers failed every task)."""
    import json
    import subprocess
    import sys
    import textwrap

    from helpers import write_config
    from prefect.client.orchestration import get_client

    dask = write_config(
        tmp_path / "dask.toml",
        sample.read_text(),
        scoring={"runner": "dask", "dask_address": "tcp://127.0.0.1:9"},
    )

    @flow(name="score")
    def placeholder(config: str = "batchscore.toml"):
        pass

    code = textwrap.dedent(
        """
        import json
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import forkserver

        import flows.score
        from batchscore.workers import forkserver_context

        pid = forkserver._forkserver._forkserver_pid
        found = {"started": pid is not None}
        if pid is not None:
            with open("/proc/self/cmdline", "rb") as own, open(f"/proc/{pid}/cmdline", "rb") as its:
                found["forked"] = own.read() == its.read()
            names = "sorted(vars(__import__('sys').modules['flows.score']))"
            with ProcessPoolExecutor(1, mp_context=forkserver_context()) as pool:
                found["complete"] = pool.submit(eval, names).result(60) == sorted(vars(flows.score))
        print(json.dumps(found))
        """
    )

    def after_loading(config: Path, in_flow_run: bool = True) -> dict:
        env = {**os.environ}
        env.pop("PREFECT__FLOW_RUN_ID", None)
        if in_flow_run:
            with get_client(sync_client=True) as client:
                run = client.create_flow_run(placeholder, parameters={"config": str(config)})
            env["PREFECT__FLOW_RUN_ID"] = str(run.id)
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    assert after_loading(sample) == {"started": True, "forked": True, "complete": True}
    assert after_loading(dask) == {"started": False}
    assert after_loading(sample, in_flow_run=False) == {"started": False}


def test_an_interrupted_pool_does_not_wait_for_a_result_its_killed_worker_half_wrote():
    """`ForkedProcessPool.__exit__` on an interrupt: a worker terminated while it wrote its
    result leaves part of a message in the result pipe, and the executor's manager thread
    waits for the rest. Here the half message is written by hand (a length header and 10 of
    its 1,000 bytes); the pool must still shut down."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import os, struct, threading
        from flows.score import ForkedProcessPool

        pool = ForkedProcessPool(max_workers=1).__enter__()
        assert pool._executor.submit(os.getpid).result(timeout=60) != os.getpid()
        writer = pool._executor._result_queue._writer
        os.write(writer.fileno(), struct.pack("!i", 1000) + b"x" * 10)
        done = threading.Thread(
            target=pool.__exit__, args=(KeyboardInterrupt, KeyboardInterrupt(), None),
            daemon=True,
        )
        done.start()
        done.join(timeout=60)
        print("stuck" if done.is_alive() else "shut down", flush=True)
        os._exit(0)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert done.stdout.strip() == "shut down", done.stdout + done.stderr[-3000:]


def test_an_interrupted_pool_ends_though_a_killed_worker_held_the_message_queues_lock():
    """`ForkedProcessPool.__exit__` on an interrupt: the queue carrying the workers' logs and
    events has a write lock they share, and a worker killed while it held the lock left it
    held. Prefect stopped the queue's reader with a message that waited for that lock: the
    pool's exit waited 5 s, and the interpreter's exit for ever. Here the lock is taken by
    hand; the pool must shut down at once, and the process exit."""
    import textwrap

    code = textwrap.dedent(
        """
        import os
        from flows.score import ForkedProcessPool

        pool = ForkedProcessPool(max_workers=1).__enter__()
        assert pool._executor.submit(os.getpid).result(timeout=60) != os.getpid()
        pool._subprocess_message_queue._wlock.acquire()  # as by a worker, killed since
        pool.__exit__(KeyboardInterrupt, KeyboardInterrupt(), None)
        print("shut down", flush=True)
        """
    )
    done = _exits_with_the_queues_reader_stopped(code)
    assert done.stdout.startswith("shut down"), done.stdout


def _exits_with_the_queues_reader_stopped(code: str):
    """`python -c code`, which must exit, by itself and with status 0, its pool's message
    queue reader stopped (not given up after 5 s)."""
    import subprocess
    import sys

    try:
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the process did not exit: {exc.stdout!r}") from None
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Timed out waiting for process-pool message forwarding" not in done.stderr
    return done


def test_a_pool_that_lost_a_worker_ends_though_the_worker_held_the_message_queues_lock():
    """`ForkedProcessPool.__exit__` with no interrupt, after a worker was killed (the
    out-of-memory killer's SIGKILL) while it held the write lock of the queue carrying the
    workers' logs and events: the pool's exit waited 5 s for the queue's reader, and the
    interpreter's exit for ever (a fresh-clone run of the killed-worker test hung after
    printing `run Failed`). Here the lock is taken by hand and the worker killed."""
    import textwrap

    code = textwrap.dedent(
        """
        import os, time
        from concurrent.futures.process import BrokenProcessPool
        from flows.score import ForkedProcessPool

        pool = ForkedProcessPool(max_workers=1).__enter__()
        assert pool._executor.submit(os.getpid).result(timeout=60) != os.getpid()
        pool._subprocess_message_queue._wlock.acquire()  # as by the worker, killed next
        (worker,) = pool._executor._processes.values()
        worker.kill()
        deadline = time.monotonic() + 60
        while not pool._executor._broken and time.monotonic() < deadline:
            time.sleep(0.01)
        lost = pool.lost_workers()
        try:
            pool._executor.submit(os.getpid).result(timeout=60)
        except BrokenProcessPool:
            pass
        pool.__exit__(None, None, None)
        print("shut down:", lost, flush=True)
        """
    )
    done = _exits_with_the_queues_reader_stopped(code)
    assert done.stdout.startswith("shut down: worker process "), done.stdout
    assert "was killed by SIGKILL" in done.stdout, done.stdout


def test_recording_stopped_task_runs_as_crashed_gives_up_on_an_api_that_does_not_answer(
    prefect_api, monkeypatch, caplog
):
    """`end_task_runs_left_running`, on the interrupt path: an API that does not answer
    (the client retries for longer) must not hold up the run's end. It returns after
    `within` seconds, with a warning, while the call still waits."""
    import threading
    import uuid

    import flows.score as score_flow

    called, answered = threading.Event(), threading.Event()

    def no_answer(task_run_ids, state, deadline):
        called.set()
        answered.wait(60)

    monkeypatch.setattr(score_flow, "_record_stopped", no_answer)

    @flow
    def interrupted():
        score_flow.end_task_runs_left_running([uuid.uuid4()], within=0.5)
        return called.is_set(), answered.is_set()

    try:
        assert interrupted() == (True, False)  # returned while the call still waited
    finally:
        answered.set()
    assert "could not record the stopped task runs as Crashed: no answer within" in caplog.text


@pytest.mark.parametrize("cancelled", [False, True], ids=["interrupted", "cancelled"])
def test_a_stopped_task_run_the_api_records_late_is_still_recorded_crashed(prefect_api, cancelled):
    """`end_task_runs_left_running` gets the ids of the task runs whose last forwarded
    event was not final. The API records those events a moment after they are delivered:
    a task run it does not know yet (here created 1 s later) is asked again until it does,
    then set Crashed (a query of unfinished runs made at once missed one in a full suite),
    or Cancelled when the flow run is being cancelled."""
    import threading
    import time
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.states import Running

    import flows.score as score_flow

    run_id = uuid.uuid4()
    probe = task(where_am_i, name="recorded-late")

    def record_late():
        time.sleep(1.0)
        with get_client(sync_client=True) as client:
            client.create_task_run(probe, None, str(run_id), id=run_id, state=Running())

    @flow
    def stopped():
        score_flow.end_task_runs_left_running([run_id], cancelled=cancelled, within=60)

    late = threading.Thread(target=record_late)
    late.start()
    stopped()
    late.join()
    with get_client(sync_client=True) as client:
        state = client.read_task_run(run_id).state
    if cancelled:
        assert state.is_cancelled(), state
        assert state.message.startswith("the run was cancelled and its worker stopped"), state
    else:
        assert state.is_crashed(), state
        assert state.message.startswith("the run was interrupted and its worker stopped"), state


def test_the_pool_notes_the_state_of_each_task_run_its_workers_begin(prefect_api):
    """What `ForkedProcessPool` knows on an interrupt: the latest state of each task run,
    from the events its workers send to be forwarded."""
    probe = task(where_am_i, name="noted")

    @flow
    def two():
        with ForkedProcessPool(max_workers=2) as pool:
            futures = [pool.submit(probe, {}) for _ in range(2)]
            [f.result() for f in futures]
        return {f.task_run_id for f in futures}, dict(pool._task_run_states)

    submitted, states = two()
    assert set(states) == submitted
    assert set(states.values()) == {"COMPLETED"}


def test_the_worker_lost_first_is_every_failed_partitions_reason():
    """`ForkedProcessPool.lost_workers` names the worker whose end broke the pool; the
    workers that end after it (the others, once the pool is broken) are its consequences.
    Named too, they changed the reason between partitions of one run, and the run's message
    said it twice (a fresh-clone run of the killed-worker test)."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import os, signal, time
        from flows.score import ForkedProcessPool

        pool = ForkedProcessPool(max_workers=2).__enter__()
        futures = [pool._executor.submit(os.getpid) for _ in range(8)]
        assert {f.result(timeout=60) for f in futures}
        first, second = sorted(pool._executor._processes.values(), key=lambda p: p.pid)
        first.kill()
        # Not first.join(): its status is read once, by the pool's manager thread (5cc1bb0).
        deadline = time.monotonic() + 60
        while not pool._executor._broken and time.monotonic() < deadline:
            time.sleep(0.01)
        said = pool.lost_workers()
        second.kill()
        second.join(timeout=60)
        print(repr(said == pool.lost_workers()), first.pid, said, flush=True)
        os._exit(0)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    same, pid, said = done.stdout.strip().split(" ", 2)
    assert said.startswith(f"worker process {pid} was killed by SIGKILL"), done.stderr[-3000:]
    assert same == "True", said
