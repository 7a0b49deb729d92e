"""Live video sources (a camera, a network stream, a screen grab, FFmpeg's lavfi test sources) through PyAV.

`LiveCapture` opens whatever FFmpeg can (`av.open(url, format=..., options=...)`) and decodes it on its own
thread at the source's rate, scaling each frame to the model's size. The consumer (the sender's video
track) takes the newest frames from a bounded queue: when it cannot keep up, the OLDEST waiting frame is
dropped and counted, so a slow encoder or closed loop never builds a growing delay behind the camera.

Sources that are not paced by the world (lavfi generators, files) decode as fast as the CPU allows, so the
capture thread holds each frame until its timestamp is due (as `ffmpeg -re` does): every source then
delivers frames at its own nominal rate. A real camera blocks in read and is never held back.

`capture_stamp` / `read_stamp` draw and read a binary block code of the capture time (wall-clock ms)
in a frame's top-left corner: the live view's page reads it back from the displayed picture to measure
capture-to-display latency (bench/liveview.py).
"""

from __future__ import annotations

import collections
import threading
import time

import av
import numpy as np

from .errors import VsaeError

# At most this many captured frames wait for the consumer; a new frame then pushes out the oldest. Two, not
# one: the consumer takes a frame while the next is being decoded, so one slot would drop frames on jitter
# alone; more would only add latency (each waiting frame is one frame period of delay).
CAPTURE_QUEUE = 2
# How long `open` waits for the first decoded frame (an RTSP/UDP source may take a while to send a keyframe).
FIRST_FRAME_TIMEOUT_S = 20.0
# Accepted nominal rates; outside this the source's rate is unusable (give --fps).
MIN_FPS, MAX_FPS = 0.1, 1000.0

# The capture-time stamp: STAMP_BITS bits of wall-clock time in STAMP_MS units (mod 2**STAMP_BITS * STAMP_MS
# = 16.4 s: far longer than any latency worth measuring), each bit a square black or white block as large as
# the frame's width allows (up to STAMP_MAX_BLOCK px: it must survive ÷S downscaling and a low-bitrate codec),
# with a second row holding the complement so that a reader can tell a clean code from a blend (the
# in-between frames of a temporal rebuild mix two codes).
STAMP_BITS = 12
STAMP_MS = 4
STAMP_MAX_BLOCK = 32


def parse_options(items: list[str] | None) -> dict[str, str]:
    """`K=V` strings (--input-option) as a dict; a malformed one is a VsaeError."""
    options = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise VsaeError(f"--input-option {item!r}: expected KEY=VALUE, e.g. framerate=30")
        options[key] = value
    return options


def open_source(url: str, fmt: str | None = None, options: dict[str, str] | None = None):
    """The container and its first video stream; a VsaeError naming the source when FFmpeg cannot open it."""
    # FFmpeg lists some formats under several names ("video4linux2,v4l2").
    if fmt is not None and fmt not in {name for entry in av.formats_available for name in entry.split(",")}:
        raise VsaeError(f"unknown --input-format {fmt!r} (this FFmpeg has no such input format)")
    try:
        container = av.open(url, format=fmt, options=dict(options or {}), timeout=FIRST_FRAME_TIMEOUT_S)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VsaeError(f"cannot open --input {url!r}{f' (format {fmt})' if fmt else ''}: {exc}") from None
    if not container.streams.video:
        container.close()
        raise VsaeError(f"--input {url!r} has no video stream")
    return container, container.streams.video[0]


def _nominal_fps(stream) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        try:
            value = float(rate) if rate else None
        except (TypeError, ZeroDivisionError):
            value = None
        if value and MIN_FPS <= value <= MAX_FPS:
            return value
    return None


class LiveCapture:
    """A live source decoded on its own thread into a drop-oldest queue of RGB frames at `size` (W, H).

    `get(timeout)` returns (sequence number, capture wall time, rgb uint8 (H, W, 3)) of the oldest waiting
    frame, or None at the source's end. Sequence numbers count every frame the source delivered, so
    the ones dropped here show as gaps. `stamp`: draw the capture-time code (capture_stamp) into each frame."""

    def __init__(self, url: str, fmt: str | None = None, options: dict[str, str] | None = None,
                 size: tuple[int, int] | None = None, fps: float | None = None, stamp: bool = False,
                 realtime: bool = True):
        self.url = url
        self.container, self.stream = open_source(url, fmt, options)
        self.stream.thread_type = "AUTO"
        self.fps = fps or _nominal_fps(self.stream)
        if self.fps is None:
            self.container.close()
            raise VsaeError(f"--input {url!r} gives no usable frame rate: set one with --fps")
        self.size = size or (self.stream.codec_context.width, self.stream.codec_context.height)
        self.stamp, self.realtime = stamp, realtime
        self.captured = 0  # frames the source delivered
        self.dropped = 0  # of those, pushed out of the queue before the consumer took them
        self.error: BaseException | None = None
        self.ended = False
        self._queue: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self.started_at: float | None = None
        self._thread = threading.Thread(target=self._run, name="vsae-capture", daemon=True)
        self._thread.start()

    def _frames(self):
        for packet in self.container.demux(self.stream):
            for frame in packet.decode():
                yield frame
            if self._stop.is_set():
                return

    def _run(self) -> None:
        t0 = pts0 = None
        try:
            for frame in self._frames():
                if self._stop.is_set():
                    break
                if self.realtime:
                    pts = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else self.captured / self.fps
                    if t0 is None:
                        t0, pts0 = time.monotonic(), pts
                    delay = t0 + (pts - pts0) - time.monotonic()
                    if delay > 0 and self._stop.wait(min(delay, 1.0)):
                        break
                rgb = frame.to_ndarray(format="rgb24", width=self.size[0], height=self.size[1])
                now = time.time()
                if self.stamp:
                    capture_stamp(rgb, now)
                with self._cond:
                    self.started_at = self.started_at or now
                    if len(self._queue) >= CAPTURE_QUEUE:
                        self._queue.popleft()
                        self.dropped += 1
                    self._queue.append((self.captured, now, rgb))
                    self.captured += 1
                    self._cond.notify_all()
        except BaseException as exc:  # reported to the consumer; the thread must not die silently
            self.error = exc
        finally:
            with self._cond:
                self.ended = True
                self._cond.notify_all()

    def get(self, timeout: float | None = None):
        """The oldest waiting frame; None once the source has ended and the queue is empty. Raises VsaeError
        if the source failed, TimeoutError if nothing came within `timeout` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._queue or self.ended, timeout):
                raise TimeoutError(f"no frame from {self.url!r} within {timeout:g} s")
            if self._queue:
                return self._queue.popleft()
        if self.error is not None:
            raise VsaeError(f"live source {self.url!r} failed: {type(self.error).__name__}: {self.error}")
        return None

    def stats(self) -> dict:
        elapsed = time.time() - self.started_at if self.started_at else 0.0
        return {"captured": self.captured, "dropped": self.dropped,
                "capture_fps": round(self.captured / elapsed, 2) if elapsed > 0 else None, "source_fps": self.fps}

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._queue.clear()
            self._cond.notify_all()
        self._thread.join(5.0)
        if not self._thread.is_alive():
            self.container.close()


def record(url: str, seconds: float, fmt: str | None = None, options: dict[str, str] | None = None,
           size: tuple[int, int] | None = None) -> tuple[np.ndarray, float]:
    """`seconds` of a live source as uint8 frames (N, H, W, 3) and its frame rate (`vsae fit --input`).
    Frames pile up in memory only for these N seconds; one the consumer was too slow to take is dropped, as in
    a call (the recording is a sample of the footage, not an archive)."""
    capture = LiveCapture(url, fmt, options, size)
    frames = []
    try:
        count = max(1, round(seconds * capture.fps))
        while len(frames) < count:
            item = capture.get(FIRST_FRAME_TIMEOUT_S)
            if item is None:
                break
            frames.append(item[2])
    finally:
        capture.close()
    if not frames:
        raise VsaeError(f"--input {url!r} delivered no frame")
    return np.stack(frames), capture.fps


def stamp_block(width: int) -> int:
    """The side of one stamp block in a frame `width` px wide (the page computes the same)."""
    return min(STAMP_MAX_BLOCK, width // STAMP_BITS)


def stamp_code(wall_time: float) -> int:
    return int(wall_time * 1000 / STAMP_MS) % (1 << STAMP_BITS)


def stamp_age_ms(code: int, now: float) -> float:
    """How long ago (ms) a stamp `code` was drawn, read at wall time `now` (modular, within the 16 s range)."""
    return ((stamp_code(now) - code) % (1 << STAMP_BITS)) * STAMP_MS


def capture_stamp(rgb: np.ndarray, wall_time: float) -> None:
    """Draw `wall_time` (STAMP_MS units, mod 2**STAMP_BITS) as black/white blocks in rgb's top-left corner, in
    place: row 0 the bits (most significant first), row 1 their complement."""
    code = stamp_code(wall_time)
    b = stamp_block(rgb.shape[1])
    if b < 8 or rgb.shape[0] < 2 * b:
        raise VsaeError(f"a {rgb.shape[1]}x{rgb.shape[0]} frame is too small for the capture stamp")
    for k in range(STAMP_BITS):
        bit = (code >> (STAMP_BITS - 1 - k)) & 1
        rgb[0:b, k * b:(k + 1) * b] = 255 * bit
        rgb[b:2 * b, k * b:(k + 1) * b] = 255 * (1 - bit)


def read_stamp(rgb: np.ndarray) -> int | None:
    """The code capture_stamp drew, or None when a block is unclear or a bit and its complement agree."""
    b = stamp_block(rgb.shape[1])
    code = 0
    for k in range(STAMP_BITS):
        m = b // 4  # the block's centre: its edges blur in a down- and up-scaled picture
        top = rgb[m:b - m, k * b + m:(k + 1) * b - m].mean()
        bottom = rgb[b + m:2 * b - m, k * b + m:(k + 1) * b - m].mean()
        if abs(top - bottom) < 96:
            return None
        code = code << 1 | int(top > bottom)
    return code
