"""Headless Chromium driven over the DevTools protocol, for looking at the Airflow UI.

The Airflow 3 UI is a React application: ``chromium --dump-dom`` sees its page before the
scripts have asked the API for anything, and a login needs a cookie set by the login page's
own script. So the test drives a real browser session instead: it types into the login
form, clicks, and reads the page's text once it has rendered. The protocol is JSON over one
WebSocket (``websockets`` comes with Airflow), so no browser driver package is needed.

Chromium runs as the machine's environment allows: headless, no sandbox (CI runs as root),
and none of the background connections it would make to Google's hosts.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]
# What Chromium answers an evaluation that meets a navigation half way.
NAVIGATING = (
    "Inspected target navigated or closed",
    "Execution context was destroyed",
    "Cannot find context with specified id",
)


class BrowserError(RuntimeError):
    """The page did not reach the expected state; the message says what it showed."""


class Browser:
    """One headless Chromium with one page, driven over the DevTools protocol."""

    def __init__(self, log_file: Path) -> None:
        self._log_file = log_file
        self._profile = Path(tempfile.mkdtemp(prefix="leveranse-chromium-"))
        self._process: subprocess.Popen[bytes] | None = None
        self._socket: ClientConnection | None = None
        self._closing = contextlib.ExitStack()
        self._session = ""
        self._ids = itertools.count(1)

    def __enter__(self) -> Browser:
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)  # a half-started browser is ended all the same
            raise
        return self

    def _start(self) -> None:
        with self._log_file.open("wb") as log:
            self._process = subprocess.Popen(
                [CHROMIUM, *FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        port_file = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.is_file() or len(port_file.read_text().splitlines()) < 2:
            if time.monotonic() > deadline or self._process.poll() is not None:
                raise BrowserError(f"chromium did not start; see {self._log_file}")
            time.sleep(0.2)
        port, path = port_file.read_text().splitlines()[:2]
        self._socket = self._closing.enter_context(
            connect(f"ws://127.0.0.1:{port}{path}", max_size=None)
        )
        target = self.call("Target.createTarget", {"url": "about:blank"}, browser=True)
        attached = self.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}, browser=True
        )
        self._session = attached["sessionId"]
        self.call("Page.enable")

    def __exit__(self, *_exc: object) -> None:
        self._closing.close()
        if self._process is not None:
            # The renderer and helper processes share the browser's group: end them all.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    def call(self, method: str, params: dict[str, Any] | None = None, browser: bool = False) -> Any:
        """Send one command and return its result, skipping the events in between."""
        assert self._socket is not None
        message: dict[str, Any] = {"id": next(self._ids), "method": method, "params": params or {}}
        if not browser:
            message["sessionId"] = self._session
        self._socket.send(json.dumps(message))
        while True:
            answer = json.loads(self._socket.recv(timeout=60))
            if answer.get("id") == message["id"]:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                return answer["result"]

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})

    def _while_loading(self, expression: str) -> Any:
        """evaluate(), or None while the page is between documents: an evaluation that
        meets a navigation (the redirect after signing in) fails with one of these, and a
        wait should look again rather than fail."""
        try:
            return self.evaluate(expression)
        except BrowserError as error:
            if any(sign in str(error) for sign in NAVIGATING):
                return None
            raise

    def text(self) -> str:
        """What the page shows, as a reader sees it (empty while it is loading)."""
        return self._while_loading("document.body ? document.body.innerText : ''") or ""

    def wait_for_text(self, *needles: str, timeout: float = 60) -> str:
        """The page's text once it shows every needle; BrowserError with the text otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            shown = self.text()
            if all(needle in shown for needle in needles):
                return shown
            if time.monotonic() > deadline:
                missing = [n for n in needles if n not in shown]
                raise BrowserError(
                    f"after {timeout} s the page at {self.evaluate('location.href')} does not "
                    f"show {missing}; it shows:\n{shown[:3000]}"
                )
            time.sleep(0.5)

    def wait_for(self, expression: str, timeout: float = 60) -> Any:
        """The value of a JavaScript expression once it is truthy."""
        deadline = time.monotonic() + timeout
        while not (value := self._while_loading(expression)):
            if time.monotonic() > deadline:
                raise BrowserError(f"{expression} still false after {timeout} s")
            time.sleep(0.5)
        return value

    def type_into(self, selector: str, text: str) -> None:
        """Focus an input and type, as a user does, so React sees the change."""
        self.wait_for(f"!!document.querySelector({json.dumps(selector)})")
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.call("Input.insertText", {"text": text})

    def click_button(self, label: str) -> None:
        """Click the first enabled button whose text is ``label``."""
        found = self.wait_for(
            "(() => { const b = [...document.querySelectorAll('button')].find("
            f"b => b.innerText.trim() === {json.dumps(label)} && !b.disabled);"
            " if (b) { b.click(); return true; } return false; })()"
        )
        assert found

    def screenshot(self, path: Path) -> Path:
        """A PNG of the page, for a person to look at when a check fails."""
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))
        return path
