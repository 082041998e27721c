"""Headless Chromium driven over the DevTools protocol, for the end-to-end UI check.

`chromium --headless --dump-dom URL` renders the Prefect UI (a single-page app) well enough
to read a flow run's default tab, but a deep link to another tab (`?tab=Artifacts`) falls
back to Logs: the tab is hidden until the run has loaded. So the test drives the page as a
person does (open, wait until it shows something, click) over the DevTools protocol, with
the `websockets` client that Prefect itself depends on: no browser-automation package.
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.request
from pathlib import Path

from e2e_stack import Process

# Debian's chromium, installed by `make browser`; CHROMIUM names another one.
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


class Chromium:
    """One headless browser with one page; a context manager that always stops the browser."""

    def __init__(self, workdir: Path, width: int = 1400, height: int = 1600):
        self.workdir = workdir
        self.size = (width, height)
        self.process: Process | None = None
        self._ws = None
        self._next_id = 0

    def __enter__(self) -> Chromium:
        from websockets.sync.client import connect

        profile = self.workdir / "chromium-profile"  # fresh: nothing cached, no first-run UI
        profile.mkdir(parents=True)
        self.process = Process(
            "chromium",
            [
                CHROMIUM,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={self.size[0]},{self.size[1]}",
                "about:blank",
            ],
            env=dict(os.environ),
            cwd=self.workdir,
            log=self.workdir / "chromium.log",
        ).start()
        try:
            port = self._devtools_port(profile / "DevToolsActivePort")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                pages = [t for t in json.load(r) if t["type"] == "page"]
            assert pages, "chromium opened no page"
            self._ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None)
            self.call("Page.enable")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._ws is not None:
            self._ws.close()
        if self.process is not None:
            self.process.stop(timeout=5)

    def _devtools_port(self, active_port: Path, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if active_port.exists() and active_port.read_text().strip():
                return int(active_port.read_text().split()[0])
            assert self.process and self.process.alive(), (
                f"chromium exited:\n{self.process.log() if self.process else ''}"
            )
            time.sleep(0.1)
        raise AssertionError(f"chromium did not open its DevTools port:\n{self.process.log()}")

    def call(self, method: str, **params) -> dict:
        """One DevTools command; the events that arrive meanwhile are not needed."""
        self._next_id += 1
        self._ws.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=60))
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def url(self) -> str:
        return self.evaluate("location.href")

    def wait_for(self, expression: str, what: str, timeout: float = 60):
        """Poll a JavaScript expression until it is truthy; fail showing what the page shows."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except AssertionError:  # the page is between two documents
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the page never showed {what} within {timeout:.0f} s; "
                    f"at {self.url()} it shows:\n{self.text()[:3000]}"
                )
            time.sleep(0.25)

    def wait_for_text(self, *needles: str, timeout: float = 60) -> str:
        checks = " && ".join(f"t.includes({json.dumps(n)})" for n in needles)
        self.wait_for(
            f"(() => {{ const t = document.body ? document.body.innerText : ''; "
            f"return {checks}; }})()",
            " and ".join(repr(n) for n in needles),
            timeout,
        )
        return self.text()

    def click(self, selector: str) -> None:
        found = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
            f"if (!e) return false; e.click(); return true; }})()"
        )
        assert found, f"nothing to click at {selector!r} on {self.url()}:\n{self.text()[:3000]}"

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
