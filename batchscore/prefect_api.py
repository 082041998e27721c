"""One Prefect API for every process of a run.

Without `PREFECT_API_URL`, Prefect starts a temporary server per process, and with a process
pool each worker starts its own (ENVIRONMENT.md: 32 s instead of 7 s for 50 tasks). When no
API is configured, `one_api()` starts a single temporary server on 127.0.0.1 and points this
process and every child at it; with a configured API (a `prefect server start`, a worker) it
does nothing.

The server takes seconds to boot (it imports FastAPI, SQLAlchemy and Prefect's API in its
own process), and so does importing Prefect and the flows here. The CLI
calls `start_early()` before its heavy imports, so the two happen side by side instead of
one after the other. The server is the one Prefect's `SubprocessASGIServer` runs (uvicorn
with `prefect.server.api.server:create_app`, UI off; built with the garbage collector off),
started without importing Prefect's
server code into this process, in a session of its own and ending with this process
(`batchscore/api_server.py`).
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path

# The temporary server's environment, besides this process's.
SERVER_ENVIRONMENT = {
    "PREFECT_UI_ENABLED": "0",
    "PREFECT__SERVER_EPHEMERAL": "1",
    # Not PREFECT__SERVER_FINAL, which Prefect's own temporary server sets:
    # `batchscore.api_server.create_app` decides it (0.2-0.4 s of CPU).
    # The temporary server has no network to send telemetry to; asking costs seconds.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # Registering block types at start imports every installed Prefect collection
    # (prefect-dask pulls in distributed) to hash them: the boot took 3.55 s of CPU
    # with it, 3.07 s without. This server runs flows for one command, which use no
    # blocks; a server started later on the same database registers them.
    "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
    "PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
}


class TemporaryServer:
    """A temporary Prefect API server process on a free port of 127.0.0.1."""

    def __init__(self):
        self._env = {**os.environ, **SERVER_ENVIRONMENT}
        self.process: subprocess.Popen | None = None
        self._launch()
        atexit.register(self.stop)

    def _launch(self) -> None:
        self.port = _free_port()
        spec = importlib.util.find_spec("prefect")
        site = str(Path(spec.origin).parent.parent)  # the folder holding the prefect package
        on_main_thread = threading.current_thread() is threading.main_thread()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "batchscore.api_server",
                str(os.getpid() if on_main_thread else 0),
                "--app-dir",
                site,
                "--factory",
                "batchscore.api_server:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "error",
                "--lifespan",
                "on",
            ],
            env=self._env,
            start_new_session=True,  # see batchscore/api_server.py
        )

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        launches = 1
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                # Another process took the port between our check and uvicorn's bind.
                if launches >= 3:
                    raise RuntimeError(f"the temporary Prefect server exited with code {code}")
                launches += 1
                self._launch()
                continue
            with (
                suppress(OSError),
                urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the temporary Prefect server did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


_early: TemporaryServer | None = None
# The URLs of every temporary server this process started early, stopped ones included:
# Prefect reads its settings once, so after a first run they still name that run's server.
_ours: set[str] = set()
# The servers an enclosing `one_api()` is serving now: a nested one (the demo's training and
# scoring, inside the demo's own) uses that server, not one of its own.
_serving: list[str] = []


def start_early() -> bool:
    """Start booting a temporary server now, when nothing names an API, and point this
    process (and its children) at it before Prefect is imported. True when it did.

    Called by the CLI before it imports Prefect; `one_api()` then waits for this server.
    Prefect reads its settings once, at import: the URL must be in the environment by then,
    or a thread without the flow's settings context would start a server of its own. Only
    the environment and the active profile are checked here (importing Prefect's settings
    costs seconds); with a `prefect.toml` or `.env` in the working folder, which may name an
    API too, nothing is started early and `one_api()` decides as before.
    """
    global _early
    if _early is not None:
        return True
    if os.environ.get("PREFECT_API_URL") or _maybe_configured():
        return False
    _early = TemporaryServer()
    _ours.add(_early.api_url)
    os.environ["PREFECT_API_URL"] = _early.api_url
    return True


def _maybe_configured() -> bool:
    if Path("prefect.toml").exists() or Path(".env").exists():
        return True
    home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml")).expanduser()
    try:
        data = tomllib.loads(profiles.read_text())
    except FileNotFoundError:
        return False
    except (OSError, tomllib.TOMLDecodeError):
        return True  # unsure: let Prefect's own settings decide
    active = os.environ.get("PREFECT_PROFILE") or data.get("active") or "ephemeral"
    return bool(data.get("profiles", {}).get(active, {}).get("PREFECT_API_URL"))


@contextmanager
def one_api() -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    global _early
    configured = get_current_settings().api.url
    if _serving and configured == _serving[-1]:
        # Inside another one_api(): its server. (The settings name an early server that was
        # taken already, which looked stale: the demo booted two more, ~4 s each.)
        yield str(configured)
        return
    early, _early = _early, None
    stale = configured in _ours and (early is None or configured != early.api_url)
    if early is not None and (configured == early.api_url or stale):
        try:
            early.wait_ready()
            with temporary_settings({PREFECT_API_URL: early.api_url}), _serves(early.api_url):
                yield early.api_url
        finally:
            _drain()
            os.environ.pop("PREFECT_API_URL", None)
            early.stop()
        return
    if early is not None:
        early.stop()
    if configured and not stale:
        yield str(configured)
        return
    # Prefect's own server class: a thread that runs without this context's settings asks
    # Prefect for an ephemeral server, and gets this (singleton) one rather than another.
    from prefect.server.api.server import SubprocessASGIServer

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    server = SubprocessASGIServer()
    server.start(timeout=120)
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}), _serves(server.api_url):
            yield server.api_url
    finally:
        _drain()
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


@contextmanager
def _serves(url: str) -> Iterator[None]:
    _serving.append(url)
    try:
        yield
    finally:
        _serving.pop()


def end_flow_runs_without_waiting_for_heartbeats() -> None:
    """Let a flow run end without waiting for its heartbeat thread to wake up.

    Prefect's sync flow engine runs a heartbeat thread (every 180 s by default, so that a
    crashed run can be noticed) and, when the flow function returns, stops it and joins it.
    The thread sleeps in 1 s steps, so every flow run waited 0-1 s (0.8 s measured) between
    its last line and its final state. Prefect's async engine does not join
    (`join_on_exit=False`); this makes the sync engine do the same. The thread is a daemon,
    its stop event is set, and it returns as soon as it wakes, without another heartbeat.
    Installed by `flows/__init__.py`, for every flow of this project however it is run.
    """
    import prefect.flow_engine as engine

    original = engine._send_heartbeats
    if getattr(original, "batchscore_no_join", False):
        return

    def _send_heartbeats(run_engine, join_on_exit: bool = True):
        return original(run_engine, join_on_exit=False)

    _send_heartbeats.batchscore_no_join = True
    engine._send_heartbeats = _send_heartbeats


def reuse_tls_contexts() -> None:
    """Build Prefect's verified TLS context once per CA file and process, not per API client.

    Every Prefect API client builds `ssl.create_default_context(cafile=...)` (certifi's
    bundle, or `PREFECT_API_SSL_CERT_FILE`), parsing ~150 CA certificates: 22 ms of CPU
    here, for an https API or an http one alike. A process-pool worker builds two clients per
    task run, so this was 44 of the 75 ms of CPU a worker spent on each task outside the
    task's own code (measured with no-op tasks; 31 ms with this). Contexts built from the same
    file are alike, and one context serving many connections is what `ssl` intends; a new
    one is built when the file's size or modification time changes. Only that verified
    context is shared: the unverified one (`PREFECT_API_TLS_INSECURE_SKIP_VERIFY`), which
    Prefect changes after building it, is built per client as before. Installed by
    `flows/__init__.py`, in the flow process and (through the fork server) every worker.
    """
    import prefect.client.orchestration as orchestration

    module = getattr(orchestration, "ssl", None)
    if module is None or isinstance(module, _SharedVerifiedContexts):
        return  # another Prefect: nothing to change; or installed already
    orchestration.ssl = _SharedVerifiedContexts(module)


def build_task_settings_once() -> None:
    """Rebuild the flow's Prefect settings once per worker process, not once per task run.

    A process-pool (or Dask) worker runs each task inside `prefect.context.hydrated_context`,
    which rebuilds the flow's `SettingsContext` from its serialized form: some fifty nested
    pydantic-settings models, each reading the environment, `.env`, `prefect.toml`,
    `pyproject.toml` and the profiles file. That was 23 of the 30 ms of CPU a worker spent per
    task outside the task's own code (measured with no-op tasks, after
    `reuse_tls_contexts`). Every task of a flow run carries the same settings, so the
    context is built from the first and reused (the models are immutable) while the
    serialized settings and the process's `PREFECT_*` environment stay the same; anything
    else is built as before. Installed by `flows/__init__.py`, like the others here.
    """
    import prefect.context as context

    original = context.hydrated_context
    if getattr(original, "batchscore_settings_once", False):
        return
    built: dict[str, dict] = {}

    def hydrated_context(serialized_context=None, client=None):
        settings = (serialized_context or {}).get("settings_context")
        if settings:
            environment = sorted((k, v) for k, v in os.environ.items() if k.startswith("PREFECT_"))
            key = json.dumps([settings, environment], sort_keys=True, default=str)
            made = built.get(key)
            if made is None:
                hydrated = context.SettingsContext(**settings)
                if len(built) >= 8:  # a long-lived worker serving many runs
                    built.clear()
                made = built[key] = {"profile": hydrated.profile, "settings": hydrated.settings}
            serialized_context = {**serialized_context, "settings_context": made}
        return original(serialized_context, client)

    hydrated_context.batchscore_settings_once = True
    context.hydrated_context = hydrated_context


def look_up_block_classes_before_loading_collections() -> None:
    """Find a block class among those already registered before importing every installed
    Prefect collection to look for it.

    Each task a worker runs rebuilds its flow's context, whose result store names its
    storage block by type (`local-file-system`); Prefect's lookup of that type first imports
    every installed collection, once per process, in case one registers it: here
    prefect-dask, which imports Dask, distributed and tornado, ~350 modules and 0.2 s of CPU
    that the fork server spent before it could fork the first worker, for a class that
    Prefect itself defines. Now a registered type is returned at once, and a type no one
    registered (a block from a collection, `s3-bucket` from prefect-aws) loads the
    collections and is looked up as before. Installed by `flows/__init__.py`.
    """
    from prefect.blocks.core import Block
    from prefect.utilities.dispatch import lookup_type

    original = Block.__dict__["get_block_class_from_key"].__func__
    if getattr(original, "batchscore_registered_first", False):
        return

    def get_block_class_from_key(cls, key: str):
        try:
            return lookup_type(cls, key)
        except KeyError:
            return original(cls, key)

    get_block_class_from_key.batchscore_registered_first = True
    Block.get_block_class_from_key = classmethod(get_block_class_from_key)


def serialize_plain_parameters_without_fastapi() -> None:
    """Serialize a flow run's parameters without importing FastAPI when they are plain
    JSON values already.

    Creating a flow run, Prefect converts its parameters with FastAPI's `jsonable_encoder`,
    imported there: FastAPI, its OpenAPI models and their pydantic schemas, 0.13 s of CPU in
    the command's process on the way to every flow's start (with an API running nothing
    else imports FastAPI there). The flows here take strings, booleans and None, which that
    encoder returns as they are; so are they now, without it. Any other value (a future, a
    state, an object) goes through Prefect's own method as before. Installed by
    `flows/__init__.py`.
    """
    from prefect.flows import Flow

    original = Flow.serialize_parameters
    if getattr(original, "batchscore_plain_first", False):
        return
    plain = (str, bool, int, float, type(None))

    def serialize_parameters(self, parameters):
        if all(type(value) in plain for value in parameters.values()):
            return dict(parameters)
        return original(self, parameters)

    serialize_parameters.batchscore_plain_first = True
    Flow.serialize_parameters = serialize_parameters


class _SharedVerifiedContexts:
    """The `ssl` module as Prefect's client module sees it: `create_default_context` with a
    CA file (and nothing else) returns one context per file and version of the file."""

    def __init__(self, module):
        self._ssl = module
        self._contexts: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def create_default_context(self, purpose=None, *, cafile=None, capath=None, cadata=None):
        purpose = self._ssl.Purpose.SERVER_AUTH if purpose is None else purpose
        if cafile is None or capath is not None or cadata is not None:
            return self._ssl.create_default_context(
                purpose, cafile=cafile, capath=capath, cadata=cadata
            )
        try:
            stat = os.stat(cafile)
        except OSError:  # let `ssl` report it
            return self._ssl.create_default_context(purpose, cafile=cafile)
        key = (purpose, os.fspath(cafile), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            context = self._contexts.get(key)
            if context is None:
                context = self._contexts[key] = self._ssl.create_default_context(
                    purpose, cafile=cafile
                )
        return context

    def __getattr__(self, name: str):
        return getattr(self._ssl, name)


class _WithoutTraceback:
    """A logging filter: a record of one of `types`, or of an exception `matches` accepts,
    keeps its message, not its traceback."""

    def __init__(self, types: tuple[type[BaseException], ...], matches: tuple = ()):
        self.types = types
        self.matches = matches

    def filter(self, record) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and (
            isinstance(exc, self.types) or any(match(exc) for match in self.matches)
        ):
            record.exc_info = record.exc_text = None
        return True


def log_failures_without_tracebacks(
    *types: type[BaseException], matches: Callable[[BaseException], bool] | None = None
) -> None:
    """Task and flow runs that end Failed by one of `types` (or by an exception `matches`
    accepts: a full disk is an OSError of one errno), an outcome the flow expects or the
    user's to fix, whose message says it all (a partition held for its data, labels that
    cannot be used, a store holding another model's outputs), are logged by Prefect
    (`Task run failed with exception: ...`, `Encountered exception during execution: ...`)
    without their traceback: a held partition's said the reason three more times in 15
    lines, a store's ~60 lines of Prefect's engine, in the terminal and the UI. Any other
    exception keeps its traceback."""
    import logging

    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logger = logging.getLogger(name)
        for existing in logger.filters:
            if isinstance(existing, _WithoutTraceback):
                existing.types = tuple(dict.fromkeys((*existing.types, *types)))
                if matches is not None:
                    existing.matches = tuple(dict.fromkeys((*existing.matches, matches)))
                break
        else:
            logger.addFilter(_WithoutTraceback(types, (matches,) if matches else ()))


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _drain() -> None:
    # Logs and events are sent in the background; deliver them before the server goes away.
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        # A lost log line must not turn a finished run into an error.
        with suppress(Exception):
            service.drain_all(timeout=10)
