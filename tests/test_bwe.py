"""The sender's bandwidth estimate (sender/bwe.py) on synthetic report sequences, and the RTCP hook that
feeds it (sender/rtcp.py) on real aiortc packets."""

from __future__ import annotations

import asyncio

import pytest
from aiortc import RTCRtpSender
from aiortc.rtp import (RTCP_PSFB_APP, RTCP_PSFB_PLI, RtcpPsfbPacket, RtcpReceiverInfo, RtcpRrPacket, pack_remb_fci)

from sender import rtcp
from sender.bwe import DECREASE_HOLD_S, DELAY_BACKOFF, LOSS_INCREASE, PROBE_AHEAD, REMB_STALE_S, STORM_LOSS, BandwidthEstimator


def estimator(kbps: float = 20.0) -> BandwidthEstimator:
    return BandwidthEstimator(start_kbps=kbps, min_kbps=kbps / 4)


# -- the loss rule ---------------------------------------------------------------------------------------
def test_loss_above_ten_percent_cuts_by_half_the_loss():
    e = estimator()
    assert e.on_report(1.0, 0.20) == pytest.approx(20 * 0.9)
    assert e.on_report(3.0, 0.40) == pytest.approx(20 * 0.9 * 0.8)


def test_a_cut_holds_further_loss_cuts_until_the_reports_can_show_it():
    e = estimator()
    e.on_report(1.0, 0.30)
    cut = e.estimate(1.0)
    assert e.on_report(1.0 + DECREASE_HOLD_S / 2, 0.50) == cut  # losses from before the cut took effect
    assert e.on_keyframe_storm(1.0 + DECREASE_HOLD_S * 0.9, 2) == cut
    assert e.on_report(1.0 + DECREASE_HOLD_S, 0.50) == pytest.approx(cut * 0.75)


def test_a_cut_goes_to_what_got_through_when_that_is_lower():
    e = estimator()
    assert e.on_report(1.0, 0.40, sending_kbps=20.0) == pytest.approx(12.0)  # not 20 * 0.8 = 16
    e = estimator()
    assert e.on_report(1.0, 0.12, sending_kbps=20.0) == pytest.approx(20 * 0.94)  # random loss: the gentle cut


def test_a_lower_remb_right_after_a_loss_cut_is_not_a_second_cut():
    e = estimator()
    e.on_report(1.0, 0.30, sending_kbps=20.0)
    assert e.on_remb(1.5, 8.0) == pytest.approx(14.0)
    assert e.on_remb(1.0 + DECREASE_HOLD_S, 8.0) == 8.0


def test_loss_between_two_and_ten_percent_holds():
    e = estimator()
    e.on_report(1.0, 0.5)
    held = e.estimate(1.0)
    for t in range(2, 10):
        assert e.on_report(float(t), 0.05) == held


def test_clean_reports_recover_by_five_percent_each_up_to_the_request_never_above():
    e = estimator()
    e.on_report(1.0, 0.6)  # 20 * 0.7 = 14
    low = e.estimate(1.0)
    assert e.on_report(2.0, 0.0, sending_kbps=low) == pytest.approx(low * LOSS_INCREASE)
    for t in range(3, 40):
        e.on_report(float(t), 0.01, sending_kbps=e.estimate(float(t)))
    assert e.estimate(40.0) == 20.0


def test_an_application_limited_sender_does_not_inflate_the_estimate():
    e = BandwidthEstimator(start_kbps=10.0, min_kbps=2.0, max_kbps=100.0)
    for t in range(1, 30):
        e.on_report(float(t), 0.0, sending_kbps=10.0)  # it keeps sending 10 kbps
    assert e.estimate(30.0) <= 10.0 * PROBE_AHEAD + 1e-9


def test_the_floor_holds_under_any_loss():
    e = estimator()
    for t in range(50):
        e.on_report(float(t), 1.0)
    assert e.estimate(50.0) == 5.0


def test_a_keyframe_storm_counts_as_heavy_loss():
    e = estimator()
    assert e.on_keyframe_storm(1.0, 3) == pytest.approx(20 * (1 - 0.5 * STORM_LOSS))
    assert "keyframe" in e.reason


# -- the delay signals -----------------------------------------------------------------------------------
def test_remb_caps_the_estimate_until_it_goes_stale():
    e = estimator()
    assert e.on_remb(1.0, 12.0) == 12.0
    assert e.estimate(1.0 + REMB_STALE_S) == 12.0
    assert e.estimate(1.0 + REMB_STALE_S + 0.1) == 20.0  # the receiver stopped saying it
    assert e.on_remb(10.0, 80.0) == 20.0  # a REMB above the call's range does not raise it


def test_a_rising_rtt_backs_off_before_any_loss_then_lets_go_when_the_queue_drains():
    e = estimator()
    t = 0.0
    for rtt in (0.040, 0.045, 0.042):
        t += 1
        e.on_report(t, 0.0, rtt, sending_kbps=20.0)
    assert e.estimate(t) == 20.0
    t += 1
    e.on_report(t, 0.0, 0.50, sending_kbps=20.0)  # smoothed 0.27 s: 0.23 s of queue
    assert e.estimate(t) == pytest.approx(20 * DELAY_BACKOFF) and "queue" in e.reason
    t += 0.5
    e.on_report(t, 0.0, 0.50, sending_kbps=17.0)  # still queued but inside the hold: no second cut yet
    assert e.estimate(t) == pytest.approx(20 * DELAY_BACKOFF)
    t += 1.5
    e.on_report(t, 0.0, 0.50, sending_kbps=17.0)
    assert e.estimate(t) == pytest.approx(17 * DELAY_BACKOFF)
    for _ in range(40):  # the queue drained: back to the request
        t += 1
        e.on_report(t, 0.0, 0.04, sending_kbps=e.estimate(t))
    assert e.estimate(t) == 20.0 and e.delay_kbps is None


def test_a_long_fixed_delay_is_no_queue():
    e = estimator()
    for t in range(1, 20):
        e.on_report(float(t), 0.0, 0.230 + 0.03 * (t % 2), sending_kbps=20.0)  # 100 +- 30 ms each way
    assert e.estimate(20.0) == 20.0


def test_the_lower_controller_wins_and_history_records_why():
    e = estimator()
    e.on_remb(1.0, 15.0)
    e.on_report(2.0, 0.5)  # loss: 20 * 0.75 = 15 -> ties; then more loss goes under the REMB
    e.on_report(4.0, 0.5)
    assert e.estimate(4.0) == pytest.approx(11.25)
    assert [c.reason for c in e.history] == ["REMB 15.0 kbps", "50% lost"]


def test_bad_ranges_are_refused():
    with pytest.raises(ValueError):
        BandwidthEstimator(start_kbps=10.0, min_kbps=0.0)


# -- the RTCP hook ----------------------------------------------------------------------------------------
def test_rtt_from_lsr_and_dlsr():
    now_ntp = (1000 << 32) | (1 << 31)  # 1000.5 s
    lsr = ((now_ntp >> 16) - int(0.300 * 65536)) & 0xFFFFFFFF  # SR sent 0.3 s ago
    assert rtcp.rtt_from_report(lsr, int(0.100 * 65536), now_ntp) == pytest.approx(0.200, abs=1e-4)
    assert rtcp.rtt_from_report(0, 0, now_ntp) is None  # no SR yet
    assert rtcp.rtt_from_report((now_ntp >> 16) + 65536, 0, now_ntp) is None  # from the future: no measurement


def test_the_hook_hands_reports_remb_and_pli_to_the_track_and_passes_packets_on():
    async def scenario():
        sender = RTCRtpSender("video", transport=_FakeTransport())
        seen = {"reports": [], "remb": [], "keyframes": 0, "passed": []}
        original = sender._handle_rtcp_packet

        async def spy(packet):
            seen["passed"].append(type(packet).__name__)
            await original(packet)

        sender._handle_rtcp_packet = spy
        rtcp.observe(sender, lambda lost, rtt: seen["reports"].append((lost, rtt)), seen["remb"].append,
                     lambda: seen.__setitem__("keyframes", seen["keyframes"] + 1))
        ours, other = sender._ssrc, sender._ssrc ^ 1
        report = lambda ssrc, lost: RtcpReceiverInfo(ssrc=ssrc, fraction_lost=lost, packets_lost=0,  # noqa: E731
                                                     highest_sequence=0, jitter=0, lsr=0, dlsr=0)
        await sender._handle_rtcp_packet(RtcpRrPacket(ssrc=9, reports=[report(other, 200), report(ours, 64)]))
        await sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=9, media_ssrc=0,
                                                        fci=pack_remb_fci(15_000, [ours])))
        await sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=9, media_ssrc=0,
                                                        fci=pack_remb_fci(99_000, [other])))
        await sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=9, media_ssrc=ours))
        return seen

    seen = asyncio.run(scenario())
    assert seen["reports"] == [(0.25, None)]  # only our SSRC's block
    assert seen["remb"] == [15.0]
    assert seen["keyframes"] == 1
    assert seen["passed"] == ["RtcpRrPacket", "RtcpPsfbPacket", "RtcpPsfbPacket", "RtcpPsfbPacket"]


def test_the_hook_fails_loudly_on_an_aiortc_without_its_internals():
    class Changed:
        _ssrc = 1

        async def _handle_rtcp_packet(self, packet):
            pass

    with pytest.raises(rtcp.RtcpHookError, match="_send_keyframe"):
        rtcp.observe(Changed(), print, print, print)


class _FakeTransport:
    """Just enough of an RTCDtlsTransport for an RTCRtpSender that never sends."""

    class transport:  # noqa: N801
        _connection = None

    _stats_id = "transport"
    state = "new"

    def _register_rtp_sender(self, *args) -> None:
        pass
