"""Frame identity on the video track: a documented RTP-timestamp mapping.

The sender stamps source frame i with RTP timestamp (i + 1) * ticks on the 90 kHz video clock,
ticks = round(90000 / fps). aiortc's receiver hands frames out with `pts` relative to the first frame
it got (its timestamp origin), so the absolute stamp is lost there. To recover it, the sender first
sends SYNC_FRAMES tiny frames stamped 1, 2, ..., SYNC_FRAMES, less than one tick apart. If the
receiver's origin is sync frame r, every real frame arrives with pts = (i + 1) * ticks - r, so
r = (-pts) mod ticks and i = (pts + r) / ticks - 1. Only the loss of every sync frame leaves the
origin unknown; the mapper then assumes the origin was source frame 0 and says so.
"""

from __future__ import annotations

from fractions import Fraction

CLOCK_RATE = 90_000
TIME_BASE = Fraction(1, CLOCK_RATE)
SYNC_FRAMES = 5
# Sync frames are spaced in wall time so that one burst of loss cannot take them all.
SYNC_INTERVAL_S = 0.02


def ticks_per_frame(fps: float) -> int:
    return max(SYNC_FRAMES * 4, round(CLOCK_RATE / fps))


def frame_pts(index: int, ticks: int) -> int:
    """RTP timestamp (relative to the sender's random origin) of source frame `index`."""
    return (index + 1) * ticks


def sync_pts(k: int) -> int:
    """RTP timestamp of sync frame k (0-based)."""
    return k + 1


class IndexMapper:
    """Receiver side: aiortc's origin-relative pts -> source frame index (None for sync frames)."""

    def __init__(self, ticks: int):
        self.ticks = ticks
        self.origin: int | None = None  # the absolute stamp of the receiver's origin frame, once known
        self.anchored = True

    def index(self, pts: int) -> int | None:
        if pts < self.ticks // 2:
            return None  # a sync frame (real frames are at least ticks - SYNC_FRAMES after any origin)
        offset = (-pts) % self.ticks
        if self.origin is None:
            if 1 <= offset <= SYNC_FRAMES:
                self.origin = offset
            else:  # every sync frame was lost: the origin was a real frame, assume source frame 0
                self.origin, self.anchored = frame_pts(0, self.ticks), False
        return (pts + self.origin) // self.ticks - 1
