"""The receiver's side of transport feedback (Config.feedback): the video's RTP packets as they arrive, summed up for
the sender every FEEDBACK_S in an RTCP application-layer message (protocol/feedback.py; sender/bwe.py reads it).

aiortc's receiver tells a sender about the link only through receiver reports (every 0.5-1.5 s: loss, and the RTT
through both event loops) and REMB, its own verdict on the delay. libwebrtc's senders get transport-wide feedback
instead, each packet's arrival time within ~100 ms, and see a queue building before it overflows. vsae's receiver
is vsae's, so it says what a sender needs directly, for each span of arrivals:

- the packets and bytes that arrived and the time they took: while a queue stands at the bottleneck, that is the
  link's rate, measured by the receiver's clock;
- the queue they waited in: each packet's one-way delay (its abs-send-time, stamped by aiortc's sender, against the
  receiver's clock) above the least seen in the call. The two clocks' offset cancels; the least of a span's packets
  is taken, so one packet held by this side's busy event loop is not a queue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from protocol.feedback import RTP_HEADER, SEQ_MODULO, Feedback

# A feedback this often while packets arrive: a queue that forms when a link narrows shows within about this
# (plus the return path), against 0.5-1.5 s for a receiver report. At a narrow link's 7.5-15 packets a second each
# covers 1-3 packets; each costs the return path ~80 bytes (SRTCP), and nothing on the forward path.
FEEDBACK_S = 0.2
# abs-send-time (RFC draft, as aiortc writes it): 24 bits, 6.18 fixed-point seconds, wrapping every 64 s.
ABS_SEND_TIME_UNIT = 1 / (1 << 18)
ABS_SEND_TIME_WRAP_S = 64.0
# The least one-way delay seen may rise this much per second (a longer route is not a queue forever; as the RTT's
# low in sender/bwe.py). Clock drift between the two ends is a few ppm, far under this.
BASE_DRIFT = 0.002


def send_time_s(abs_send_time: int) -> float:
    """A packet's abs-send-time in seconds (modulo ABS_SEND_TIME_WRAP_S)."""
    return (abs_send_time & 0xFFFFFF) * ABS_SEND_TIME_UNIT


@dataclass
class _Span:
    packets: int = 0
    bytes: int = 0
    last_at: float | None = None  # arrival of the last packet counted
    least_delay: float = math.inf  # the least relative one-way delay among them


class ArrivalFeedback:
    """Arrivals of the video's packets; `due(now)` returns the feedback for those since the last one, when it is
    time and any came."""

    def __init__(self, interval_s: float = FEEDBACK_S) -> None:
        self.interval_s = interval_s
        self.sent = 0
        self._span = _Span()
        self._previous_last: float | None = None  # the last arrival the previous feedback counted
        self._sent_at = -math.inf
        self._reference: float | None = None  # the first packet's (arrival - send), unwrapped around it
        self._base: float | None = None  # the least relative one-way delay seen
        self._base_at = 0.0

    def on_packet(self, now: float, payload_bytes: int, abs_send_time: int | None) -> None:
        """One RTP packet of the video arrived at `now` (seconds, the receiver's monotonic clock)."""
        size = payload_bytes + RTP_HEADER
        if self._previous_last is None:
            # The very first packet starts the first span: its own bytes arrived before any time was measured.
            self._previous_last = now
            size = 0
        else:
            self._span.packets += 1
        self._span.bytes += size
        self._span.last_at = now
        if abs_send_time is not None:
            self._span.least_delay = min(self._span.least_delay, self._relative_delay(now, send_time_s(abs_send_time)))

    def due(self, now: float) -> Feedback | None:
        """The feedback for the packets since the last one, once `interval_s` has passed and packets arrived."""
        span = self._span
        if now - self._sent_at < self.interval_s or not span.packets or span.last_at is None:
            return None
        queue = 0.0
        if math.isfinite(span.least_delay):
            if self._base is None or span.least_delay < self._base:
                self._base = span.least_delay
            else:  # forget the low slowly: a route that got longer
                self._base = min(span.least_delay, self._base + BASE_DRIFT * (now - self._base_at))
            self._base_at = now
            queue = span.least_delay - self._base
        feedback = Feedback(seq=self.sent % SEQ_MODULO, packets=span.packets, bytes=span.bytes,
                            span_us=round((span.last_at - self._previous_last) * 1e6), queue_us=round(queue * 1e6))
        self.sent += 1
        self._sent_at = now
        self._previous_last = span.last_at
        self._span = _Span()
        return feedback

    def _relative_delay(self, arrival: float, sent: float) -> float:
        """arrival - sent, relative to the first packet's, unwrapped to within half the abs-send-time's wrap of it."""
        offset = arrival - sent
        if self._reference is None:
            self._reference = offset
        half = ABS_SEND_TIME_WRAP_S / 2
        return (offset - self._reference + half) % ABS_SEND_TIME_WRAP_S - half
