"""A headless Chromium driven over the DevTools protocol (a websocket, aiohttp's client): the live view's
tests and bench open the page in a real browser and read what it decoded and displayed.

No Playwright and no downloaded browser: the system's `chromium` (Debian's package; `.ci/run` installs it),
started with flags that keep it off the network (no background networking, no component updates, no
first-run fetches) and that let WebRTC use the loopback interface, which Chromium leaves out by default.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--mute-audio",
    # Off the network: nothing but the page's own loopback traffic.
    "--disable-background-networking", "--disable-component-update", "--no-first-run", "--no-default-browser-check",
    "--disable-sync", "--disable-default-apps", "--disable-extensions", "--metrics-recording-only",
    # WebRTC on loopback: Chromium gathers no loopback candidates and hides host addresses behind mDNS names
    # unless told otherwise.
    "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
    # Keep the page's video running at full rate while nobody looks at the (headless) window.
    "--disable-background-timer-throttling", "--disable-renderer-backgrounding", "--disable-backgrounding-occluded-windows",
)
START_TIMEOUT_S = 30.0
# A page's load (its scripts run) on a busy 2-core machine; Target.createTarget returns before it.
LOAD_TIMEOUT_S = 30.0


def find_chromium() -> str | None:
    """The browser to use: $VSAE_CHROMIUM, else the first of CANDIDATES on PATH."""
    if os.environ.get("VSAE_CHROMIUM"):
        return os.environ["VSAE_CHROMIUM"]
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    pass


class Chromium:
    """`async with Chromium() as browser: page = await browser.open(url)`."""

    def __init__(self, executable: str | None = None, window: tuple[int, int] = (1200, 760)):
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise BrowserError("no Chromium found (apt-get install chromium, or set VSAE_CHROMIUM)")
        self.window = window
        self.process: subprocess.Popen | None = None
        self._profile = tempfile.TemporaryDirectory(prefix="vsae-chromium-")
        self._http: aiohttp.ClientSession | None = None
        self.port: int | None = None

    async def __aenter__(self) -> "Chromium":
        profile = Path(self._profile.name)
        self.process = subprocess.Popen(
            [self.executable, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", f"--window-size={self.window[0]},{self.window[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        port_file = profile / "DevToolsActivePort"
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.process.poll() is not None:
                raise BrowserError(f"{self.executable} exited with status {self.process.returncode}")
            if time.monotonic() > deadline:
                raise BrowserError(f"{self.executable} did not open its DevTools port within {START_TIMEOUT_S:g} s")
            await asyncio.sleep(0.1)
        self.port = int(port_file.read_text().split()[0])
        self._http = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc) -> None:
        if self._http is not None:
            await self._http.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._profile.cleanup()

    async def open(self, url: str, ready: str = "true") -> "Page":
        """A new tab showing `url`, once it has loaded and the JavaScript expression `ready` is true."""
        async with self._http.put(f"http://127.0.0.1:{self.port}/json/new?{url}") as response:
            target = await response.json(content_type=None)
        page = Page(await self._http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=64 << 20))
        await page.call("Page.enable")
        await page.call("Runtime.enable")
        await page.wait_for(f"document.readyState === 'complete' && location.href !== 'about:blank' && ({ready})",
                            LOAD_TIMEOUT_S, f"{url} did not load")
        return page


class Page:
    """One tab's DevTools session."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws = ws
        self._ids = itertools.count(1)
        self.console: list[str] = []

    async def call(self, method: str, **params) -> dict:
        ident = next(self._ids)
        await self.ws.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = await self.ws.receive()
            if message.type != aiohttp.WSMsgType.TEXT:
                raise BrowserError(f"DevTools connection closed ({message.type.name}) during {method}")
            data = json.loads(message.data)
            if data.get("method") == "Runtime.consoleAPICalled":
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in data["params"]["args"]))
            if data.get("id") == ident:
                if "error" in data:
                    raise BrowserError(f"{method}: {data['error'].get('message')}")
                return data.get("result", {})

    async def evaluate(self, expression: str):
        """The JSON value of a JavaScript expression (promises awaited)."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"page script failed: {result['exceptionDetails'].get('text')} "
                               f"{result['exceptionDetails'].get('exception', {}).get('description', '')}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float, what: str) -> None:
        """Poll until the JavaScript expression is true; BrowserError with the page's state after `timeout` s."""
        deadline = time.monotonic() + timeout
        while not await self.evaluate(f"!!({expression})"):
            if time.monotonic() > deadline:
                state = await self.evaluate("({href: location.href, readyState: document.readyState, "
                                            "title: document.title})")
                raise BrowserError(f"{what} within {timeout:g} s (page: {state}, console: {self.console[-5:]})")
            await asyncio.sleep(0.1)

    async def screenshot(self) -> bytes:
        """The page as PNG bytes."""
        return base64.b64decode((await self.call("Page.captureScreenshot", format="png"))["data"])

    async def close(self) -> None:
        await self.ws.close()
