"""A small Chrome DevTools-protocol client: headless Chromium for the browser test tier.

Launches Chromium headless with a private profile, reads the debugging port it picked from
``DevToolsActivePort``, opens a page target and drives it over one WebSocket (websocket-client):
``Runtime.evaluate`` (promises awaited, values returned by value), console messages and uncaught
exceptions collected with the script URL they came from, ``Page.captureScreenshot``.

    with Browser.launch() as browser:
        page = browser.new_page()
        page.navigate("http://127.0.0.1:8188")
        page.wait_for("!!window.app?.graph", timeout=120)
        page.screenshot(Path("app.png"))

No third-party browser driver: only the protocol, which every Chromium speaks.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("parallax.devtools")

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
# Without these a headless Chromium in a sandbox-less container with no network waits on DNS lookups,
# component updates and sync for minutes; --no-sandbox is required when running as root.
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--no-default-browser-check",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
    "--disable-dev-shm-usage", "--mute-audio", "--hide-scrollbars", "--password-store=basic",
    "--remote-debugging-port=0", "--remote-allow-origins=*",
)


class CDPError(RuntimeError):
    pass


class JSError(CDPError):
    """A script evaluated in the page threw (or its promise rejected)."""


def find_chromium() -> str | None:
    """PARALLAX_CHROMIUM, else the first Chromium/Chrome on PATH (or /usr/bin)."""
    explicit = os.environ.get("PARALLAX_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in CANDIDATES:
        found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None)
        if found:
            return found
    return None


@dataclass
class ConsoleEntry:
    """One console message, uncaught exception or browser log entry, with the script URL it came from."""

    kind: str  # "console", "exception" or "log"
    level: str  # "error", "warning", "log", ...
    text: str
    url: str = ""
    stack_urls: list[str] = field(default_factory=list)

    def mentions(self, fragment: str) -> bool:
        return fragment in self.url or any(fragment in u for u in self.stack_urls) or fragment in self.text

    def __str__(self) -> str:
        where = self.url or (self.stack_urls[0] if self.stack_urls else "")
        return f"[{self.kind} {self.level}] {self.text}" + (f"  ({where})" if where else "")


class Connection:
    """One DevTools WebSocket: numbered commands, events queued while waiting for a reply."""

    def __init__(self, ws_url: str, timeout: float = 30.0):
        import websocket  # websocket-client

        # Chromium refuses DevTools connections that send an Origin it was not told to allow.
        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self.ws_url = ws_url
        self._next_id = 0
        self.events: list[dict] = []
        self.listeners: list[Callable[[dict], None]] = []

    def send(self, method: str, params: dict | None = None, timeout: float = 60.0) -> dict:
        import websocket

        self._next_id += 1
        msg_id = self._next_id
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CDPError(f"{method}: no answer within {timeout:.0f}s")
            self.ws.settimeout(left)
            try:
                raw = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                raise CDPError(f"{method}: no answer within {timeout:.0f}s") from None
            msg = json.loads(raw)
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise CDPError(f"{method}: {msg['error'].get('message')} {msg['error'].get('data', '')}".strip())
                return msg.get("result", {})
            if "method" in msg:
                self._dispatch(msg)

    def pump(self, seconds: float = 0.05) -> None:
        """Read the events that arrive within ``seconds`` (nothing is sent)."""
        import websocket

        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.ws.settimeout(left)
            try:
                msg = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                return
            if "method" in msg:
                self._dispatch(msg)

    def _dispatch(self, msg: dict) -> None:
        self.events.append(msg)
        for listener in self.listeners:
            listener(msg)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()


def _stack_urls(stack: dict | None) -> list[str]:
    return [frame.get("url", "") for frame in (stack or {}).get("callFrames", []) if frame.get("url")]


def _remote_text(arg: dict) -> str:
    if "value" in arg:
        return str(arg["value"])
    return str(arg.get("description") or arg.get("unserializableValue") or arg.get("type", ""))


class Page:
    """A page target: navigation, script evaluation, polling, console capture and screenshots."""

    def __init__(self, conn: Connection, target_id: str):
        self.conn = conn
        self.target_id = target_id
        self.console: list[ConsoleEntry] = []
        conn.listeners.append(self._on_event)
        for domain in ("Page", "Runtime", "Log"):
            conn.send(f"{domain}.enable")

    def _on_event(self, msg: dict) -> None:
        method, params = msg["method"], msg.get("params", {})
        if method == "Runtime.consoleAPICalled":
            urls = _stack_urls(params.get("stackTrace"))
            self.console.append(ConsoleEntry("console", params.get("type", "log"),
                                             " ".join(_remote_text(a) for a in params.get("args", [])),
                                             urls[0] if urls else "", urls))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = (details.get("exception") or {}).get("description") or details.get("text", "exception")
            urls = _stack_urls(details.get("stackTrace"))
            self.console.append(ConsoleEntry("exception", "error", text, details.get("url", ""), urls))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            self.console.append(ConsoleEntry("log", entry.get("level", ""), entry.get("text", ""),
                                             entry.get("url", ""), _stack_urls(entry.get("stackTrace"))))

    def errors(self, fragment: str | None = None) -> list[ConsoleEntry]:
        """Console errors and uncaught exceptions so far, optionally only those mentioning ``fragment``."""
        self.conn.pump()
        return [e for e in self.console if e.level == "error" and (fragment is None or e.mentions(fragment))]

    def navigate(self, url: str, timeout: float = 120.0) -> None:
        self.conn.send("Page.navigate", {"url": url}, timeout=timeout)
        self.wait_for("document.readyState === 'complete'", timeout=timeout, what=f"{url} to load")

    def evaluate(self, expression: str, timeout: float = 60.0) -> Any:
        """The expression's value (JSON-serialisable); promises are awaited. JSError if it throws."""
        result = self.conn.send("Runtime.evaluate", {
            "expression": expression, "awaitPromise": True, "returnByValue": True, "userGesture": True,
            "timeout": int(timeout * 1000),
        }, timeout=timeout + 10)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = (details.get("exception") or {}).get("description") or details.get("text", "")
            raise JSError(f"{text}\n  in: {expression[:300]}")
        return result.get("result", {}).get("value")

    def call(self, function: str, *args: Any, timeout: float = 60.0) -> Any:
        """``(function)(...args)`` with JSON arguments, e.g. ``page.call("(n) => n + 1", 2)``."""
        return self.evaluate(f"({function})(...{json.dumps(list(args))})", timeout=timeout)

    def wait_for(self, expression: str, timeout: float = 60.0, interval: float = 0.25, what: str = "") -> Any:
        """Poll ``expression`` until it is truthy; its value. Script errors count as not yet (the page may be
        mid-load); the last one is in the timeout message."""
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            try:
                value = self.evaluate(expression, timeout=max(5.0, min(30.0, deadline - time.monotonic())))
                if value:
                    return value
            except JSError as err:
                last_error = str(err).splitlines()[0]
            if time.monotonic() > deadline:
                raise CDPError(f"timed out after {timeout:.0f}s waiting for {what or expression}"
                               + (f" (last error: {last_error})" if last_error else ""))
            self.conn.pump(interval)

    def screenshot(self, path: Path, timeout: float = 60.0) -> Path:
        data = self.conn.send("Page.captureScreenshot", {"format": "png"}, timeout=timeout)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def set_viewport(self, width: int, height: int) -> None:
        self.conn.send("Emulation.setDeviceMetricsOverride",
                       {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})


class Browser:
    """A headless Chromium process with its own throw-away profile."""

    def __init__(self, proc: subprocess.Popen, profile: Path, port: int, browser_path: str):
        self.proc = proc
        self.profile = profile
        self.port = port
        self.conn = Connection(f"ws://127.0.0.1:{port}{browser_path}")
        self.pages: list[Page] = []

    @classmethod
    def launch(cls, executable: str | None = None, width: int = 1600, height: int = 1000,
               timeout: float = 60.0, extra_args: list[str] | None = None) -> Browser:
        executable = executable or find_chromium()
        if executable is None:
            raise CDPError("no Chromium found (install it with `apt-get install -y chromium`, or set PARALLAX_CHROMIUM)")
        profile = Path(tempfile.mkdtemp(prefix="parallax-chromium-"))
        args = [executable, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                *(extra_args or []), "about:blank"]
        logf = open(profile.parent / f"{profile.name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while True:
            if port_file.is_file():
                lines = port_file.read_text().split()
                if len(lines) >= 2:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = Browser._log_tail(profile)
                _kill(proc)
                shutil.rmtree(profile, ignore_errors=True)
                raise CDPError(f"Chromium did not open its debugging port within {timeout:.0f}s "
                               f"(exit {proc.returncode}):\n{tail}")
            time.sleep(0.1)
        try:
            return cls(proc, profile, int(lines[0]), lines[1])
        except Exception:
            _kill(proc)
            shutil.rmtree(profile, ignore_errors=True)
            raise

    @staticmethod
    def _log_tail(profile: Path, lines: int = 30) -> str:
        try:
            text = (profile.parent / f"{profile.name}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def new_page(self, width: int = 1600, height: int = 1000) -> Page:
        target_id = self.conn.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        page = Page(Connection(f"ws://127.0.0.1:{self.port}/devtools/page/{target_id}"), target_id)
        page.set_viewport(width, height)
        self.pages.append(page)
        return page

    def close(self) -> None:
        for page in self.pages:
            page.conn.close()
        with contextlib.suppress(Exception):
            self.conn.send("Browser.close", timeout=10)
        self.conn.close()
        _kill(self.proc)
        shutil.rmtree(self.profile, ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.profile.parent / f"{self.profile.name}.log").unlink()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _kill(proc: subprocess.Popen) -> None:
    """Chromium's renderer and GPU processes share its process group (started in a new session)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # leftover children of an exited browser
