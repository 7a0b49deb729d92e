"""`vsae recv --view HOST:PORT`: a page that shows the call live in any browser.

An aiohttp app: `GET /` serves the page (receiver/view.html, plain HTML and JavaScript, no build step),
`POST /offer` answers the page's WebRTC offer with a new aiortc peer connection that sends two video tracks,
the rebuilt picture and the bicubic baseline, both fed from the receiver's output frames, and `GET /stats`
returns the call's numbers as JSON (kbps, fps, latency, concealed frames, model status, PSNR with a
reference). Each track has latest-frame semantics: a browser that falls behind skips to the newest output
frame, never queues. The page's peer connections use no ICE servers; the answer's host candidate is the
view's address (loopback by default).

The receiver's reconstruction thread calls `LiveView.publish` for every output frame; the frames cross to
the event loop with call_soon_threadsafe and only the newest is kept.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import logging
import socket
import time
from importlib import resources
from typing import Callable

import av
import numpy as np
from aiohttp import web
from aiortc import MediaStreamTrack, RTCSessionDescription

from protocol.peer import new_peer_connection
from protocol.signaling import MAX_OFFER_BYTES

from .viewrate import raise_bitrate

log = logging.getLogger("vsae.view")

# Browsers watching at once (each gets its own peer connection and two encoders: the CPU is the limit).
MAX_VIEWERS = 4
# The tracks' RTP clock (90 kHz for video); frames are stamped with the wall time they were published.
VIDEO_CLOCK = 90_000
# Output fps shown on the page: frames published within this window.
FPS_WINDOW_S = 2.0


class LiveView:
    """The latest rebuilt and bicubic frame of the call, the browsers watching it, and its page."""

    def __init__(self, host: str, port: int, stats: Callable[[], dict] | None = None):
        self.host, self.port = host, port
        self.stats_source = stats  # the receiver's live numbers (Receiver.live_stats)
        self.frames: dict[str, np.ndarray | None] = {"rebuilt": None, "bicubic": None}
        self.index = -1  # source index of the newest frame
        self.version = 0  # frames published so far
        self.publish_times: collections.deque = collections.deque(maxlen=256)
        self.peers: set = set()
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._t0 = time.time()
        self._bytes_seen: tuple[float, int] | None = None

    # -- from the reconstruction thread ---------------------------------------------------------------
    def publish(self, index: int, rebuilt: np.ndarray, bicubic: np.ndarray | None) -> None:
        """An output frame (uint8 H x W x 3) and its bicubic baseline; thread-safe, never blocks."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._publish, index, rebuilt, bicubic)

    def _publish(self, index: int, rebuilt: np.ndarray, bicubic: np.ndarray | None) -> None:
        self.frames = {"rebuilt": rebuilt, "bicubic": bicubic if bicubic is not None else rebuilt}
        self.index, self.version = index, self.version + 1
        self.publish_times.append(time.monotonic())
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def next_frame(self, seen: int) -> tuple[int, dict]:
        """Wait for a frame newer than version `seen`; returns (version, frames)."""
        while self.version == seen:
            await self._changed.wait()
        return self.version, self.frames

    # -- the server -------------------------------------------------------------------------------------
    async def start(self) -> int:
        """Serve the page; returns the bound port."""
        raise_bitrate()
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        app = web.Application(client_max_size=MAX_OFFER_BYTES)
        app.router.add_get("/", self._page)
        app.router.add_post("/offer", self._offer)
        app.router.add_get("/stats", self._stats)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        # Bind the socket here so port 0 (any free port) reports the port actually bound.
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            await self._runner.cleanup()
            raise ConnectionError(f"--view: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from None
        await web.SockSite(self._runner, sock).start()
        self.port = sock.getsockname()[1]
        return self.port

    async def stop(self) -> None:
        for pc in list(self.peers):
            await pc.close()
        self.peers.clear()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _page(self, request: web.Request) -> web.Response:
        html = resources.files("receiver").joinpath("view.html").read_text(encoding="utf-8")
        return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})

    async def _offer(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict) or body.get("type") != "offer" or not isinstance(body.get("sdp"), str):
                raise ValueError("expected {'sdp': str, 'type': 'offer'}")
        except ValueError as exc:
            return web.json_response({"error": f"bad offer: {exc}"}, status=400)
        if len(self.peers) >= MAX_VIEWERS:
            return web.json_response({"error": f"{MAX_VIEWERS} viewers already watch"}, status=409)
        pc = new_peer_connection(self.host)
        self.peers.add(pc)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self.peers.discard(pc)
                await pc.close()

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="offer"))
            for which in ("rebuilt", "bicubic"):
                pc.addTrack(LatestFrameTrack(self, which))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # a broken offer must not take the view down
            self.peers.discard(pc)
            await pc.close()
            return web.json_response({"error": f"cannot answer: {exc}"}, status=400)
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})

    async def _stats(self, request: web.Request) -> web.Response:
        stats = dict(self.stats_source() if self.stats_source else {})
        now = time.monotonic()
        recent = [t for t in self.publish_times if now - t <= FPS_WINDOW_S]
        stats["fps"] = round((len(recent) - 1) / (recent[-1] - recent[0]), 2) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
        stats["frame_index"] = self.index
        stats["frames_published"] = self.version
        stats["viewers"] = len(self.peers)
        # The video bitrate received from the sender, over the time since the last poll.
        received = stats.pop("video_bytes_received", None)
        if received is not None:
            if self._bytes_seen is not None and now > self._bytes_seen[0]:
                stats["kbps"] = round((received - self._bytes_seen[1]) * 8 / (now - self._bytes_seen[0]) / 1000, 2)
            self._bytes_seen = (now, received)
        return web.json_response(stats, headers={"Cache-Control": "no-store"})


class LatestFrameTrack(MediaStreamTrack):
    """One of the view's video tracks: each recv() returns the newest output frame not yet sent (older ones
    that came meanwhile are skipped), stamped with the wall time it was published."""

    kind = "video"

    def __init__(self, view: LiveView, which: str):
        super().__init__()
        self.view, self.which = view, which
        self._seen = 0

    async def recv(self) -> av.VideoFrame:
        self._seen, frames = await self.view.next_frame(self._seen)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[self.which]), format="rgb24")
        frame.pts = int((time.time() - self.view._t0) * VIDEO_CLOCK)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return frame
