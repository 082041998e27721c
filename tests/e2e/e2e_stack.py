"""Processes of the end-to-end test: each in its own session, stopped with all its descendants.

A Prefect worker starts every flow run in a new session, and a flow run starts its own pool
of worker processes, so stopping a process group is not enough: `stop` snapshots the process
tree first (a child whose parent dies is re-parented and lost to us) and signals all of it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (Linux /proc; elsewhere none, and groups must do)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def running(pid: int) -> bool:
    if Path("/proc/self/stat").exists():
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return text[text.rindex(")") + 2] != "Z"  # a zombie has ended; its parent reaps it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


class Process:
    """A long-running command (server, worker, browser) with its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict, cwd: Path, log: Path):
        self.name, self.argv, self.env, self.cwd, self.log_path = name, argv, env, cwd, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> Process:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child holds it; closed in stop()
        try:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM the group once and every descendant outside it; SIGKILL what is left
        after `timeout` seconds."""
        if self.proc is None:
            return
        tree = [self.pid, *descendants(self.pid)]
        # Prefect takes a second SIGTERM as SIGKILL: the leader gets exactly one, via its group.
        with _suppress_lookup():
            os.killpg(self.pid, signal.SIGTERM)
        for pid in tree[1:]:
            with _suppress_lookup():
                if os.getpgid(pid) != self.pid:
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.proc.poll()
            if not any(running(p) for p in tree):
                break
            time.sleep(0.2)
        for pid in tree:
            if running(pid):  # only what is left: an ended pid may already be another's
                with _suppress_lookup():
                    os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


class _suppress_lookup:
    """Processes may end at any moment while they are being stopped."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        return kind is not None and issubclass(kind, ProcessLookupError | PermissionError)


def prefect(args: list[str], env: dict, cwd: Path, timeout: float = 180) -> str:
    """Run a `prefect` CLI command; its output, or an AssertionError that shows it."""
    out = subprocess.run(
        [str(BIN / "prefect"), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, f"`prefect {' '.join(args)}` exited {out.returncode}:\n{text}"
    return text


def flow_run_id(cli_output: str) -> str:
    """The id `prefect deployment run` printed."""
    match = re.search(r"UUID: ([0-9a-f-]{36})", cli_output)
    assert match, f"no flow run id in the output of `prefect deployment run`:\n{cli_output}"
    return match.group(1)


def wait_healthy(api: str, server: Process, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if not server.alive() or time.monotonic() > deadline:
            raise AssertionError(f"prefect server did not start:\n{server.log()}")
        time.sleep(0.5)
