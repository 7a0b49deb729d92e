"""The data channel's background pacer (sender/pacer.py) on a fake clock and a fake channel: it never sends
more than its share, stops at a zero share, and waits for the channel's buffer."""

from __future__ import annotations

import asyncio

import pytest

from sender.pacer import (BURST_S, RATE_WINDOW_S, SCTP_PACKET_OVERHEAD_BYTES, SCTP_PACKET_PAYLOAD_BYTES,
                          BackgroundPacer, wire_bytes)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds


class Channel:
    """Records what was sent when; drains its buffer `drain_s` after each send."""

    label = "control"

    def __init__(self, clock: Clock, drain_s: float = 0.0):
        self.clock, self.drain_s = clock, drain_s
        self.readyState = "open"
        self.sent: list[tuple[float, int]] = []

    @property
    def bufferedAmount(self) -> int:
        if self.sent and self.clock() < self.sent[-1][0] + self.drain_s:
            return self.sent[-1][1]
        return 0

    def send(self, data: bytes) -> None:
        self.sent.append((self.clock(), len(data)))


def run(coro):
    return asyncio.run(coro)


def test_wire_bytes_counts_one_header_per_sctp_packet():
    assert wire_bytes(1) == 1 + SCTP_PACKET_OVERHEAD_BYTES
    assert wire_bytes(SCTP_PACKET_PAYLOAD_BYTES) == SCTP_PACKET_PAYLOAD_BYTES + SCTP_PACKET_OVERHEAD_BYTES
    assert wire_bytes(SCTP_PACKET_PAYLOAD_BYTES + 1) == SCTP_PACKET_PAYLOAD_BYTES + 1 + 2 * SCTP_PACKET_OVERHEAD_BYTES


@pytest.mark.parametrize("share", [10.0, 40.0, 300.0])
def test_the_flow_never_sends_more_than_its_share_over_any_window(share):
    clock = Clock()
    channel = Channel(clock)
    pacer = BackgroundPacer(lambda: share, clock=clock, sleep=clock.sleep)

    async def flow():
        for _ in range(200):
            await pacer.send(channel, b"x" * 1000)

    run(flow())
    cost = wire_bytes(1000)
    allowed = share * 125 * RATE_WINDOW_S + max(cost, share * 125 * BURST_S)
    for start, _ in channel.sent:
        inside = sum(cost for t, _ in channel.sent if start <= t < start + RATE_WINDOW_S)
        assert inside <= allowed
    seconds = channel.sent[-1][0] - channel.sent[0][0]
    rate = (len(channel.sent) - 1) * cost * 8 / seconds / 1000
    assert rate == pytest.approx(share, rel=0.05)  # and it does use the share
    assert pacer.summary()["messages"] == 200 and pacer.summary()["wire_bytes"] == 200 * cost


def test_a_zero_share_pauses_the_flow_until_the_share_returns():
    clock = Clock()
    channel = Channel(clock)
    pacer = BackgroundPacer(lambda: 0.0 if 1.0 <= clock() < 5.0 else 100.0, clock=clock, sleep=clock.sleep)

    async def flow():
        while clock() < 8.0:
            await pacer.send(channel, b"x" * 500)

    run(flow())
    assert not [t for t, _ in channel.sent if 1.0 <= t < 5.0]
    assert [t for t, _ in channel.sent if t >= 5.0]
    assert pacer.summary()["paused_s"] == pytest.approx(4.0, abs=0.3)
    # Tokens do not pile up while paused: the flow resumes at its share, with no more than a burst.
    resumed = sum(wire_bytes(500) for t, _ in channel.sent if 5.0 <= t < 6.0)
    assert resumed <= 100 * 125 * (1.0 + BURST_S) + wire_bytes(500)


def test_a_message_waits_until_the_channel_has_sent_the_last_one():
    clock = Clock()
    channel = Channel(clock, drain_s=0.5)  # SCTP's window is narrower than the share
    pacer = BackgroundPacer(lambda: 10_000.0, clock=clock, sleep=clock.sleep)

    async def flow():
        for _ in range(10):
            await pacer.send(channel, b"x" * 2000)

    run(flow())
    gaps = [b[0] - a[0] for a, b in zip(channel.sent, channel.sent[1:])]
    assert min(gaps) >= 0.5


def test_the_rate_is_measured_over_the_window():
    clock = Clock()
    channel = Channel(clock)
    pacer = BackgroundPacer(lambda: 80.0, clock=clock, sleep=clock.sleep)

    async def flow():
        while clock() < 10.0:
            await pacer.send(channel, b"x" * 1200)

    run(flow())
    assert pacer.kbps() == pytest.approx(80.0, rel=0.15)
    assert pacer.kbps(clock() + RATE_WINDOW_S + 0.1) == 0.0  # nothing sent since


def test_a_closed_channel_ends_the_flow_with_a_connection_error():
    clock = Clock()
    channel = Channel(clock)
    channel.readyState = "closed"
    pacer = BackgroundPacer(lambda: 100.0, clock=clock, sleep=clock.sleep)
    with pytest.raises(ConnectionError, match="closed"):
        run(pacer.send(channel, b"x"))
