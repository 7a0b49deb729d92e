"""`vsae recv --samples FILE.jsonl`: one JSON line every SAMPLE_INTERVAL_S while a session streams.

Each line: elapsed seconds since the stream started (the receiver's model ack), the receiver's current
resident memory, output frames so far and the output rate over the last interval, frames received,
concealed and dropped from the backlog. `vsae bench soak` turns these into its memory / stall verdict.

A thread rather than an event-loop task: a sample is still written when the event loop is blocked, so
a stalled receiver shows up as an interval with no output instead of as a missing line.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Callable

from codec.memory import rss_mb

# Seconds between samples (the 10 s). Read when a Sampler is made, so tests may patch it.
SAMPLE_INTERVAL_S = 10.0


class Sampler:
    """Writes one sample line to `path` every `interval` seconds from `start()` until `stop()`.

    `counters()` returns the session's running counts (frames_out, frames_received, frames_concealed,
    frames_dropped_backlog); it is called from the sampler's thread, so it must only read plain values.
    The file is truncated at start and flushed after each line (a run killed midway keeps its samples).
    """

    def __init__(self, path: str | Path, counters: Callable[[], dict], interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic, memory: Callable[[], float] = rss_mb):
        self.path = Path(path)
        self.counters = counters
        self.interval = SAMPLE_INTERVAL_S if interval is None else interval
        if not self.interval > 0:
            raise ValueError(f"sample interval must be positive, got {self.interval}")
        self.clock, self.memory = clock, memory
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._last_t = 0.0
        self._last_out = 0

    def start(self) -> "Sampler":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w")
        self._t0 = self._last_t = self.clock()
        self._last_out = int(self.counters().get("frames_out", 0))
        self._thread = threading.Thread(target=self._run, name="vsae-sampler", daemon=True)
        self._thread.start()
        return self

    def sample(self) -> dict:
        """Take one sample now (the thread calls this each interval) and append it to the file."""
        now, counts = self.clock(), self.counters()
        out = int(counts.get("frames_out", 0))
        span = now - self._last_t
        line = {
            "t": round(now - self._t0, 3),
            "rss_mb": round(self.memory(), 2),
            "frames_out": out,
            "fps_out": round((out - self._last_out) / span, 3) if span > 0 else None,
            "frames_received": int(counts.get("frames_received", 0)),
            "frames_concealed": int(counts.get("frames_concealed", 0)),
            "frames_dropped_backlog": int(counts.get("frames_dropped_backlog", 0)),
        }
        self._last_t, self._last_out = now, out
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()
        self.samples += 1
        return line

    def _run(self) -> None:
        # Deadlines on a fixed grid (t0 + k * interval): a slow sample does not shift the ones after it.
        k = 1
        try:
            while not self._stop.wait(max(0.0, self._t0 + k * self.interval - self.clock())):
                self.sample()
                k = max(k + 1, int((self.clock() - self._t0) / self.interval) + 1)
        finally:
            self._file.close()

    def stop(self) -> None:
        """Stop sampling (no partial last interval is written; the thread closes the file); idempotent."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)


def worker_counters(worker) -> Callable[[], dict]:
    """The sampler's view of a receiver's ReconstructWorker (plain attribute reads, thread-safe enough)."""

    def counters() -> dict:
        return {
            "frames_out": worker.frames_out,
            "frames_received": worker.frames_received,
            "frames_concealed": worker.frames_concealed,
            "frames_dropped_backlog": worker.frames_dropped,
            "ladder_rung": worker.ladder.position,
            "ladder_rung_name": worker.ladder.rung.name,
        }

    return counters
