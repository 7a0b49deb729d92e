"""The data channel's background flow (an in-call model transfer), paced inside a share of the link: a token
bucket filled at `share_kbps()`, one message at a time once the channel's buffer is empty. (Live model updates
keep the closed loop's own budget: sender/session.py says why.)

The video and the data channel cross the same bottleneck, and aiortc's SCTP has its own loss-based window with
no coupling to the media: unpaced, a model transfer fills the bottleneck's queue and the video's packets are
the ones dropped. The sender (sender/session.py) sets the share to the bandwidth estimate less the video's
wire cost and a headroom, zero while the estimate says the link is congested. Control messages bypass the
pacer; since it hands SCTP a message only when the channel's buffer is empty, one waits behind at most one
chunk (sized to a fraction of a second of the link, protocol `Config.chunk_size`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Awaitable, Callable

from aiortc import RTCDataChannel

from protocol.feedback import RTP_HEADER

# What each datagram carries on the link besides its UDP payload: IPv4 20 + UDP 8.
UDP_IP_BYTES = 28
# What a data-channel message costs on the link besides its bytes, per SCTP packet: IPv4 20 + UDP 8 + a DTLS
# record's 37 (header 13, AES-GCM's explicit nonce 8 and tag 16; ChaCha20 has 8 fewer) + SCTP's common header
# 12 + its DATA chunk header 16.
SCTP_PACKET_OVERHEAD_BYTES = 93
# User data per SCTP packet (aiortc's USERDATA_MAX_LENGTH).
SCTP_PACKET_PAYLOAD_BYTES = 1200
# The bucket holds at most this long of the share (at least one message): a short burst, never a queue's
# worth (the fault lab's bottleneck queue is 0.3 s).
BURST_S = 0.25
# While waiting, the share is read again at least this often (the estimate moves with each report, ~1 s).
RECHECK_S = 0.25
# The shortest wait: a wait computed from the tokens missing can round to nothing against the clock's value and
# spin (seen on a test clock at 100 s: a remainder of 1e-13 bytes).
MIN_WAIT_S = 0.001
# The flow's own rate (what it adds to what the sender sends, for the estimate) is measured over this window.
RATE_WINDOW_S = 2.0


# Each video packet carries besides its share of the frame: IPv4 20 + UDP 8 + RTP 12 + aiortc's header
# extensions (mid, abs-send-time) 12 + VP8 payload descriptor 4 + SRTP tag 10 bytes (4 kbps at 7.5 frames/s).
PACKET_OVERHEAD_BYTES = 66


def wire_bytes(message_bytes: int) -> int:
    """What a data-channel message of `message_bytes` puts on the link."""
    packets = max(1, -(-message_bytes // SCTP_PACKET_PAYLOAD_BYTES))
    return message_bytes + packets * SCTP_PACKET_OVERHEAD_BYTES


def rtp_wire_bytes(packets: int, counted_bytes: int) -> int:
    """What `packets` RTP packets of the video put on the link, counted at `counted_bytes` by the receiver (payload and
    RTP fixed header, protocol/feedback.py), which PACKET_OVERHEAD_BYTES includes too."""
    return counted_bytes + packets * (PACKET_OVERHEAD_BYTES - RTP_HEADER)


class BackgroundPacer:
    """Sends the background flow's messages at no more than `share_kbps()` on the link (averaged; a burst of at
    most BURST_S of the share or one message). `share_kbps` is read at each decision; 0 pauses the flow.
    `clock` and `sleep` are injectable for tests."""

    def __init__(self, share_kbps: Callable[[], float], clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self.share_kbps, self.clock, self.sleep = share_kbps, clock, sleep
        self.tokens = 0.0  # bytes the flow may still put on the link now
        self.filled_at: float | None = None
        self.sent: deque[tuple[float, int]] = deque()  # (time, wire bytes) within RATE_WINDOW_S
        self.messages = 0
        self.wire_bytes = 0
        self.paused_s = 0.0  # time spent waiting with a zero share

    def _refill(self, now: float, cost: int) -> float:
        share = max(0.0, self.share_kbps())
        if self.filled_at is not None:
            self.tokens += share * 125 * (now - self.filled_at)
        self.filled_at = now
        self.tokens = min(self.tokens, max(float(cost), share * 125 * BURST_S))
        return share

    async def send(self, channel: RTCDataChannel, data: bytes) -> int:
        """Send `data` (an encoded message) when the share allows it and the channel's buffer is empty; returns
        its size. Raises ConnectionError when the channel closes meanwhile."""
        cost = wire_bytes(len(data))
        while True:
            if channel.readyState != "open":
                raise ConnectionError(f"data channel {channel.label!r} is {channel.readyState}")
            now = self.clock()
            share = self._refill(now, cost)
            if self.tokens >= cost and channel.bufferedAmount == 0:
                break
            if share <= 0:
                wait = RECHECK_S
                self.paused_s += wait
            elif self.tokens < cost:
                wait = min(RECHECK_S, max(MIN_WAIT_S, (cost - self.tokens) / (share * 125)))
            else:
                wait = 0.01  # the buffer: SCTP takes the last message as its window opens
            await self.sleep(wait)
        channel.send(data)
        self.tokens -= cost
        self.sent.append((now, cost))
        self.messages += 1
        self.wire_bytes += cost
        return len(data)

    def kbps(self, now: float | None = None) -> float:
        """The flow's rate on the link over the last RATE_WINDOW_S."""
        now = self.clock() if now is None else now
        while self.sent and self.sent[0][0] < now - RATE_WINDOW_S:
            self.sent.popleft()
        return sum(b for _, b in self.sent) * 8 / RATE_WINDOW_S / 1000

    def summary(self) -> dict:
        return {"messages": self.messages, "wire_bytes": self.wire_bytes, "paused_s": round(self.paused_s, 2)}
