"""The sender's bandwidth estimate (sender/bwe.py) on synthetic report sequences, and the RTCP hook that
feeds it (sender/rtcp.py) on real aiortc packets."""

from __future__ import annotations

import asyncio

import pytest
from aiortc import RTCRtpSender
from aiortc.rtp import (RTCP_PSFB_APP, RTCP_PSFB_PLI, RtcpPsfbPacket, RtcpReceiverInfo, RtcpRrPacket, RtpPacket,
                        pack_remb_fci)

from sender import rtcp
from tests.fakes import FakeTransport
from sender.bwe import (CAPACITY_NEAR, DECREASE_HOLD_S, DELAY_BACKOFF, DELIVERED_SHARE, FAST_INCREASE, LOSS_INCREASE,
                        OUTAGE_GRACE_S, PROBE_ECHO_S, REMB_EVIDENCE_S, REMB_STALE_S, SENT_WINDOW_S, STORM_LOSS,
                        BandwidthEstimator, NackLoss, SentRate)


def estimator(kbps: float = 20.0) -> BandwidthEstimator:
    return BandwidthEstimator(start_kbps=kbps, min_kbps=kbps / 4)


# -- the loss rule ---------------------------------------------------------------------------------------
def test_loss_above_ten_percent_with_a_queue_cuts_by_half_the_loss():
    e = estimator()
    e.on_report(0.5, 0.0, 0.05)
    assert e.on_report(1.0, 0.20, 0.40) == pytest.approx(20 * 0.9)  # smoothed RTT 0.225 s: a queue behind it
    assert e.on_report(3.0, 0.40) == pytest.approx(20 * 0.9 * 0.8)


def test_moderate_loss_without_a_queue_is_a_lossy_link_and_holds_but_heavy_loss_cuts_anyway():
    e = estimator()
    for t in range(1, 6):
        assert e.on_report(float(t), 0.15, 0.05, sending_kbps=20.0) == 20.0  # flat RTT: no cut
    assert e.on_report(6.0, 0.40, 0.05, sending_kbps=20.0) == pytest.approx(12.0)  # severe: a queue overflowing


def test_a_cut_holds_further_loss_cuts_until_the_reports_can_show_it():
    e = estimator()
    e.on_report(1.0, 0.40)
    cut = e.estimate(1.0)
    assert e.on_report(1.0 + DECREASE_HOLD_S / 2, 0.50) == cut  # losses from before the cut took effect
    assert e.on_keyframe_storm(1.0 + DECREASE_HOLD_S * 0.9, 2) == cut
    assert e.on_report(1.0 + DECREASE_HOLD_S, 0.50) == pytest.approx(cut * 0.75)


def test_a_cut_goes_to_what_got_through_when_that_is_lower():
    e = estimator()
    assert e.on_report(1.0, 0.40, sending_kbps=20.0) == pytest.approx(12.0)  # not 20 * 0.8 = 16
    e = estimator()
    e.on_report(0.5, 0.0, 0.05)
    assert e.on_report(1.0, 0.12, 0.40, sending_kbps=20.0) == pytest.approx(20 * 0.94)  # moderate: the gentle cut


def test_a_lower_remb_right_after_a_loss_cut_is_not_a_second_cut():
    e = estimator()
    e.on_report(1.0, 0.40, sending_kbps=20.0)
    assert e.on_remb(1.5, 8.0) == pytest.approx(12.0)
    assert e.on_remb(1.0 + DECREASE_HOLD_S, 8.0) == 8.0


def test_loss_between_two_and_ten_percent_holds_with_a_queue_and_climbs_on_a_lossy_link_without_one_to_near_the_capacity():
    e = estimator()
    e.on_report(1.0, 0.5)
    held = e.estimate(1.0)
    e.on_remb(1.5, 12.0, sending_kbps=14.0)  # the receiver's delay estimate under what is sent: congestion
    for t in range(2, 5):
        assert e.on_report(float(t), 0.05, sending_kbps=14.0) == held
    f = estimator()
    f.on_report(1.0, 0.5)
    for t in range(2, 12):  # 5 % lost, flat RTT, no REMB under what is sent: random loss, not a queue
        f.on_report(float(t), 0.05, 0.03, sending_kbps=f.estimate(float(t)))
    # Up to the edge of the capacity the 50 % loss came at (20 kbps), then the draft's hold: past it, probes.
    assert f.estimate(12.0) == pytest.approx(CAPACITY_NEAR[0] * 20.0)
    g = BandwidthEstimator(start_kbps=10.0, min_kbps=5.0, max_kbps=20.0)  # in the slow start it climbs through it
    for t in range(1, 12):
        g.on_report(float(t), 0.05, 0.03, sending_kbps=g.estimate(float(t)))
    assert g.estimate(12.0) == 20.0


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
    e.on_report(3.0, 0.05, sending_kbps=13.0)  # loss between the thresholds, no queue: no congestion signal
    assert e.starting and e.estimate(3.0) == pytest.approx(13.0 * FAST_INCREASE)
    done = BandwidthEstimator(start_kbps=10.0, min_kbps=5.0, max_kbps=20.0)
    for t in range(1, 6):
        done.on_report(float(t), 0.0, sending_kbps=done.estimate(float(t)))
    assert done.estimate(6.0) == 20.0  # reached the request in three reports
    ahead = BandwidthEstimator(start_kbps=10.0, min_kbps=5.0, max_kbps=20.0)
    ahead.on_report(1.0, 0.0, sending_kbps=10.0)  # 13: ahead of the 10 still sent
    ahead.on_report(2.0, 0.40, sending_kbps=10.0)  # a cut is from what was sent, never up from it
    assert ahead.estimate(2.0) == pytest.approx(10.0 * (1 - 0.40)) and ahead.capacity_kbps == 10.0
    queued = BandwidthEstimator(start_kbps=10.0, min_kbps=5.0, max_kbps=20.0)
    for t, rtt in enumerate((0.05, 0.05, 0.6, 0.6), 1):
        queued.on_report(float(t), 0.0, rtt, sending_kbps=10.0)
    assert not queued.starting and "queue" in queued.reason  # a queue ends it too
    assert queued.capacity_kbps == pytest.approx(10.0)
    remb = BandwidthEstimator(start_kbps=10.0, min_kbps=5.0, max_kbps=20.0)
    remb.on_report(1.0, 0.0, sending_kbps=10.0)  # 13, ahead of the 10 sent
    # A REMB under what is sent ends the start and takes back its last step; the capacity is noted at its base.
    assert remb.on_remb(1.5, 7.0, sending_kbps=10.0) == pytest.approx(10.0 / FAST_INCREASE)
    assert not remb.starting and remb.capacity_kbps == pytest.approx(10.0 / FAST_INCREASE) and "end of the start" in remb.reason
    # Back to the base even when the REMB is higher (over the lab's 15 kbps cap it read 15.6-17.0 after a step to 17.5).
    over = BandwidthEstimator(start_kbps=13.5, min_kbps=5.0, max_kbps=20.0)
    over.on_report(1.0, 0.0, sending_kbps=13.5)
    assert over.on_remb(2.0, 17.0, sending_kbps=17.5) == pytest.approx(17.5 / FAST_INCREASE)
    other = BandwidthEstimator(start_kbps=10.0, min_kbps=5.0, max_kbps=20.0)
    assert other.on_remb(0.5, 9.0, sending_kbps=10.0) == 9.0


def test_after_a_cut_the_estimate_climbs_fast_to_near_the_capacity_then_slowly_through_and_past_it():
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
    assert near and all(b == pytest.approx(min(60.0, a * LOSS_INCREASE), rel=1e-3) for a, b in zip(near, near[1:]))  # 5 % a report ...
    assert near[-1] == 60.0 and seen[-1][1] == "probing up"  # ... past the capacity too (probes find a wider link)
    assert all(why != "climbing back" for _, why in seen[3:])

def test_the_floor_holds_under_any_loss():
    e = estimator()
    for t in range(50):
        e.on_report(float(t), 1.0)
    assert e.estimate(50.0) == 5.0


def test_a_keyframe_storm_counts_as_heavy_loss_when_loss_or_a_queue_was_seen():
    e = estimator()
    assert e.on_keyframe_storm(1.0, 3) == 20.0  # alone: random loss hitting a keyframe
    e.on_report(2.0, 0.05)  # some loss seen
    assert e.on_keyframe_storm(3.0, 3) == pytest.approx(20 * (1 - 0.5 * STORM_LOSS))
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
    for t in (3.0, 4.0, 5.0, 6.0):  # still fresh: no climb past it
        assert e.on_report(t, 0.0, sending_kbps=12.0) == pytest.approx(12.0)
    assert 1.5 + REMB_STALE_S < 7.0
    assert e.on_report(7.0, 0.0, sending_kbps=12.0) == pytest.approx(12.0 * FAST_INCREASE)  # stale: bounds nothing


def test_nacks_for_a_heavy_share_of_recent_packets_cut_before_the_next_report():
    nacks = NackLoss()
    for i in range(20):  # 7.5 packets a second for ~2.7 s
        nacks.on_sent(i / 7.5, 1)
    now = 20 / 7.5
    assert nacks.on_nack(now, 100) and not nacks.on_nack(now, 100)  # a repeated NACK counts once
    for seq in (101, 102, 103, 104, 105):
        nacks.on_nack(now, seq)
    nacked, sent = nacks.window(now, lag_s=0.1)
    assert nacked == 6 and sent == 8  # the 1 s window, 0.1 s back
    e = estimator()
    assert e.on_fast_loss(now, 4, 5, sending_kbps=20.0) == 20.0  # under NACK_MIN_PACKETS: no cut
    assert e.on_fast_loss(now, 5, 0, sending_kbps=20.0) == 20.0  # nothing counted as sent yet: no share at all
    assert e.on_fast_loss(now, 5, 12, sending_kbps=20.0) == 20.0  # 42 %: not severe enough for this path
    assert e.on_fast_loss(now, nacked, sent, sending_kbps=20.0) == pytest.approx(5.0)  # 75 %: through = 25 %
    assert "NACKed" in e.reason and e.capacity_kbps == 20.0
    assert e.on_fast_loss(now + 0.5, 6, 6, sending_kbps=5.0) == 5.0  # the hold between cuts applies


def test_loss_is_judged_over_enough_packets_pooled_since_the_last_cut():
    e = estimator()
    # One loss among eight packets reads 12 %: too few packets to judge, no cut, and no climb either.
    e.loss_kbps = 16.0
    assert e.on_report(1.0, 0.125, sending_kbps=16.0, expected=8) == 16.0
    assert e.on_report(2.0, 0.0, sending_kbps=16.0, expected=8) == 16.0
    e.on_remb(2.5, 15.0, sending_kbps=16.0)  # the receiver's delay estimate under what is sent: congestion
    held = e.estimate(2.5)
    e.on_report(3.0, 0.0, sending_kbps=16.0, expected=8)  # 1 of 24: 4 %, judged, between the thresholds: holds
    assert e.estimate(3.0) == held and sum(n for _, n in e.pooled) == 24
    f = estimator()
    for t in (1.0, 2.0):
        f.on_report(t, 0.5, sending_kbps=20.0, expected=8)
    assert f.estimate(2.0) == 20.0  # 8 of 16: not yet judged
    f.on_report(3.0, 0.5, sending_kbps=20.0, expected=8)  # 12 of 24: a queue overflowing
    assert f.estimate(3.0) == pytest.approx(10.0) and not f.pooled  # cut to what got through; the pool restarts
    f.on_report(5.0, 0.5, sending_kbps=10.0, expected=8)
    assert f.estimate(5.0) == pytest.approx(10.0)  # the new rate's first eight packets: not yet judged
    clean = estimator()
    clean.loss_kbps, clean.capacity_kbps = 10.0, 5.0  # past the slow start (which waits for enough packets)
    assert clean.on_report(1.0, 0.0, sending_kbps=10.0, expected=8) > 10.0  # no loss at all: a clean report climbs


def test_an_outage_is_not_congestion():
    e = estimator()
    e.on_report(1.0, 0.0, sending_kbps=20.0, expected=8)
    # 3 s without a report: the link was down both ways. The NACKs for what it lost, and the report that ends
    # the silence, do not cut; after the grace, loss counts again.
    assert e.on_fast_loss(4.2, 8, 8, sending_kbps=20.0) == 20.0
    assert e.on_report(4.5, 0.9, sending_kbps=20.0, expected=30) == 20.0 and not e.pooled
    assert e.on_fast_loss(4.5 + OUTAGE_GRACE_S / 2, 8, 8, sending_kbps=20.0) == 20.0
    t = 4.5 + OUTAGE_GRACE_S + 0.1
    assert e.on_fast_loss(t, 8, 8, sending_kbps=20.0) < 20.0
    f = estimator()
    for t in (1.0, 2.0, 3.0):  # reports keep coming: a congested link, not an outage
        f.on_report(t, 0.0, sending_kbps=20.0, expected=8)
    assert f.on_fast_loss(3.2, 8, 8, sending_kbps=20.0) < 20.0


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
        rtcp.observe(sender, lambda lost, rtt, expected, received: seen["reports"].append((lost, rtt, expected, received)),
                     seen["remb"].append, lambda: seen.__setitem__("keyframes", seen["keyframes"] + 1),
                     nacked=lambda seq: seq == 1005)
        for seq in range(1001, 1010):  # what was sent since the first report: 1005 large, and NACKed
            sender._RTCRtpSender__rtp_history[seq % 128] = RtpPacket(sequence_number=seq, payload=bytes(900 if seq == 1005 else 88))
        ours, other = sender._ssrc, sender._ssrc ^ 1
        report = lambda ssrc, lost, top=0, lsr=0, dlsr=0: RtcpReceiverInfo(  # noqa: E731
            ssrc=ssrc, fraction_lost=lost, packets_lost=0 if top < 1009 else 1, highest_sequence=top, jitter=0, lsr=lsr, dlsr=dlsr)
        await sender._handle_rtcp_packet(RtcpRrPacket(ssrc=9, reports=[report(other, 200), report(ours, 64, 1000, 65536, 0)]))
        await sender._handle_rtcp_packet(RtcpRrPacket(ssrc=9, reports=[report(ours, 0, 1009, 2 * 65536, 65536 // 4)]))
        await sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=9, media_ssrc=0,
                                                        fci=pack_remb_fci(15_000, [ours])))
        await sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=9, media_ssrc=0,
                                                        fci=pack_remb_fci(99_000, [other])))
        await sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=9, media_ssrc=ours))
        return seen

    seen = asyncio.run(scenario())
    # Only our SSRC's blocks; since the last: the packets expected, and the 8 that arrived (one lost) with their bytes,
    # 1.25 s apart on the receiver's clock.
    assert [r[:3] for r in seen["reports"]] == [(0.25, None, None), (0.0, None, 9)]
    assert seen["reports"][0][3] is None and seen["reports"][1][3] == (8, 8 * 100, 1.25)
    assert seen["remb"] == [15.0]
    assert seen["keyframes"] == 1
    assert seen["passed"] == ["RtcpRrPacket", "RtcpRrPacket", "RtcpPsfbPacket", "RtcpPsfbPacket", "RtcpPsfbPacket"]


def test_the_hook_fails_loudly_on_an_aiortc_without_its_internals():
    class Changed:
        _ssrc = 1

        async def _handle_rtcp_packet(self, packet):
            pass

    with pytest.raises(rtcp.RtcpHookError, match="_send_keyframe"):
        rtcp.observe(Changed(), print, print, print)


def test_the_slow_start_steps_only_on_reports_that_cover_enough_packets():
    """Reports of a few packets hold the start; once the pool covers LOSS_MIN_PACKETS, it steps."""
    e = BandwidthEstimator(start_kbps=10.0, min_kbps=5.0, max_kbps=40.0)
    assert e.on_report(1.0, 0.0, sending_kbps=10.0, expected=6) == 10.0
    assert e.on_report(2.0, 0.0, sending_kbps=10.0, expected=8) == 10.0
    assert e.on_report(3.0, 0.0, sending_kbps=10.0, expected=8) == pytest.approx(10.0 * FAST_INCREASE)  # 22 packets
    assert e.starting


def test_the_sent_rate_counts_the_last_window_only():
    meter = SentRate()
    for k in range(10):  # 125 bytes every 0.1 s: 10 kbps
        meter.on_sent(k * 0.1, 125)
    assert meter.kbps(0.9) == pytest.approx(10.0)
    assert meter.kbps(0.9 + SENT_WINDOW_S / 2) == pytest.approx(5.0, abs=1.0)  # half the window has gone by
    assert meter.kbps(5.0) == 0.0


def test_a_lower_remb_right_after_a_probe_is_its_echo():
    e = BandwidthEstimator(start_kbps=15.0, min_kbps=5.0, max_kbps=20.0)
    e.capacity_kbps = 15.0  # past the start
    e.on_probe_sent(10.0)
    e.on_nack(10.5)  # the probe's queue cost a video packet: loss evidence
    assert e.on_remb(11.0, 11.0, sending_kbps=15.0) == 15.0 and e.rembs_ignored == 1
    e.on_nack(10.0 + PROBE_ECHO_S)  # loss again, long after the probe: a lower REMB is believed again
    assert e.on_remb(10.5 + PROBE_ECHO_S, 11.0, sending_kbps=15.0) == 11.0


def test_a_full_queue_is_cut_at_least_to_under_what_it_let_through():
    """Loss with a queue behind it and the link's delivered rate measured: the estimate goes to DELIVERED_SHARE of that
    rate (under the link, so the queue drains) or lower if the draft's multiplier says so, and the capacity is that
    rate. A creep a little past the link (14 % lost) is cut under it too, not by the draft's 7 %."""
    e = BandwidthEstimator(start_kbps=60.0, min_kbps=5.0, max_kbps=60.0)
    e.on_report(1.0, 0.0, rtt_s=0.05, sending_kbps=60.0, expected=30)
    e.on_report(2.0, 0.7, rtt_s=0.4, sending_kbps=60.0, expected=30, delivered_kbps=16.0)
    assert e.estimate(2.0) == pytest.approx(DELIVERED_SHARE * 16.0) and e.capacity_kbps == 16.0
    f = BandwidthEstimator(start_kbps=20.0, min_kbps=5.0, max_kbps=60.0)
    f.on_report(1.0, 0.0, rtt_s=0.05, sending_kbps=20.0, expected=30)
    f.on_report(2.0, 0.7, rtt_s=0.4, sending_kbps=20.0, expected=30, delivered_kbps=16.0)
    assert f.estimate(2.0) == pytest.approx(20.0 * 0.65)  # the multiplier, lower; not 70 % lost of the 20 sent now: 6
    creep = BandwidthEstimator(start_kbps=16.4, min_kbps=5.0, max_kbps=60.0)
    creep.capacity_kbps = 13.5
    creep.on_report(1.0, 0.0, rtt_s=0.05, sending_kbps=16.4, expected=30)
    creep.on_report(2.0, 0.14, rtt_s=0.4, sending_kbps=16.4, expected=22, delivered_kbps=15.0)
    assert creep.estimate(2.0) == pytest.approx(DELIVERED_SHARE * 15.0) and creep.capacity_kbps == 15.0
    g = BandwidthEstimator(start_kbps=60.0, min_kbps=5.0, max_kbps=60.0)  # unmeasured: the share that got through
    g.on_report(1.0, 0.0, rtt_s=0.05, sending_kbps=60.0, expected=30)
    g.on_report(2.0, 0.7, rtt_s=0.4, sending_kbps=60.0, expected=30)
    assert g.estimate(2.0) == pytest.approx(60.0 * 0.3)


def test_inside_the_hold_a_queue_still_overflowing_moves_the_estimate_to_its_output():
    e = BandwidthEstimator(start_kbps=60.0, min_kbps=5.0, max_kbps=60.0)
    e.capacity_kbps = 60.0
    e.on_fast_loss(1.0, 8, 14, sending_kbps=60.0)  # a first cut, from NACKs: to what got through, 26 kbps
    first = e.estimate(1.0)
    assert first == pytest.approx(60.0 * 6 / 14)
    e.on_report(1.2, 0.3, sending_kbps=60.0, expected=4, delivered_kbps=15.0)  # too few packets to measure by
    assert e.estimate(1.2) == first
    e.on_report(1.5, 0.15, sending_kbps=60.0, expected=12, delivered_kbps=15.0)  # loss a random link could show
    assert e.estimate(1.5) == first
    e.on_report(1.8, 0.7, sending_kbps=60.0, expected=12, delivered_kbps=15.0)
    assert e.estimate(1.8) == pytest.approx(DELIVERED_SHARE * 15.0) and "overflows" in e.reason
    assert e.loss_cut_at == 1.0 and e.capacity_kbps == 15.0  # a measurement: the hold does not start again
    e.on_report(1.9, 0.7, sending_kbps=60.0, expected=12, delivered_kbps=20.0)  # a higher reading: no raise
    assert e.estimate(1.9) == pytest.approx(DELIVERED_SHARE * 15.0)
    f = BandwidthEstimator(start_kbps=14.0, min_kbps=5.0, max_kbps=60.0)
    f.capacity_kbps = 14.0
    f.on_probe(1.0, 24.0)
    f.on_nack(1.2)  # random loss takes the probe's jump back: no queue was seen overflowing
    f.on_report(1.5, 0.29, sending_kbps=14.0, expected=7, delivered_kbps=13.0)
    assert f.estimate(1.5) == 14.0


def test_received_since_counts_what_the_report_says_arrived_sized_from_the_packets_sent():
    history = {}
    for seq, size in zip(range(100, 110), [300, 300, 1100, 1100, 300, 300, 300, 300, 300, 300]):
        history[seq % 128] = RtpPacket(payload_type=96, sequence_number=seq, payload=bytes(size))
    header = rtcp.RTP_HEADER
    assert rtcp.received_since(history, 100, 109, 0) == (10, 4600 + 10 * header)
    lost_big = lambda seq: seq in (102, 103)  # noqa: E731 - the keyframe's packets were the ones lost
    assert rtcp.received_since(history, 100, 109, 2, lost_big) == (8, 8 * (300 + header))
    assert rtcp.received_since(history, 100, 109, 2)[1] == round(8 * (4600 + 10 * header) / 10)
    assert rtcp.received_since(history, 100, 130, 0) is None  # most of them no longer in the history
    assert rtcp.received_since(history, 105, 104, 0) is None
    assert rtcp.received_since(history, 100, 101, 5) == (0, 0)  # a count past the range: nothing arrived


def test_a_report_is_timed_by_the_receivers_clock():
    assert rtcp.report_time(0, 100) is None  # no SR yet: the receiver's clock is unknown
    assert rtcp.report_time(3 * 65536, 65536 // 2) == pytest.approx(3.5)


def test_a_remb_climbing_back_after_a_probe_is_still_its_echo_until_it_falls_again():
    """The lab's stepped cap with shapes: a probe over the 60 kbps link queued, aiortc's REMB cut to 37 kbps and climbed
    back ~8 % a second; past PROBE_ECHO_S its REMBs of 41-43 kbps were believed on the probe's own queue as evidence and
    took the estimate from 54 to 42 kbps."""
    def probed() -> BandwidthEstimator:
        e = BandwidthEstimator(start_kbps=54.0, min_kbps=5.0, max_kbps=70.0)
        e.capacity_kbps = 54.0  # past the start
        e.on_report(9.0, 0.0, rtt_s=0.05, sending_kbps=54.0)  # the RTT's low
        e.loss_kbps = 54.0
        e.on_probe_sent(10.0)
        e.on_nack(10.4)  # the probe's queue cost a packet
        assert e.on_remb(10.5, 37.0, sending_kbps=54.0) == 54.0
        e.on_nack(12.0)  # ... reported late: evidence until 14.0
        return e

    e = probed()
    for k, kbps in enumerate((38.0, 39.2, 40.4, 41.6)):  # climbing back, past the echo's 3 s, the evidence fresh
        assert e.on_remb(13.1 + k * 0.25, kbps, sending_kbps=54.0) == 54.0
    assert e.rembs_ignored == 5
    e.on_report(13.9, 0.0, rtt_s=0.4, sending_kbps=54.0)  # a queue in the RTT: evidence
    assert e.on_remb(14.0, 40.0, sending_kbps=54.0) == 40.0  # lower than the one before: news of the link again
    # Loss after the echo's 3 s ends it too, the REMB climbing or not.
    f = probed()
    f.on_nack(13.2)
    assert f.on_remb(13.5, 41.0, sending_kbps=54.0) == 41.0
