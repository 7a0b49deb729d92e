"""Which NACKed packets the sender retransmits: a budget inside the video target, and no resend within an RTT.

aiortc retransmits every sequence number of every NACK at once, unpaced, however often it is asked. On a
narrow link that is what turns one lost keyframe into a stall: the receiver repeats its NACK before the
first retransmission could have arrived (vsae's jitter buffer repeats it every 0.25 s; the queue of a
15 kbps link alone holds 0.3 s), each repeat brings the same packets again, back to back, and the burst
overflows the queue and takes the next fresh frames with it (seen packet by packet in the fault lab's
15 kbps cap: three copies of each lost packet, sent in bursts of up to eight, nearly all dropped).
libwebrtc does the same two things: it resends a packet at most once per RTT, and its pacer spends a
bounded share of the estimate on retransmissions.

Pure logic with an injected clock: sender/rtcp.py asks `allow(seq, size)` before each retransmission.
"""

from __future__ import annotations

import time
from typing import Callable

# Retransmissions may use this share of the video target (bytes per second, refilled continuously): room to
# repair random loss of 10 % and more, not enough to double a congested stream.
RTX_SHARE = 0.3
# The bucket holds at most this many seconds of that share (a keyframe's lost tail can go at once, a NACK
# storm cannot). A retransmission needs a positive balance and may take it below zero (one packet of debt).
RTX_BURST_S = 2.0
# A packet is not resent sooner than this after its last resend, nor sooner than one smoothed RTT (before
# that the receiver cannot have seen the first one).
MIN_RESEND_S = 0.1
# After a loss cut (sender/bwe.py: a queue overflowing at the bottleneck) no packet is resent for this long: the
# queue that dropped it is still full until the lower rate has drained it (the fault lab's queue holds 0.3 s), and
# a retransmission sent into it is dropped too and keeps it full (the lab's 60 -> 15 kbps step: six resent
# packets, 3.2 KB, sent 0.1 s after the cut, all dropped, and the drops went on for a second more). The receiver
# asks again 0.25 and 0.5 s after its first NACK (receiver/jitter.py), and no more: the pause must end before the
# last ask (with 0.5 s a run of the lab's 15 kbps cap skipped a resend after a cut and then waited for a keyframe:
# 24 concealed).
PAUSE_AFTER_CUT_S = 0.3
# Sequence numbers remembered for the resend rule (aiortc keeps 128 packets of history).
REMEMBERED = 256


class RetransmissionGate:
    """`target_kbps()` is the video target now, `rtt_s()` the smoothed RTT (None until measured)."""

    def __init__(self, target_kbps: Callable[[], float], rtt_s: Callable[[], float | None],
                 clock: Callable[[], float] = time.monotonic):
        self.target_kbps, self.rtt_s, self.clock = target_kbps, rtt_s, clock
        self.tokens = RTX_SHARE * target_kbps() * 125 * RTX_BURST_S
        self.refilled_at = clock()
        self.resent_at: dict[int, float] = {}
        self.sent = self.skipped_recent = self.skipped_budget = self.skipped_paused = 0
        self.paused_until = -float("inf")
        self.bytes_sent = 0

    def allow(self, seq: int, size: int) -> bool:
        """Whether to retransmit packet `seq` of `size` bytes now (and, if so, charge it)."""
        now = self.clock()
        rate = RTX_SHARE * self.target_kbps() * 125  # bytes per second
        self.tokens = min(rate * RTX_BURST_S, self.tokens + rate * (now - self.refilled_at))
        self.refilled_at = now
        if now < self.paused_until:
            self.skipped_paused += 1
            return False
        last = self.resent_at.get(seq)
        if last is not None and now - last < max(MIN_RESEND_S, self.rtt_s() or 0.0):
            self.skipped_recent += 1
            return False
        if self.tokens <= 0:
            self.skipped_budget += 1
            return False
        self.tokens -= size
        self.resent_at[seq] = now
        if len(self.resent_at) > REMEMBERED:
            del self.resent_at[next(iter(self.resent_at))]  # the oldest (dicts keep insertion order)
        self.sent += 1
        self.bytes_sent += size
        return True

    def pause(self) -> None:
        """The estimate was just cut for loss: resend nothing for PAUSE_AFTER_CUT_S."""
        self.paused_until = self.clock() + PAUSE_AFTER_CUT_S

    def summary(self) -> dict:
        return {"sent": self.sent, "bytes": self.bytes_sent, "skipped_within_rtt": self.skipped_recent,
                "skipped_over_budget": self.skipped_budget, "skipped_after_cut": self.skipped_paused}
