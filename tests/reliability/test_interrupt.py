"""Ending `batchscore score` from outside: Ctrl-C, SIGTERM, SIGKILL, with real processes.

The command runs as a terminal would run it (a process group of its own, Prefect's API not
configured, so it boots its temporary server) over six partitions cut into small chunks, and
is signalled once a chunk is staged. It must end promptly, with 128 + the signal's number,
its flow run recorded as Crashed (and the chunks its workers were scoring), and no process
of its own left behind (workers, fork server, temporary server); the next run must publish
every partition, reusing the chunks staged before the signal. With SIGKILL nothing of the
command runs: what it started must still end by itself.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers import copy_sample, flow_runs_since, start_score, write_config

from batchscore.config import load_config
from batchscore.training import train

ROOT = Path(__file__).resolve().parents[2]
DAYS = [f"2026-10-{d:02d}" for d in range(1, 7)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prefect_api):
    """Six labelled partitions and a model trained on them."""
    base = tmp_path_factory.mktemp("interrupt")
    source = copy_sample(base / "source", DAYS)
    train(load_config(_config(base / "train.toml", source, base / "store")))
    return {"source": source, "models": base / "store" / "models"}


def _config(path: Path, source: Path, store: Path) -> Path:
    return write_config(
        path,
        (ROOT / "batchscore.toml").read_text(),
        storage={"source": str(source), "store": str(store)},
        # 48 chunks (each 4-group file cut into 8 row ranges): still scoring at the signal.
        scoring={"chunk_rows": 1_000, "workers": 2},
        retrain={"on_drift": "off", "lightgbm": {"max_rounds": 40}, "window_days": 6},
    )


@pytest.fixture
def victim(trained, tmp_path) -> Path:
    store = tmp_path / "store"
    shutil.copytree(trained["models"], store / "models")
    return _config(tmp_path / "victim.toml", trained["source"], store)


def _staged_chunks(config: Path) -> list[Path]:
    return sorted(Path(load_config(config).store).glob("_staging/*/chunks/*.json"))


def _wait_for_a_staged_chunk(proc: subprocess.Popen, config: Path) -> None:
    deadline = time.time() + 180
    while not _staged_chunks(config) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be signalled"
    assert _staged_chunks(config), "no chunk was staged within 180 s"


def _stat(pid: int) -> list[str] | None:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _processes_of(command: int) -> dict[int, str]:
    """The command's processes: its process group (itself, the fork server, the workers,
    multiprocessing's resource tracker) and its temporary server (a session of its own),
    each with its start time, so that a recycled pid is not mistaken for it."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or (stat := _stat(int(entry.name))) is None:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        server = int(stat[1]) == command and b"batchscore.api_server" in argv  # stat[1]: ppid
        if int(stat[2]) == command or server:  # stat[2]: the process group
            found[int(entry.name)] = stat[19]  # its start time
    return found


def _still_running(processes: dict[int, str], within: float = 15.0) -> list[int]:
    deadline = time.time() + within
    while True:
        left = [
            pid
            for pid, started in processes.items()
            if (stat := _stat(pid)) is not None and stat[19] == started and stat[0] != "Z"
        ]
        if not left or time.time() > deadline:
            return left
        time.sleep(0.1)


@contextmanager
def _signalled_at_a_staged_chunk(config: Path):
    """Start the command, wait for a staged chunk, and yield (its process, its processes)
    for the test to signal; whatever the test's outcome, nothing it started is left."""
    proc = start_score(config, temporary_server=True)
    processes: dict[int, str] = {}
    try:
        _wait_for_a_staged_chunk(proc, config)
        processes = _processes_of(proc.pid)
        assert len(processes) >= 4 and _server_among(processes), processes
        yield proc, processes
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _still_running(processes, within=0):  # by start time: not a recycled pid
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.communicate()


def _server_among(processes: dict[int, str]) -> bool:
    return any(
        b"batchscore.api_server" in Path(f"/proc/{pid}/cmdline").read_bytes()
        for pid in processes
        if _stat(pid) is not None
    )


@pytest.mark.parametrize(
    ("how", "signum"),
    [
        pytest.param("Ctrl-C in the terminal", signal.SIGINT, id="ctrl-c"),
        pytest.param("kill", signal.SIGTERM, id="sigterm"),
    ],
)
def test_an_interrupted_run_ends_crashed_leaves_nothing_running_and_the_next_resumes(
    victim, how, signum
):
    started = datetime.now(UTC)
    with _signalled_at_a_staged_chunk(victim) as (proc, processes):
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signal.SIGINT)  # what the terminal does: the whole group
        else:
            os.kill(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 128 + signum, output
        assert "batchscore: interrupted" in output
        assert "Traceback" not in output
        assert _still_running(processes) == []

    (run,) = flow_runs_since("score", started, load_config(victim).path)
    assert run.state.is_crashed(), run.state
    # The chunks the stopped workers were scoring end Crashed too, not Running for good.
    # (Not asserted that there is one: both workers may be between two chunks at the signal.)
    states = {task_run.name: task_run.state for task_run in _task_runs_of(run.id)}
    assert not [n for n, s in states.items() if not s.is_final()], states
    assert all(s.is_completed() or s.is_crashed() for s in states.values()), states

    staged = len(_staged_chunks(victim))
    again = start_score(victim, temporary_server=True)
    output, _ = again.communicate(timeout=600)
    assert again.returncode == 0, output
    store = Path(load_config(victim).store)
    manifests = [json.loads((store / "scores" / f"dt={d}" / "_SUCCESS").read_text()) for d in DAYS]
    assert sum(m["reused_chunks"] for m in manifests) >= staged >= 1
    assert not list(store.glob("_staging/*"))


def _task_runs_of(flow_run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200
        )


def test_a_run_killed_with_sigkill_leaves_no_process_behind(victim):
    """Nothing of the command runs after SIGKILL (the OOM killer, `kill -9`): its workers
    and its temporary server must notice it is gone. The kill-and-resume results are
    tests/reliability/test_crash_and_writers.py's; this checks the processes."""
    with _signalled_at_a_staged_chunk(victim) as (proc, processes):
        os.kill(proc.pid, signal.SIGKILL)  # the command alone, not its group
        proc.communicate(timeout=60)
        assert _still_running(processes) == []
