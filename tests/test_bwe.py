"""The sender's bandwidth estimate (sender/bwe.py) on synthetic report sequences, and the RTCP hook that
feeds it (sender/rtcp.py) on real aiortc packets."""

from __future__ import annotations

import asyncio

import pytest
from aiortc import RTCRtpSender
from aiortc.rtp import (RTCP_PSFB_APP, RTCP_PSFB_PLI, RtcpPsfbPacket, RtcpReceiverInfo, RtcpRrPacket, pack_remb_fci)

from sender import rtcp
from tests.fakes import FakeTransport
from sender.bwe import (CAPACITY_NEAR, DECREASE_HOLD_S, DELAY_BACKOFF, FAST_INCREASE, LOSS_INCREASE,
                        REMB_EVIDENCE_S, REMB_STALE_S, STORM_LOSS, BandwidthEstimator, NackLoss)


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


def test_clean_reports_recover_up_to_the_request_never_above():
    e = estimator()
    e.on_report(1.0, 0.6)  # 20 * 0.7 = 14, the loss came at 20
    low = e.estimate(1.0)
    # Fast up to the capacity's lower edge, then five percent a report.
    assert e.on_report(2.0, 0.0, sending_kbps=low) == pytest.approx(CAPACITY_NEAR[0] * 20.0)
    assert e.on_report(2.5, 0.0, sending_kbps=18.0) == pytest.approx(18.0 * LOSS_INCREASE)
    for t in range(3, 40):
        e.on_report(float(t), 0.01, sending_kbps=e.estimate(float(t)))
    assert e.estimate(40.0) == 20.0


def test_an_application_limited_sender_does_not_inflate_the_estimate():
    e = BandwidthEstimator(start_kbps=10.0, min_kbps=2.0, max_kbps=100.0)
    for t in range(1, 30):
        e.on_report(float(t), 0.0, sending_kbps=10.0)  # it keeps sending 10 kbps
    assert e.estimate(30.0) <= 10.0 * FAST_INCREASE + 1e-9
    e.on_report(30.0, 0.3, sending_kbps=10.0)  # after a cut too
    for t in range(31, 60):
        e.on_report(float(t), 0.0, sending_kbps=10.0)
    assert e.estimate(60.0) <= 10.0 * FAST_INCREASE + 1e-9


def test_slow_start_climbs_fast_on_clean_reports_until_a_congestion_signal():
    e = BandwidthEstimator(start_kbps=10.0, min_kbps=5.0, max_kbps=20.0)
    assert e.starting and e.estimate(0.0) == 10.0
    assert e.on_report(1.0, 0.0, sending_kbps=10.0) == pytest.approx(10.0 * FAST_INCREASE)
    assert "starting up" in e.reason
    # Never more than FAST_INCREASE above what is sent (the sender had not moved yet).
    assert e.on_report(2.0, 0.0, sending_kbps=10.0) == pytest.approx(10.0 * FAST_INCREASE)
    e.on_report(3.0, 0.05, sending_kbps=13.0)  # loss between the thresholds holds, and is no congestion signal
    assert e.starting and e.estimate(3.0) == pytest.approx(13.0)
    done = BandwidthEstimator(start_kbps=10.0, min_kbps=5.0, max_kbps=20.0)
    for t in range(1, 6):
        done.on_report(float(t), 0.0, sending_kbps=done.estimate(float(t)))
    assert done.estimate(6.0) == 20.0  # reached the request in three reports
    ahead = BandwidthEstimator(start_kbps=10.0, min_kbps=5.0, max_kbps=20.0)
    ahead.on_report(1.0, 0.0, sending_kbps=10.0)  # 13: ahead of the 10 still sent
    ahead.on_report(2.0, 0.12, sending_kbps=10.0)  # a cut is from what was sent, never up from it
    assert ahead.estimate(2.0) == pytest.approx(10.0 * (1 - 0.5 * 0.12)) and ahead.capacity_kbps == 10.0
    queued = BandwidthEstimator(start_kbps=10.0, min_kbps=5.0, max_kbps=20.0)
    for t, rtt in enumerate((0.05, 0.05, 0.6, 0.6), 1):
        queued.on_report(float(t), 0.0, rtt, sending_kbps=10.0)
    assert not queued.starting and "queue" in queued.reason  # a queue ends it too
    assert queued.capacity_kbps == pytest.approx(10.0)
    remb = BandwidthEstimator(start_kbps=10.0, min_kbps=5.0, max_kbps=20.0)
    remb.on_report(1.0, 0.0, sending_kbps=10.0)  # 13, ahead of the 10 sent
    assert remb.on_remb(1.5, 9.0, sending_kbps=10.0) == 10.0  # a REMB under what is sent ends the start there
    assert not remb.starting and remb.capacity_kbps == 10.0 and "end of the start" in remb.reason
    assert remb.on_report(2.5, 0.0, sending_kbps=10.0) == 10.0  # near the capacity now, and the REMB bounds it


def test_after_a_cut_the_estimate_climbs_fast_to_near_the_capacity_slowly_through_it_then_fast_again():
    e = BandwidthEstimator(start_kbps=60.0, min_kbps=5.0)
    e.on_report(1.0, 0.5, sending_kbps=20.0)  # a narrow spell: loss at 20 kbps, cut to what got through
    assert e.capacity_kbps == 20.0 and e.estimate(1.0) == pytest.approx(10.0)
    seen, t = [], 1.0
    while e.estimate(t) < 60.0 and t < 40:
        t += 1.0
        e.on_report(t, 0.0, sending_kbps=e.estimate(t))
        seen.append((round(e.estimate(t), 3), e.reason.split(": ")[1]))
    low, high = CAPACITY_NEAR[0] * 20.0, CAPACITY_NEAR[1] * 20.0
    assert seen[0] == (13.0, "climbing back") and seen[1] == (16.9, "climbing back") and seen[2] == (low, "climbing back")
    near = [kbps for kbps, why in seen if why == "probing up"]
    assert near and all(low < kbps <= high * LOSS_INCREASE for kbps in near)  # slowly through the capacity
    assert seen[-1][0] == 60.0 and seen[-1][1] == "climbing back"  # beyond it the link widened: fast again
    assert len(seen) < 15

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
    e.on_report(0.5, 0.05)  # loss in a report: the REMB below the estimate has a queue to speak of
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
    e.on_report(0.5, 0.05)
    e.on_remb(1.0, 15.0)
    e.on_report(2.0, 0.5)  # loss: 20 * 0.75 = 15 -> ties; then more loss goes under the REMB
    e.on_report(4.0, 0.5)
    assert e.estimate(4.0) == pytest.approx(11.25)
    assert [c.reason for c in e.history] == ["REMB 15.0 kbps", "50% lost"]


def test_a_lower_remb_without_loss_or_a_queue_is_not_believed():
    # aiortc's receiver reads keyframe bursts as overuse and ratchets its REMB down on a sender that sends
    # less than the link carries: with clean reports (no loss, flat RTT) the REMB is ignored and counted.
    e = estimator()
    for t in range(1, 6):
        e.on_report(float(t), 0.0, 0.040, sending_kbps=20.0)
        e.on_remb(t + 0.5, 3.0)
    assert e.estimate(6.0) == 20.0 and e.rembs_ignored == 5 and e.summary(6.0)["rembs_ignored"] == 5
    # A queue in the RTT (0.1 s above its low) is evidence: the next REMB counts.
    e.on_report(6.0, 0.0, 0.30, sending_kbps=20.0)  # smoothed 0.17 s: 0.13 s of queue
    assert e.on_remb(6.5, 12.0) == 12.0
    # ... and so is loss, for REMB_EVIDENCE_S after the report that showed it.
    f = estimator()
    f.on_report(1.0, 0.05, sending_kbps=20.0)
    assert f.on_remb(1.0 + REMB_EVIDENCE_S - 0.1, 14.0) == 14.0
    assert f.on_remb(1.0 + REMB_EVIDENCE_S + 0.1, 10.0) == 14.0  # the evidence went stale
    assert f.on_remb(1.0 + REMB_EVIDENCE_S + 0.2, 18.0) == 18.0  # a higher REMB always counts


def test_a_remb_not_believed_as_a_cut_still_bounds_the_climb():
    e = BandwidthEstimator(start_kbps=10.0, min_kbps=5.0, max_kbps=40.0)
    e.on_remb(0.5, 8.0)  # lower than the estimate, no evidence: no cut ...
    assert e.estimate(0.5) == 10.0 and e.rembs_ignored == 1
    e.on_report(1.0, 0.0, sending_kbps=10.0)  # ... and no climb past it either
    assert e.estimate(1.0) == 10.0
    e.on_remb(1.5, 12.0)
    assert e.on_report(2.0, 0.0, sending_kbps=10.0) == pytest.approx(12.0)  # up to the REMB, not 13
    e.on_report(2.0 + REMB_STALE_S + 1, 0.0, sending_kbps=12.0)  # a stale REMB bounds nothing
    assert e.estimate(2.0 + REMB_STALE_S + 1) == pytest.approx(12.0 * FAST_INCREASE)


def test_nacks_for_a_heavy_share_of_recent_packets_cut_before_the_next_report():
    nacks = NackLoss()
    for i in range(20):  # 7.5 packets a second for ~2.7 s
        nacks.on_sent(i / 7.5, 1)
    now = 20 / 7.5
    assert nacks.on_nack(now, 100) and not nacks.on_nack(now, 100)  # a repeated NACK counts once
    for seq in (101, 102):
        nacks.on_nack(now, seq)
    nacked, sent = nacks.window(now, lag_s=0.1)
    assert nacked == 3 and sent == 4  # the 0.5 s window, 0.1 s back
    e = estimator()
    assert e.on_fast_loss(now, 2, 4, sending_kbps=20.0) == 20.0  # under NACK_MIN_PACKETS: no cut
    assert e.on_fast_loss(now, 3, 20, sending_kbps=20.0) == 20.0  # 15 %: random loss, no cut
    assert e.on_fast_loss(now, nacked, sent, sending_kbps=20.0) == pytest.approx(5.0)  # 75 %: through = 25 %
    assert "NACKed" in e.reason and e.capacity_kbps == 20.0
    assert e.on_fast_loss(now + 0.5, 4, 4, sending_kbps=5.0) == 5.0  # the hold between cuts applies


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
        sender = RTCRtpSender("video", transport=FakeTransport())
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
