"""The temporary Prefect API: started early by the CLI, used once, stopped at the end."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from batchscore.prefect_api import SERVER_ENVIRONMENT

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_server_started_early_is_the_one_api_and_is_stopped_after():
    done = _run(
        """
        import os
        import urllib.request
        import batchscore.prefect_api as api

        api.start_early()
        early = api._early
        process = early.process
        assert process is not None and process.poll() is None
        # Set before Prefect is imported: its settings, read once, name this server.
        assert os.environ["PREFECT_API_URL"] == early.api_url
        with api.one_api() as url:
            assert url == early.api_url
            with urllib.request.urlopen(url + "/health", timeout=10) as response:
                assert response.status == 200
        assert process.poll() is not None, "the server outlived one_api"
        print("ok")
        """
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")


def test_the_temporary_servers_app_is_built_with_the_collector_off_and_left_on():
    """`batchscore.api_server`: the collector is off while Prefect's server is imported and
    its app built (`main`), then on again, with what they built frozen (`create_app`), and
    the app is built without Prefect's full collection for a `final` app, which frees
    nothing with this FastAPI."""
    done = _run(
        """
        import gc
        gc.disable()  # as api_server.main leaves it for uvicorn
        from batchscore.api_server import create_app
        collections = []
        collect = gc.collect
        gc.collect = lambda *args: collections.append(args) or collect(*args)
        app = create_app()
        gc.collect = collect
        assert type(app).__name__ == "FastAPI", type(app)
        # no full collection (0.2-0.4 s) where FastAPI does not copy routes (>= 0.137)
        assert collections == [], collections
        import logging
        recorder = logging.getLogger("prefect.server.services.task_run_recorder")
        names = [getattr(f, "__name__", "") for f in recorder.filters]
        assert "_flush_cancelled_at_stop" in names, names
        assert gc.isenabled()
        assert gc.get_freeze_count() > 100_000, gc.get_freeze_count()
        print("ok")
        """,
        **SERVER_ENVIRONMENT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")


def test_the_command_starts_the_server_before_it_loads_the_cli():
    """`batchscore.command.run`: for a command that runs flows, the temporary server starts
    booting before `batchscore.cli` and the config's schema (pydantic) are imported."""
    done = _run(
        """
        import sys
        import batchscore.prefect_api as api

        def start_early():
            print("cli" if "batchscore.cli" in sys.modules else "-",
                  "pydantic" if "pydantic" in sys.modules else "-")
            raise SystemExit(0)

        api.start_early = start_early
        sys.argv = ["batchscore", "score", "--config", "nowhere.toml"]
        from batchscore.command import run
        run()
        """
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["-", "-"]


def test_the_servers_flush_cancelled_by_its_own_stop_is_not_printed():
    """`api_server._flush_cancelled_at_stop`, on the task-run recorder's logger once the
    app is built: a periodic flush cancelled at the server's stop (its events put back for
    the final flush, none dropped) prints no traceback into the command's output; dropped
    events and other errors still do."""
    import asyncio
    import logging

    from batchscore import api_server

    def record(message: str, exc: BaseException | None) -> logging.LogRecord:
        info = (type(exc), exc, None) if exc else None
        return logging.LogRecord(
            api_server.RECORDER_LOGGER, logging.ERROR, __file__, 1, message, (), info
        )

    cancelled = asyncio.CancelledError()
    assert not api_server._flush_cancelled_at_stop(
        record("Error flushing 7 events (7 to retry, 0 dropped)", cancelled)
    )
    assert api_server._flush_cancelled_at_stop(
        record("Error flushing 7 events (5 to retry, 2 dropped)", cancelled)
    )
    assert api_server._flush_cancelled_at_stop(
        record("Error flushing 7 events (7 to retry, 0 dropped)", RuntimeError("db is gone"))
    )
    assert api_server._flush_cancelled_at_stop(record("Dropping event 1", None))


def test_a_command_that_stops_early_leaves_no_server_behind(tmp_path):
    """A flow command with a config it cannot read exits 2, and the temporary server it
    started booting (`batchscore.command`) is stopped on the way out."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    command = subprocess.Popen(
        [str(Path(sys.executable).parent / "batchscore"), "score", "--config", "nowhere.toml"],
        cwd=tmp_path,
        env=clean,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, err = command.communicate(timeout=120)
    assert command.returncode == 2, err
    assert "nowhere.toml" in err
    # The server's first argument is the pid of the process that started it.
    left = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[1:4] == [b"-m", b"batchscore.api_server", str(command.pid).encode()]:
            left.append(entry.name)
    assert not left, f"servers left behind: {left}"


def test_a_second_run_in_the_same_process_gets_its_own_server():
    """`batchscore.cli.main` called twice in one process (a notebook, a script, a test): the
    first run's early server is gone, and Prefect's settings, read once, still name it. The
    second run must use its own server, not that one (it was refused a connection)."""
    done = _run(
        """
        import batchscore.prefect_api as api

        urls = []
        for _ in range(2):
            api.start_early()
            with api.one_api() as url:
                from prefect import flow

                @flow
                def one() -> int:
                    return 1

                assert one() == 1
                urls.append(url)
        assert urls[0] != urls[1], urls
        print("ok")
        """
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")


def test_a_configured_api_starts_no_server():
    done = _run(
        """
        import batchscore.prefect_api as api

        api.start_early()
        assert api._early is None
        with api.one_api() as url:
            assert url == "http://127.0.0.1:9/api", url
        print("ok")
        """,
        PREFECT_API_URL="http://127.0.0.1:9/api",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")


def test_a_flow_run_ends_without_joining_its_heartbeat_thread(prefect_api):
    """The heartbeat thread sleeps in 1 s steps; Prefect's sync engine joined it at the end
    of every flow run. With the flows package imported, the run ends while the thread is
    still asleep, and the thread then stops by itself."""
    import threading

    from prefect import flow
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    import flows  # noqa: F401  (installs the change)

    def heartbeat_threads() -> list[threading.Thread]:
        return [
            t
            for t in threading.enumerate()
            if getattr((getattr(t, "_args", ()) or (None,))[0], "__name__", "") == "heartbeat_loop"
        ]

    @flow
    def quick() -> int:
        assert heartbeat_threads(), "no heartbeat thread while the flow runs"
        return 1

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
        assert quick() == 1
        left = heartbeat_threads()
    assert left, "the flow run waited for its heartbeat thread"
    for thread in left:
        thread.join(timeout=5)
        assert not thread.is_alive()


def test_api_clients_share_one_verified_tls_context_per_ca_file(prefect_api, tmp_path):
    """Each Prefect API client parsed its CA bundle (22 ms); after `reuse_tls_contexts`
    (installed with the flows) clients with the same CA file share one context, a changed
    file gets a new one, and the unverified context is still the client's own."""
    import ssl

    import certifi
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.settings import (
        PREFECT_API_SSL_CERT_FILE,
        PREFECT_API_TLS_INSECURE_SKIP_VERIFY,
        temporary_settings,
    )

    import flows  # noqa: F401  (installs it)

    def context_of(client: SyncPrefectClient) -> ssl.SSLContext:
        return client._client._transport._pool._ssl_context

    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(Path(certifi.where()).read_bytes())
    with temporary_settings({PREFECT_API_SSL_CERT_FILE: str(bundle)}):
        with SyncPrefectClient(prefect_api) as a, SyncPrefectClient(prefect_api) as b:
            assert context_of(a) is context_of(b)
            assert context_of(a).verify_mode == ssl.CERT_REQUIRED
            assert a.hello().status_code == 200
            shared = context_of(a)
        bundle.write_bytes(bundle.read_bytes() + b"\n")  # a new version of the file
        with SyncPrefectClient(prefect_api) as c:
            assert context_of(c) is not shared
            assert context_of(c).verify_mode == ssl.CERT_REQUIRED
    with (
        temporary_settings({PREFECT_API_TLS_INSECURE_SKIP_VERIFY: True}),
        SyncPrefectClient(prefect_api) as d,
        SyncPrefectClient(prefect_api) as e,
    ):
        assert context_of(d) is not context_of(e)
        assert context_of(d).verify_mode == ssl.CERT_NONE
    assert shared.verify_mode == ssl.CERT_REQUIRED and shared.check_hostname


def test_a_registered_block_class_is_found_without_importing_prefects_collections():
    """`look_up_block_classes_before_loading_collections` (installed with the flows): the
    lookup a worker's task context makes (`local-file-system`) imports no collection
    (prefect-dask brings distributed, 0.2 s); a type nobody registered still loads them
    first, and fails as Prefect's own lookup does. In a fresh process: this one may have
    loaded them already."""
    code = textwrap.dedent(
        """
        import sys
        import flows
        import prefect._internal.plugins.collections as collections
        from prefect.blocks.core import Block
        from prefect.filesystems import LocalFileSystem

        assert Block.get_block_class_from_key("local-file-system") is LocalFileSystem
        assert collections._collections is None and "prefect_dask" not in sys.modules
        try:
            Block.get_block_class_from_key("no-such-block")
        except Exception as exc:
            print(type(exc).__name__)
        assert "prefect_dask" in (collections._collections or {}), collections._collections
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "UnknownBlockType"


def test_plain_flow_parameters_are_serialized_without_importing_fastapi():
    """`serialize_plain_parameters_without_fastapi` (installed with the flows): strings,
    booleans, numbers and None are what FastAPI's encoder would make of them, without
    importing FastAPI (0.13 s at every flow's start); anything else goes through Prefect's
    own method, as before. In a fresh process: this one imported FastAPI long ago."""
    code = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        import flows
        from flows.score import score

        plain = {"config": "b.toml", "partition": None, "rescore": True, "n": 3, "x": 0.5}
        assert score.serialize_parameters(plain) == plain
        assert "fastapi" not in sys.modules
        from fastapi.encoders import jsonable_encoder
        assert jsonable_encoder(plain) == plain
        other = {"config": Path("b.toml"), "partition": None}
        assert score.serialize_parameters(other) == {"config": "b.toml", "partition": None}
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"


def test_a_sealed_task_input_is_passed_without_walking_into_it():
    """Prefect walks task parameters for futures and states before a task runs; a partition's
    chunk results (hundreds of thousands of drift counts) must be one leaf of that walk,
    in the flow process and in a pool worker alike (where `opaque` arrives unwrapped)."""
    from prefect.utilities.collections import visit_collection

    from tasks.common import Sealed

    counts = {"x": list(range(1_000)), "y": [{"a": 1}, {"b": (2, 3)}]}
    visited = []

    def visit(expression):
        visited.append(expression)
        return expression

    sealed = Sealed([counts, counts])
    assert visit_collection(sealed, visit, return_data=True) is sealed
    assert visited == [sealed]
    visited.clear()
    visit_collection([counts], visit, return_data=True)
    assert len(visited) > 1_000  # what it saves: the same value, unsealed, is walked whole
    assert repr(sealed) == "Sealed(list, 2 items)"


def test_a_held_partition_raised_in_a_worker_reaches_the_flow_with_its_outcome():
    import pickle

    from batchscore.scoring import PartitionHeld, PartitionOutcome

    outcome = PartitionOutcome("2026-11-07", "held", 10, 0, 10, 0.5, ("too many bad rows",))
    again = pickle.loads(pickle.dumps(PartitionHeld(outcome)))
    assert isinstance(again, PartitionHeld) and again.outcome == outcome
    assert str(again) == "partition 2026-11-07 held: too many bad rows"


def test_a_nested_one_api_uses_the_server_of_the_enclosing_one():
    """`batchscore demo` trains and scores inside its own one_api(): each nested one took the
    early server's URL, already claimed, for a stale one and booted a server of its own
    (three servers for one demo, ~4 s each)."""
    done = _run(
        """
        import batchscore.prefect_api as api

        api.start_early()
        with api.one_api() as outer:
            for _ in range(2):
                with api.one_api() as inner:
                    from prefect import flow

                    @flow
                    def one() -> int:
                        return 1

                    assert one() == 1
                    assert inner == outer, (inner, outer)
        print("ok")
        """
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
    assert "Starting temporary server" not in done.stderr


@contextlib.contextmanager
def _records(logger: str):
    """The records `logger` handles while the block runs, as Prefect's filters leave them."""

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    records: list[logging.LogRecord] = []
    keep = Keep()
    logging.getLogger(logger).addHandler(keep)
    try:
        yield records
    finally:
        logging.getLogger(logger).removeHandler(keep)


def test_a_held_partitions_task_run_is_logged_without_its_traceback(prefect_api):
    """A task run that ends Failed because its partition is held (or its labels cannot be
    used) is logged with its one-line reason: Prefect's traceback said it three more times
    in 15 lines per partition. Any other exception keeps its traceback."""
    from prefect import flow, task

    import tasks.performance  # noqa: F401  (they install the filter, for these errors)
    import tasks.scoring  # noqa: F401
    from batchscore.labels import LabelError
    from batchscore.scoring import PartitionHeld, PartitionOutcome

    outcome = PartitionOutcome("2026-10-02", "held", 5, 0, 0, 0.0, ("file x: no column 'plan'",))

    @task(name="held")
    def held():
        raise PartitionHeld(outcome)

    @task(name="labels")
    def labels():
        raise LabelError("labels/dt=D/x.parquet has no column 'churned'")

    @task(name="bug")
    def bug():
        raise KeyError("a bug")

    @flow
    def run_them():
        for one in (held, labels, bug):
            with contextlib.suppress(Exception):
                one()

    with _records("prefect.task_runs") as records:
        run_them()
    failed = {
        r.getMessage().split("exception: ")[1].split("(")[0]: r
        for r in records
        if "Task run failed with exception" in r.getMessage()
    }
    assert sorted(failed) == ["KeyError", "LabelError", "PartitionHeld"]
    assert failed["PartitionHeld"].exc_info is None
    assert failed["LabelError"].exc_info is None
    assert failed["KeyError"].exc_info is not None  # a bug's traceback is kept


def test_a_flow_run_failed_by_the_users_setup_is_logged_without_its_traceback(prefect_api):
    """A score flow run stopped by what the user fixes in the config or the store (here a
    store holding another model's outputs) is logged with its one-line reason: Prefect's
    engine printed ~60 lines of its own frames above it. A bug keeps its traceback."""
    from prefect import flow

    import tasks.scoring  # noqa: F401  (it installs the filter, for these errors)
    from batchscore.config import ConfigError
    from batchscore.partitions import SourceError
    from batchscore.registry import ModelIntegrityError

    def failing(exc: Exception):
        @flow(name=f"fails-with-{type(exc).__name__}")
        def fails():
            raise exc

        return fails

    with _records("prefect.flow_runs") as records:
        for exc in (
            SourceError("store/scores/dt=D/_SUCCESS was written for model 'churn'"),
            ConfigError("[scoring] workers: must be >= 0"),
            ModelIntegrityError("models/churn/v0001/model.txt changed"),
            KeyError("a bug"),
        ):
            with contextlib.suppress(Exception):
                failing(exc)()
    failed = {
        r.getMessage().split("execution: ")[1].split("(")[0]: r
        for r in records
        if "Encountered exception during execution" in r.getMessage()
    }
    assert sorted(failed) == ["ConfigError", "KeyError", "ModelIntegrityError", "SourceError"]
    assert [n for n, r in failed.items() if r.exc_info is not None] == ["KeyError"]
