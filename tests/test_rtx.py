"""Which NACKed packets the sender resends (sender/rtx.py), and the hook in front of aiortc's retransmission
(sender/rtcp.py) on a real RTCRtpSender."""

from __future__ import annotations

import asyncio

import pytest
from aiortc import RTCRtpSender
from aiortc.rtcrtpsender import RTP_HISTORY_SIZE
from aiortc.rtp import RTCP_RTPFB_NACK, RtcpRtpfbPacket, RtpPacket

from sender import rtcp
from sender.rtx import MIN_RESEND_S, PAUSE_AFTER_CUT_S, RTX_BURST_S, RTX_SHARE, RetransmissionGate
from tests.fakes import FakeTransport


class Clock:
    def __init__(self):
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def gate(kbps: float = 20.0, rtt: float | None = None) -> tuple[RetransmissionGate, Clock]:
    clock = Clock()
    return RetransmissionGate(lambda: kbps, lambda: rtt, clock), clock


def test_a_packet_is_not_resent_within_an_rtt():
    g, clock = gate(rtt=0.4)
    assert g.allow(7, 200)
    clock.now += 0.3  # the receiver repeated its NACK before the first resend could have arrived
    assert not g.allow(7, 200) and g.skipped_recent == 1
    clock.now += 0.15
    assert g.allow(7, 200)
    h, clock = gate(rtt=None)  # no RTT yet: MIN_RESEND_S
    assert h.allow(1, 100) and not h.allow(1, 100)
    clock.now += MIN_RESEND_S
    assert h.allow(1, 100)


def test_retransmissions_stay_inside_their_share_of_the_target():
    g, clock = gate(kbps=20.0)
    bucket = RTX_SHARE * 20.0 * 125 * RTX_BURST_S  # bytes
    sent = 0
    for seq in range(100):  # a storm of NACKs for distinct packets at one instant
        if g.allow(seq, 300):
            sent += 300
    assert bucket <= sent < bucket + 300 and g.skipped_budget > 0  # at most one packet of debt
    # Over a long storm the rate is the share: 10 s at one NACKed packet per 10 ms.
    total = 0
    for i in range(1000):
        clock.now += 0.01
        if g.allow(1000 + i, 300):
            total += 300
    assert total == pytest.approx(RTX_SHARE * 20.0 * 125 * 10.0, rel=0.05)
    assert g.summary()["sent"] == g.sent and g.summary()["skipped_over_budget"] == g.skipped_budget


def test_the_gate_sits_in_front_of_aiortcs_retransmission():
    async def scenario():
        sender = RTCRtpSender("video", transport=FakeTransport())
        resent: list[int] = []

        async def spy(seq: int) -> None:
            resent.append(seq)

        sender._retransmit = spy  # aiortc's own would send on the transport
        history = sender._RTCRtpSender__rtp_history
        for seq in (10, 11, 12):
            history[seq % RTP_HISTORY_SIZE] = RtpPacket(payload_type=96, sequence_number=seq, payload=bytes(100))
        asked: list[tuple[int, int]] = []

        def allow(seq: int, size: int) -> bool:
            asked.append((seq, size))
            return seq != 11

        rtcp.gate_retransmissions(sender, allow)
        nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=9, media_ssrc=sender._ssrc)
        nack.lost = [10, 11, 12, 13]  # 13 is not in the history: nothing to resend, nothing asked
        await sender._handle_rtcp_packet(nack)
        return resent, asked

    resent, asked = asyncio.run(scenario())
    assert asked == [(10, 100 + rtcp.RTP_HEADER), (11, 112), (12, 112)]
    assert resent == [10, 12]


def test_the_gate_fails_loudly_on_an_aiortc_without_its_retransmission_path():
    class Changed:
        async def _retransmit(self, seq):
            pass

    with pytest.raises(rtcp.RtcpHookError, match="_RTCRtpSender__rtp_history"):
        rtcp.gate_retransmissions(Changed(), lambda seq, size: True)


def test_a_loss_cut_pauses_retransmissions_while_the_queue_that_dropped_them_drains():
    g, clock = gate(kbps=20.0)
    g.pause()
    assert not g.allow(5, 200) and g.skipped_paused == 1
    clock.now += PAUSE_AFTER_CUT_S * 0.9
    assert not g.allow(5, 200)
    clock.now += PAUSE_AFTER_CUT_S * 0.2
    assert g.allow(5, 200) and g.summary()["skipped_after_cut"] == 2
