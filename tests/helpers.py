"""Helpers shared by the tests (importable as `helpers`: tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"


def copy_sample(source: Path, days: list[str]) -> Path:
    """The sample's incoming partitions of `days`, and their labels where the sample has
    them, copied under `source` (a config's `source`); returns `source`."""
    import shutil

    for day in days:
        for kind in ("incoming", "labels"):
            if (SAMPLE / kind / f"dt={day}").exists():
                shutil.copytree(SAMPLE / kind / f"dt={day}", source / kind / f"dt={day}")
    return source


def dictionary_encoded(folder: Path) -> dict[str, bool]:
    """Whether each column of the Parquet files under `folder` was written with a
    dictionary, in every row group of every file (False if in none; an error if mixed)."""
    import pyarrow.parquet as pq

    seen: dict[str, set[bool]] = {}
    for path in sorted(folder.rglob("*.parquet")):
        meta = pq.ParquetFile(path).metadata
        for g in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                column = meta.row_group(g).column(c)
                encoded = any("DICTIONARY" in e for e in column.encodings)
                seen.setdefault(column.path_in_schema, set()).add(encoded)
    assert seen, f"no Parquet file under {folder}"
    assert all(len(v) == 1 for v in seen.values()), seen
    return {name: v.pop() for name, v in seen.items()}


def corrupt_a_data_page(path: Path, column: str = "age") -> None:
    """Flip bytes of a data page of `column`'s first column chunk; the footer stays intact,
    so the file plans well and fails only when that page is decoded (write it compressed:
    an uncompressed page may still decode)."""
    import pyarrow.parquet as pq

    page = pq.read_metadata(path).row_group(0).column(pq.read_schema(path).get_field_index(column))
    data = bytearray(path.read_bytes())
    for i in range(page.data_page_offset + 30, page.data_page_offset + 130):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def write_config(path: Path, text: str, **tables: dict) -> Path:
    """A config file: `text` with the given tables' keys replaced or added."""
    import tomllib

    data = tomllib.loads(text)
    for table, values in tables.items():
        data.setdefault(table, {}).update(values)
    path.write_text(_toml(data))
    return path


def _toml(data: dict, prefix: str = "") -> str:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines = [f"[{prefix}]"] if prefix and scalars else []
    lines += [f"{k} = {_value(v)}" for k, v in scalars.items()]
    out = "\n".join(lines) + ("\n\n" if lines else "")
    for k, v in tables.items():
        out += _toml(v, f"{prefix}.{k}" if prefix else k)
    return out


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return repr(v)


def settings_seen(tag: int) -> dict:
    """A task body for worker-pool tests: the Prefect settings the task runs with."""
    import os

    from prefect.settings import get_current_settings

    settings = get_current_settings()
    return {
        "tag": tag,
        "pid": os.getpid(),
        "settings": id(settings),
        "max_retries": settings.client.max_retries,
        "api": str(settings.api.url),
    }


def where_am_i() -> dict:
    """A task body for worker-pool tests: what the worker process looks like at its start."""
    import gc
    import os
    import signal
    import sys

    return {
        "pid": os.getpid(),
        "parent": os.getppid(),
        "preloaded": "lightgbm" in sys.modules and "tasks.scoring" in sys.modules,
        "marker": os.environ.get("BATCHSCORE_TEST_MARKER"),
        "frozen_objects": gc.get_freeze_count(),
        "gc_enabled": gc.isenabled(),
        "collections_loaded": "prefect_dask" in sys.modules,
        "mimalloc_purge_delay": os.environ.get("MIMALLOC_PURGE_DELAY"),
        "sigterm_default": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
        "sigint_ignored": signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
    }


def where_am_i_aloud() -> dict:
    """`where_am_i`, once the worker has printed a line to its standard output."""
    print("a worker prints", flush=True)
    return where_am_i()


def start_score(config: Path, *, temporary_server: bool = False):
    """`batchscore score --config CONFIG` as a subprocess in a process group of its own (as a
    terminal starts a job), output and errors together in `stdout`. With
    `temporary_server`, without the session's PREFECT_API_URL: the command boots its own
    server (on the session's PREFECT_HOME, so on the session API's database)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "GX_ANALYTICS_ENABLED": "false"}
    if temporary_server:
        env.pop("PREFECT_API_URL", None)
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "batchscore"), "score", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        text=True,
    )


def output_of(proc, timeout: float) -> str:
    """`start_score`'s process's output once it has ended. One still running after
    `timeout` seconds is killed with its workers (its process group), not left behind, and
    the test fails with what it printed."""
    import os
    import signal
    import subprocess

    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output = proc.communicate()[0]
        said = f"still running after {timeout:g} s, killed; it printed:\n{output}"
        raise AssertionError(said) from None


def flow_runs_since(flow: str, started, config: str) -> list:
    """The API's runs of `flow` started after `started` with this `config` parameter (asked
    by start time: the API answers one page, 200 runs, sorted by random id)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterStartTime,
    )

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])),
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=started)),
        )
    return [r for r in runs if r.parameters.get("config") == config]


class SlowToPickle:
    """A task parameter whose pickling takes `seconds`: it holds up its task's submission."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __reduce__(self):
        time.sleep(self.seconds)
        return (SlowToPickle, (0.0,))


def submission_index(i: int, slow=None) -> int:
    """A task that returns its parameter (where it runs matters not)."""
    return i


def final_task_runs(flow_run_id, names: list[str], timeout: float = 30.0) -> dict:
    """The flow run's task runs by name, once one of each of `names` (a run's name, or a
    pattern such as `train-challenger-*` for the names Prefect makes) is recorded as final.

    The server records task runs from the events the client sends in the background, so the
    last ones of a run can reach it a moment after the flow call returns.
    """
    import fnmatch

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=10)
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            by_name = {r.name: r for r in runs}
            # A task run can be recorded before its first state is: `state` is then None.
            final = [name for name, r in by_name.items() if r.state and r.state.is_final()]
            waiting = [n for n in names if not fnmatch.filter(final, n)]
            if not waiting or time.monotonic() > deadline:
                return by_name
            time.sleep(0.2)
