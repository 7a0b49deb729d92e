"""Transport feedback: the receiver's account of the video's arrivals (receiver/feedback.py), its RTCP form
(protocol/feedback.py, sent by receiver/jitter.py, read by sender/rtcp.py), and what the sender does with it
(sender/session.py, sender/bwe.py, sender/probe.py)."""

from __future__ import annotations

import asyncio

import pytest
from aiortc import RTCRtpSender
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, RtpPacket, pack_remb_fci

from protocol import feedback as fb
from protocol.messages import ProtocolError
from protocol.feedback import RTP_HEADER
from receiver.feedback import ABS_SEND_TIME_UNIT, FEEDBACK_S, ArrivalFeedback
from sender import rtcp
from sender.bwe import (DECREASE_HOLD_S, DELIVERED_SHARE, DRAIN_S, RESTORE_SHARE, FEEDBACK_HOLD_CLIMB_S, FEEDBACK_HOLD_QUEUE_S,
                        FEEDBACK_HOLD_S,
                        FEEDBACK_MIN_SHARE, FEEDBACK_PROBE_S, FEEDBACK_QUEUE_S, FULL_QUEUE_S, FULL_SHARE, FULL_STANDING_S, PROBE_RISE_S,
                        REMEASURED_SHARE, BandwidthEstimator)
from tests.fakes import FakeTransport


def abs_send_time(seconds: float) -> int:
    """aiortc's abs-send-time of a send time in seconds (6.18 fixed point, 24 bits)."""
    return round(seconds / ABS_SEND_TIME_UNIT) & 0xFFFFFF


# -- the FCI ----------------------------------------------------------------------------------------------
def test_the_fci_round_trips_and_refuses_anything_else():
    feedback = fb.Feedback(seq=65535, packets=3, bytes=2100, span_us=198_000, queue_us=287_500)
    data = fb.pack(feedback)
    assert len(data) == fb.FCI_BYTES and len(data) % 4 == 0 and fb.is_feedback(data)
    assert fb.unpack(data) == feedback
    assert not fb.is_feedback(pack_remb_fci(15_000, [1]))
    for bad in (data[:-1], data + b"\0\0\0\0", b"REMB" + data[4:], data[:4] + b"\x02" + data[5:],
                data[:16] + (fb.MAX_SPAN_US + 1).to_bytes(4, "big") + data[20:]):
        with pytest.raises(ProtocolError):
            fb.unpack(bad)


def test_a_newer_feedback_is_told_across_the_wrap():
    assert fb.newer(0, None) and fb.newer(5, 4) and not fb.newer(4, 4) and not fb.newer(3, 4)
    assert fb.newer(1, 65535) and not fb.newer(65535, 1)


# -- the receiver's account --------------------------------------------------------------------------------
def test_arrivals_tile_time_and_a_queue_shows_above_the_least_delay():
    arrivals = ArrivalFeedback()
    out, arrived, counted = [], [], []
    # 20 packets of 188 bytes, 0.1 s apart, 10 ms on the way; then 10 more, each waiting 50 ms longer than the last.
    # The sender's clock is 1000 s away from the receiver's, and its abs-send-time wraps (every 64 s) on the way.
    for k in range(30):
        sent = 62.0 + 0.1 * k
        arrival = 1000.0 + sent + 0.010 + (0.05 * (k - 19) if k >= 20 else 0.0)
        arrivals.on_packet(arrival, 188 - RTP_HEADER, abs_send_time(sent))
        arrived.append(arrival)
        feedback = arrivals.due(arrival)
        if feedback is not None:
            out.append(feedback)
            counted.append(arrival)
    assert [f.seq for f in out] == list(range(len(out)))
    # The first packet's bytes came before any time was measured; then every packet, over the time from first to last.
    assert sum(f.packets for f in out) <= 29 and sum(f.bytes for f in out) == 188 * sum(f.packets for f in out)
    # The spans tile: they add up to the time from the first arrival to the last one counted.
    assert sum(f.span_us for f in out) == pytest.approx((counted[-1] - arrived[0]) * 1e6, abs=len(out))
    queues = [f.queue_us / 1e6 for f in out]
    assert max(queues[:6]) < 0.001  # steady: no queue, whatever the clocks' offset and the wrap
    # The least of the last feedback's packets: the queue (less the low's slow drift, BASE_DRIFT, since it was seen).
    assert queues[-1] == pytest.approx(0.05 * 9, abs=0.01)
    assert all(FEEDBACK_S * 1e6 <= f.span_us for f in out[1:])


def test_no_feedback_before_its_interval_or_without_packets():
    arrivals = ArrivalFeedback()
    assert arrivals.due(5.0) is None
    arrivals.on_packet(5.0, 100, abs_send_time(1.0))
    assert arrivals.due(5.0) is None  # one packet starts the clock: nothing measured yet
    arrivals.on_packet(5.1, 100, abs_send_time(1.1))
    first = arrivals.due(5.1)
    assert first is not None and first.packets == 1 and first.span_us == 100_000
    arrivals.on_packet(5.15, 100, None)  # no abs-send-time: counted, no delay read
    assert arrivals.due(5.15) is None  # too soon
    assert arrivals.due(5.4).packets == 1
    assert arrivals.due(6.0) is None  # nothing arrived since


def test_the_jitter_buffer_sends_the_fci_in_an_application_rtcp_message():
    from tests.test_jitter import FakeReceiver

    sent = []
    receiver = FakeReceiver()

    async def send_rtcp(packet):
        sent.append(packet)

    receiver._send_rtcp = send_rtcp
    receiver._RTCRtpReceiver__rtcp_ssrc = None
    receiver.buffer._spawn = lambda coro: asyncio.run(coro)
    data = fb.pack(fb.Feedback(seq=1, packets=2, bytes=300, span_us=200_000, queue_us=0))
    receiver.buffer.send_feedback(1234, data)
    assert sent == []  # no RTCP SSRC yet: aiortc sends no PLI then either
    receiver._RTCRtpReceiver__rtcp_ssrc = 77
    receiver.buffer.send_feedback(1234, data)
    packet = RtcpPsfbPacket.parse(bytes(sent[0])[4:], RTCP_PSFB_APP)
    assert (packet.ssrc, packet.media_ssrc, packet.fci) == (77, 1234, data)
    seen = []
    receiver.buffer.on_arrival = lambda p, now: seen.append((p.sequence_number, now))
    receiver.now = 2.5
    receiver.receive(RtpPacket(payload_type=96, sequence_number=9, timestamp=0, payload=b"\x10\x00\x01"))
    assert seen == [(9, 2.5)]


def test_the_rtcp_hook_hands_feedback_for_this_sender_only():
    async def scenario():
        sender = RTCRtpSender("video", transport=FakeTransport())
        seen = {"feedback": [], "remb": []}
        rtcp.observe(sender, lambda *a: None, seen["remb"].append, lambda: None, on_feedback=seen["feedback"].append)
        ours = sender._ssrc
        data = fb.pack(fb.Feedback(seq=1, packets=2, bytes=300, span_us=200_000, queue_us=40_000))
        await sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=9, media_ssrc=ours, fci=data))
        await sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=9, media_ssrc=ours ^ 1, fci=data))
        await sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=9, media_ssrc=0,
                                                        fci=pack_remb_fci(15_000, [ours])))
        return seen

    seen = asyncio.run(scenario())
    assert len(seen["feedback"]) == 1 and fb.unpack(seen["feedback"][0]).queue_us == 40_000
    assert seen["remb"] == [15.0]


# -- the estimate ------------------------------------------------------------------------------------------
def narrowed(kbps: float = 60.0, floor: float = 5.0) -> BandwidthEstimator:
    bwe = BandwidthEstimator(start_kbps=kbps, min_kbps=floor)
    bwe.capacity_kbps = kbps  # past the slow start
    return bwe


def test_a_standing_queue_cuts_under_what_the_link_delivered_deep_enough_to_drain_it():
    bwe = narrowed()
    assert bwe.on_feedback(10.0, 0.6, 16.0, sending_kbps=45.0) == pytest.approx(
        16.0 * max(FEEDBACK_MIN_SHARE, DELIVERED_SHARE - 0.6 / DRAIN_S))
    assert bwe.capacity_kbps == pytest.approx(bwe.link_kbps(16.0)) and bwe.overflow_at == 10.0  # resends pause, as after a cut for a full queue
    assert bwe.history[-1].reason == "a 600 ms queue, 16.0 kbps delivered"
    bwe = narrowed()
    assert bwe.on_feedback(10.0, FEEDBACK_QUEUE_S, 40.0, sending_kbps=45.0) == pytest.approx(
        40.0 * (DELIVERED_SHARE - FEEDBACK_QUEUE_S / DRAIN_S))


def test_a_short_queue_or_an_unmeasured_rate_cuts_nothing():
    bwe = narrowed()
    # A 1900-byte frame's own time at 60 kbps is 0.25 s: the reading is mostly that.
    assert bwe.on_feedback(10.0, FEEDBACK_QUEUE_S * 0.9, 16.0, sending_kbps=45.0, packet_bits=15200) == 60.0
    assert bwe.on_feedback(10.2, 0.6, None, sending_kbps=45.0) == 60.0  # no rate to cut to
    assert bwe.queue_at == 10.2  # ... but a queue, for the REMB and the loss rule


def test_after_a_feedback_cut_a_draining_queue_is_not_cut_again_a_growing_one_is():
    bwe = narrowed()
    first = bwe.on_feedback(10.0, 0.5, 20.0, sending_kbps=45.0)
    assert bwe.on_feedback(10.3, 0.6, 18.0, sending_kbps=first) == first  # packets sent before the cut, still queued
    assert bwe.on_feedback(11.2, 0.4, 18.0, sending_kbps=first) == first  # past the queue: shorter, draining
    assert bwe.on_feedback(11.3, 0.7, 14.0, sending_kbps=first) < first  # longer than at the cut: not enough
    third = bwe.estimate(11.3)
    assert bwe.on_feedback(11.3 + 0.7 + DECREASE_HOLD_S, 0.4, 10.0, sending_kbps=third) < third  # still standing


def test_a_probes_own_queue_is_not_cut_for():
    bwe = narrowed()
    bwe.on_probe_sent(10.0)
    assert bwe.on_feedback(10.0 + FEEDBACK_PROBE_S / 2, 0.5, 20.0, sending_kbps=45.0) == 60.0
    assert bwe.on_feedback(10.0 + FEEDBACK_PROBE_S, 0.5, 20.0, sending_kbps=45.0) < 60.0


def test_a_small_queue_holds_the_climb_and_its_end_lets_it_go_on():
    free, bwe = narrowed(kbps=14.0), narrowed(kbps=14.0)
    free.max_kbps = bwe.max_kbps = 60.0
    assert free.on_report(10.5, 0.0, sending_kbps=14.0, expected=30) > 14.0  # a clean report climbs ...
    bwe.on_feedback(10.0, FEEDBACK_HOLD_QUEUE_S, None, sending_kbps=14.0)  # a queue, the link's rate not yet measured
    assert bwe.on_report(10.5, 0.0, sending_kbps=14.0, expected=30) == 14.0  # ... not with a queue in the feedback
    bwe.on_feedback(10.6, FEEDBACK_HOLD_QUEUE_S / 2, None, sending_kbps=14.0)
    assert bwe.on_report(10.0 + FEEDBACK_HOLD_CLIMB_S, 0.0, sending_kbps=14.0, expected=30) > 14.0


def test_no_probe_while_the_feedback_shows_a_standing_queue():
    from tests.test_probe import Link
    from sender.probe import Prober

    link = Link()
    prober = Prober(link, lambda data: None)
    assert prober.due(10.0)
    small = 100 * 8  # small packets: their own time at 14 kbps is 57 ms, and the readings leave room for a probe
    for k in range(3):
        link.estimator.on_feedback(9.0 + 0.1 * k, 0.005, None, sending_kbps=14.0, packet_bits=small)
    link.estimator.on_feedback(9.5, FEEDBACK_HOLD_QUEUE_S + 0.06, None, sending_kbps=14.0, packet_bits=small)
    assert not prober.due(10.0)
    assert prober.due(9.5 + FEEDBACK_HOLD_CLIMB_S)


# -- the sender's side ---------------------------------------------------------------------------------------
def test_the_track_reads_the_delivered_rate_over_busy_feedbacks_and_ignores_bad_or_stale_ones():
    from sender.session import DATA_HEADROOM_KBPS, FEEDBACK_RATE_S, PACKET_OVERHEAD_BYTES, LowResTrack
    import numpy as np

    now = [100.0]
    track = LowResTrack(np.zeros((4, 36, 44, 3), np.uint8), [0, 1, 2, 3], 15.0, 6000, "vp8", 60.0, 2, clock=lambda: now[0])
    heard = []
    sizes = []
    track.estimator.on_feedback = lambda t, queue, delivered, sending_kbps=None, packet_bits=0.0, packet_bytes=None: (
        heard.append((queue, delivered)), sizes.append(packet_bytes))
    send = lambda seq, queue_ms, span_ms=200, size=500, packets=2: track.on_feedback(fb.pack(  # noqa: E731
        fb.Feedback(seq=seq, packets=packets, bytes=size, span_us=span_ms * 1000, queue_us=queue_ms * 1000)))
    send(1, 400)
    assert heard == []  # not asked for: ignored
    track.feedback_asked = True
    send(1, 400)
    assert heard[-1] == (0.4, None)  # one busy feedback of 0.2 s: too short to time the link
    send(2, 500)
    wire = (1000 + 4 * (PACKET_OVERHEAD_BYTES - RTP_HEADER)) * 8 / 1000 / 0.4 + DATA_HEADROOM_KBPS
    assert heard[-1] == (0.5, pytest.approx(wire))
    send(2, 900)  # a repeat (RTCP may come twice, or late): ignored
    send(0, 900)
    assert len(heard) == 2
    send(3, 10)  # the queue is gone: the link is no longer busy, its rate not measured
    assert heard[-1] == (0.01, None)
    track.on_feedback(b"VSAE\x07" + bytes(19))  # another version: counted, ignored
    assert track.feedback_refused == 1 and len(heard) == 3
    assert FEEDBACK_RATE_S <= 0.4
    assert sizes == [None] * 3  # two packets a feedback: whose was the least delay is not said
    send(4, 20, size=231, packets=1)
    assert sizes[-1] == 231  # one packet: its size, as the receiver counted it (sender/bwe.py, SIZE_READINGS)


def test_a_loopback_call_with_feedback_on_carries_it_in_rtcp(model_bytes, tmp_path):
    """A real call (aiortc, DTLS-SRTP) asking for feedback: the receiver sends it as the video arrives, the sender's
    estimate hears every one (nothing refused), and no data-channel message carries it."""
    from codec.video import read_video
    from receiver.session import Receiver, ReceiveOptions
    from sender.session import SendOptions, send

    frames, _ = read_video("carphone", frames="0:12")

    async def run():
        receiver = Receiver(ReceiveOptions(port=0, output=str(tmp_path / "out.mp4")))
        port = await receiver.start()
        try:
            result = await send(frames, 8.0, model_bytes, SendOptions(port=port, kbps=30.0, fps=8.0, loop=3, model_pace="off",
                                                                      early_start=False, feedback="on"))
            return await receiver.wait(30), result
        finally:
            await receiver.stop()

    stats, result = asyncio.run(run())
    heard = result.extra["bwe"]["feedbacks"]
    assert stats["feedbacks"] >= 5 and 0.8 * stats["feedbacks"] <= heard <= stats["feedbacks"], (stats["feedbacks"], heard)
    assert all(f["queue_ms"] < 1000 for f in result.extra["feedback_log"])
    assert stats["frames_out"] == 36


def test_a_remb_under_what_is_sent_ends_the_start_only_where_the_feedback_reads_no_room():
    def stepped(queue_s: float) -> BandwidthEstimator:
        bwe = BandwidthEstimator(start_kbps=13.5, min_kbps=5.0, max_kbps=40.0)
        bwe.on_report(1.0, 0.0, sending_kbps=13.5)  # a step up, to 17.55
        for k in range(4):  # 300-byte packets: 137 ms each on the link at 17.5 kbps
            bwe.on_feedback(1.2 + 0.25 * k, queue_s, None, sending_kbps=17.5, packet_bits=300 * 8)
        return bwe

    # The clean row: the feedback reads no queue, and aiortc's REMB climbs behind what is sent: the start goes on,
    # at the step it took, bounded by the REMB.
    clean = stepped(0.0)
    assert clean.reads_room(2.0)
    assert clean.on_remb(2.0, 17.4, sending_kbps=17.5) == pytest.approx(13.5 * 1.3)
    assert clean.starting and clean.start_rembs_overruled == 1
    clean.on_report(3.0, 0.0, sending_kbps=17.5, expected=30)
    assert clean.estimate(3.0) == pytest.approx(17.55)  # the REMB heard bounds the next step
    clean.on_remb(3.5, 18.4, sending_kbps=17.5)
    clean.on_report(4.0, 0.0, sending_kbps=17.5, expected=30)
    assert clean.estimate(4.0) == pytest.approx(18.4)
    # Over a cap the feedback reads a queue (over the packets' own time): the same REMB ends the start at the base.
    capped = stepped(0.25)
    assert not capped.reads_room(2.0)
    assert capped.on_remb(2.0, 17.4, sending_kbps=17.5) == pytest.approx(17.5 / 1.3)
    assert not capped.starting and "end of the start" in capped.reason


def test_a_lower_remb_with_an_rtt_queue_is_not_believed_where_the_feedback_reads_room_and_nothing_is_lost():
    """The RTT's queue is evidence for a lower REMB, but not where the transport feedback reads the link much faster than
    the estimate and nothing was lost: that RTT is the busy receiver's (the lab's stepped cap with shapes, s4t1 on a
    60 kbps link: RTT 125 ms over a low of 50, the feedback reading 0-29 ms, REMBs believed from 57 to 36 kbps)."""
    def busy(queue_s: float) -> BandwidthEstimator:
        bwe = narrowed(kbps=57.0)
        bwe.on_report(20.0, 0.0, rtt_s=0.05, sending_kbps=57.0)
        bwe.on_report(21.0, 0.0, rtt_s=0.40, sending_kbps=57.0)  # smoothed 0.225 s: a queue, by the RTT
        for k in range(4):  # 1400-byte packets: 196 ms each on the link at 57 kbps
            bwe.on_feedback(21.0 + 0.25 * k, queue_s, None, sending_kbps=57.0, packet_bits=1400 * 8)
        return bwe

    roomy = busy(0.01)
    assert roomy.reads_room(22.0)
    assert roomy.on_remb(22.0, 46.0, sending_kbps=57.0) == 57.0 and roomy.rembs_ignored == 1
    roomy.on_nack(22.1)  # a packet lost: the REMB is news of the link again
    assert roomy.on_remb(22.2, 46.0, sending_kbps=57.0) == pytest.approx(46.0)
    # Where the feedback reads a queue of the packets' own time or more, the RTT's evidence stands, as before.
    full = busy(0.2)
    assert not full.reads_room(22.0)
    assert full.on_remb(22.0, 46.0, sending_kbps=57.0) == pytest.approx(46.0)


def test_the_link_is_the_delivered_rate_less_the_data_channels_share_at_any_rate():
    """The sender adds the data channels' usual share to each delivered rate; the over-read is that share whatever the
    link's rate, so a drained cut goes back to RESTORE_SHARE of the rest, and the capacity is noted there. As a share of
    the reading (0.75) the lab's 60 kbps cap was restored to 46.8 kbps, under the 51 that count as climbed back."""
    from sender.session import DATA_HEADROOM_KBPS

    def drained(link: float) -> BandwidthEstimator:
        bwe = BandwidthEstimator(start_kbps=link, min_kbps=5.0, max_kbps=70.0, data_kbps=DATA_HEADROOM_KBPS)
        bwe.capacity_kbps = link
        read = link + DATA_HEADROOM_KBPS  # the video had the link to itself while the queue stood
        cut = bwe.on_feedback(10.0, 0.4, read, sending_kbps=link)
        assert cut < link and bwe.capacity_kbps == pytest.approx(link)
        bwe.on_feedback(10.0 + 0.4 + FEEDBACK_HOLD_S + 0.1, 0.01, None, sending_kbps=cut)
        assert bwe.history[-1].reason.startswith("the queue drained")
        return bwe

    assert drained(15.0).estimate(11.0) == pytest.approx(RESTORE_SHARE * 15.0)  # 13.5: the 15 kbps cap's as before
    wide = drained(59.4).estimate(11.0)
    assert wide == pytest.approx(RESTORE_SHARE * 59.4) and wide >= 0.85 * 60.0


def test_the_queue_the_slow_starts_last_step_built_drains_behind_its_end():
    def ended() -> tuple[BandwidthEstimator, float]:
        bwe = BandwidthEstimator(start_kbps=13.5, min_kbps=5.0, max_kbps=40.0)
        bwe.on_report(1.0, 0.0, sending_kbps=13.5)  # a step up, over a 15 kbps link
        bwe.on_feedback(1.9, 0.25, None, sending_kbps=bwe.estimate(1.9))  # its queue building
        end = bwe.on_remb(2.0, 15.5, sending_kbps=bwe.estimate(2.0))
        assert "end of the start" in bwe.reason and end == pytest.approx(13.5)
        return bwe, end

    # The end took the step back; the new target's keyframe on the queue it left reads long: no second cut.
    bwe, end = ended()
    assert bwe.on_feedback(2.4, 0.38, 17.8, sending_kbps=end) == end
    # A much lower rate delivered still cuts, as inside a cut's hold.
    assert bwe.on_feedback(2.5, 0.38, 8.0, sending_kbps=end) < REMEASURED_SHARE * end
    # Past the hold the same long queue is the link's again.
    bwe, end = ended()
    later = 2.0 + 0.25 + FEEDBACK_HOLD_S + 0.05  # the queue read at the end, and the hold after it
    assert bwe.on_feedback(later, 0.38, 17.8, sending_kbps=end) < end


def test_once_the_queue_drained_the_estimate_goes_back_to_under_the_link_at_once():
    bwe = narrowed()
    drained = bwe.on_feedback(10.0, 0.6, 16.0, sending_kbps=45.0)
    assert drained < DELIVERED_SHARE * 16.0
    assert bwe.on_feedback(10.2, FEEDBACK_HOLD_QUEUE_S / 2, None, sending_kbps=drained) == drained  # too soon to tell
    assert bwe.on_feedback(10.5, FEEDBACK_HOLD_QUEUE_S, None, sending_kbps=drained) == drained  # still a queue
    assert bwe.on_feedback(10.7, FEEDBACK_HOLD_QUEUE_S / 2, None, sending_kbps=drained) == pytest.approx(RESTORE_SHARE * 16.0)
    assert bwe.history[-1].reason.startswith("the queue drained")
    assert bwe.on_feedback(11.0, 0.0, None, sending_kbps=drained) == pytest.approx(RESTORE_SHARE * 16.0)  # once
    # Another cut in between (a receiver report's heavy loss) keeps its own level.
    bwe = narrowed()
    bwe.on_feedback(10.0, 0.6, 16.0, sending_kbps=45.0)
    bwe.on_report(10.0 + DECREASE_HOLD_S, 0.5, sending_kbps=9.0, expected=30)
    after = bwe.estimate(11.6)
    assert bwe.on_feedback(11.7, 0.0, None, sending_kbps=after) == after


def test_a_slow_starts_queue_once_drained_goes_back_to_its_last_steps_base():
    """A queue read inside the slow start, after a step, is that step's overshoot: the cut drains it, then the estimate
    goes back to the step's base (as a REMB ending the start goes), not to RESTORE_SHARE of a delivered rate that reads
    near the floor; unless the link delivered much less than that base (START_BASE_DELIVERED): it narrowed under the
    start."""
    from sender.bwe import FAST_INCREASE

    def stepped() -> BandwidthEstimator:
        bwe = BandwidthEstimator(start_kbps=13.5, min_kbps=10.96, max_kbps=27.0)
        bwe.on_report(0.5, 0.0, sending_kbps=13.5)  # the start's first step
        assert bwe.starting and bwe.estimate(0.5) == pytest.approx(13.5 * FAST_INCREASE)
        return bwe

    bwe = stepped()
    sent = bwe.estimate(0.5)
    cut = bwe.on_feedback(1.0, 0.38, 14.8, sending_kbps=sent)  # the lab's 15 kbps cap: to the floor, to drain it
    assert cut == pytest.approx(10.96) and not bwe.starting
    assert bwe.on_feedback(1.0 + FEEDBACK_HOLD_S + 0.1, 0.01, None, sending_kbps=cut) == pytest.approx(sent / FAST_INCREASE)
    assert RESTORE_SHARE * 14.8 < sent / FAST_INCREASE
    # A link that narrowed under the start delivers far less than the step's base: the base is not the link's. The lab's
    # stepped cap, 60 -> 15 kbps while the start climbed: a 700 ms queue at 17.6 kbps delivered under a base of 44.
    bwe = BandwidthEstimator(start_kbps=34.1, min_kbps=10.96, max_kbps=66.0)
    bwe.on_report(0.5, 0.0, sending_kbps=34.1)
    bwe.on_report(1.5, 0.0, sending_kbps=bwe.estimate(0.5))
    climbed = bwe.estimate(1.5)
    assert bwe.starting and climbed / FAST_INCREASE > 40.0
    cut = bwe.on_feedback(2.0, 0.7, 17.6, sending_kbps=climbed)
    assert cut < 15.0
    drained = bwe.on_feedback(2.0 + 0.7 + FEEDBACK_HOLD_S + 0.1, 0.01, None, sending_kbps=cut)
    assert drained <= RESTORE_SHARE * 17.6
    # Past the start a queue's cut goes back to RESTORE_SHARE of the delivered rate, as before.
    bwe = narrowed(kbps=sent)
    cut = bwe.on_feedback(10.0, 0.38, 14.8, sending_kbps=sent)
    assert bwe.on_feedback(10.0 + FEEDBACK_HOLD_S + 0.1, 0.01, None, sending_kbps=cut) == pytest.approx(RESTORE_SHARE * 14.8)


def test_a_narrow_links_readings_falling_say_it_widened():
    from sender.bwe import WIDENED_HISTORY_S, WIDENED_QUEUE_S

    bwe = narrowed(kbps=13.0)
    t = 10.0
    for _ in range(10):  # a narrow link: each small packet's own time on it
        t += 0.25
        bwe.on_feedback(t, 0.04, None, sending_kbps=13.0)
    assert not bwe.link_widened(t)
    for k in range(3):  # the lab's 15 kbps cap as its picture stilled: 14, 0, 9 ms, the packets ~100 bytes
        t += 0.25
        bwe.on_feedback(t, WIDENED_QUEUE_S / (2 + k % 2), None, sending_kbps=13.0)
        assert not bwe.link_widened(t)  # no widening: the link is as narrow as before
    t += 0.25
    bwe.on_feedback(t, WIDENED_QUEUE_S / 3, None, sending_kbps=13.0)
    assert bwe.link_widened(t)
    assert not bwe.link_widened(t + 1.5)  # old news
    # A link that read low before too (a wide one) has not widened.
    wide = narrowed()
    for k in range(12):
        wide.on_feedback(10.0 + 0.25 * k, 0.005 if k % 3 else 0.02, None, sending_kbps=45.0)
    assert not wide.link_widened(13.0)
    assert len(wide.readings) <= WIDENED_HISTORY_S / 0.25 + 1


def test_theil_sen_slope_is_the_median_of_the_pairwise_slopes_as_scipy_reads_it():
    import random

    from scipy.stats import theilslopes

    from sender.bwe import theil_sen_slope

    rng = random.Random(37)
    for _ in range(50):
        xs = [rng.randrange(100, 400) for _ in range(rng.randrange(2, 8))]
        ys = [rng.uniform(0.0, 0.3) for _ in xs]
        if len(set(xs)) > 1:
            assert theil_sen_slope(xs, ys) == pytest.approx(theilslopes(ys, xs).slope)
    assert theil_sen_slope([200, 200], [0.1, 0.2]) is None
    # One reading far off the line (a packet held by the receiver's busy loop) does not tilt it.
    line = [0.0001 * x for x in (140, 190, 260, 330, 400)]
    assert theil_sen_slope([140, 190, 260, 330, 400], line[:4] + [0.12]) == pytest.approx(0.0001)


@pytest.mark.parametrize("link_kbps,widened", [(60.0, True), (15.0, False)])
def test_one_packet_readings_against_their_sizes_say_a_narrow_link_widened(link_kbps, widened):
    """The stepped cap with shapes, its narrow spell at s4t4: one 150-400 byte packet a feedback. On the widened 60 kbps
    link each read its own time there over the least packet's, 0-35 ms, never four in a row under WIDENED_QUEUE_S, and
    no probe went for the 8 s at 60. Against their sizes the readings lie on the link's time per byte. On a link as
    narrow as the estimate's they read its own rate: no widening."""
    from sender.bwe import SIZE_RATE_RATIO, WIDENED_QUEUE_S

    bwe = narrowed(kbps=13.0)
    t = 10.0
    for _ in range(10):  # the narrow spell: a standing queue over each packet's own time at 15 kbps
        t += 0.25
        bwe.on_feedback(t, 0.12, None, sending_kbps=13.0, packet_bytes=250)
    assert not bwe.link_widened(t)
    for size in (139, 195, 172, 281, 207, 292):  # stop 37's A/B run's sizes after the step up
        t += 0.25
        reading = (size - 139) * 8 / (link_kbps * 1000) + (0.0 if widened else 0.02)
        bwe.on_feedback(t, reading, None, sending_kbps=13.0, packet_bytes=size)
    assert bwe.sized_rate_kbps(t) == pytest.approx(link_kbps, rel=0.01)
    assert max(q for _, q in list(bwe.readings)[-4:]) >= WIDENED_QUEUE_S  # the rule by the readings alone reads nothing
    assert bwe.link_widened(t) is widened and (bwe.widened_at == t) is widened
    assert (bwe.sized_rate_kbps(t) >= SIZE_RATE_RATIO * bwe.estimate(t)) is widened


def test_one_packet_readings_say_nothing_while_a_queue_drains_or_their_sizes_are_alike():
    """Stop 37's replay: in two narrow spells a 150-280 ms queue draining while the sizes varied tilted the line to a
    wide link's slope. Readings over FEEDBACK_HOLD_QUEUE_S, or sizes within SIZE_SPREAD_BYTES, read no rate."""
    from sender.bwe import SIZE_READINGS, SIZE_SPREAD_BYTES

    draining = narrowed(kbps=11.0)
    t = 10.0
    for size, reading in ((226, 0.273), (370, 0.192), (224, 0.200), (145, 0.149), (328, 0.168), (279, 0.140)):
        t += 0.25
        draining.on_feedback(t, reading, None, sending_kbps=11.0, packet_bytes=size)
    assert draining.sized_rate_kbps(t) is None and not draining.link_widened(t)
    alike = narrowed(kbps=13.0)
    for k in range(SIZE_READINGS):
        size = 200 + k * (SIZE_SPREAD_BYTES - 1) // SIZE_READINGS
        alike.on_feedback(10.0 + 0.25 * k, 0.001 * k, None, sending_kbps=13.0, packet_bytes=size)
    assert alike.sized_rate_kbps(11.0) is None
    # Feedbacks of more than one packet carry no size to read (the session passes none).
    many = narrowed(kbps=13.0)
    for k in range(8):
        many.on_feedback(10.0 + 0.25 * k, 0.001 * k, None, sending_kbps=13.0)
    assert many.sized_rate_kbps(12.0) is None


def test_with_feedback_blind_probes_wait_longer_and_a_widened_link_is_probed_at_once():
    from tests.test_probe import Link
    from sender.bwe import WIDENED_FEEDBACKS
    from sender.probe import AFTER_SUCCESS_S, BACKOFF_FEEDBACK_S, QUIET_FEEDBACK_S, QUIET_S, Prober

    link = Link()
    link.estimator.lowered_at = link.estimator.feedback_cut_at = 10.0  # a cut for a standing queue (the step down)
    prober = Prober(link, lambda data: None)
    link.estimator.on_feedback(10.1, 0.04, None, sending_kbps=14.0)
    assert not prober.due(10.0 + QUIET_S + 0.1)  # feedback comes: no blind probe 3 s after the cut ...
    later = Link()
    later.estimator.lowered_at = later.estimator.feedback_cut_at = 10.0
    for k in range(3):
        later.estimator.on_feedback(24.5 + 0.1 * k, 0.005, None, sending_kbps=14.0, packet_bits=100 * 8)
    assert Prober(later, lambda data: None).due(10.0 + QUIET_FEEDBACK_S)  # ... only after QUIET_FEEDBACK_S
    # A decrease that showed no full link (the slow start ended on a REMB): probed blind after QUIET_S, as without feedback.
    # Where the feedback reads room (readings far under a packet's time at the estimate), and only there.
    for queue, room in ((0.01, True), (0.12, False)):
        other = Link()
        other.estimator.lowered_at = 10.0
        for k in range(4):
            other.estimator.on_feedback(11.0 + 0.25 * k, queue, None, sending_kbps=14.0, packet_bits=300 * 8)
        assert Prober(other, lambda data: None).due(10.0 + QUIET_S) is room
    prober.failures_in_a_row, prober.wait_s, prober.last_probe_at = 1, BACKOFF_FEEDBACK_S[0], 18.5
    t = 18.5
    for _ in range(8):
        t += 0.25
        link.estimator.on_feedback(t, 0.04, None, sending_kbps=14.0)
    assert not prober.due(t)
    for _ in range(WIDENED_FEEDBACKS):
        t += 0.25
        link.estimator.on_feedback(t, 0.0, None, sending_kbps=14.0)
    assert t - prober.last_probe_at < BACKOFF_FEEDBACK_S[0] and prober.due(t)  # the link widened: at once
    assert t - prober.last_probe_at >= AFTER_SUCCESS_S


@pytest.mark.parametrize("reading,queue_seen", [(0.25, True), (0.02 + PROBE_RISE_S + 0.01, True), (0.02, False)])
def test_a_failed_probe_backs_off_long_only_when_the_feedback_showed_its_queue(reading, queue_seen):
    from tests.test_probe import Link, hearing_feedback, run_probe
    from sender.probe import BACKOFF_FEEDBACK_S, UNCONFIRMED_RETRY_S

    link = Link(estimate=14.0)
    # The video's packets beside the padding: queued on a full link, or a queue risen over the one before.
    prober, _ = run_probe(link, link_kbps=15.0, clock=hearing_feedback(link, reading))
    outcome = prober.outcomes[-1]
    assert not outcome.ok and outcome.confirmed is queue_seen
    assert prober.wait_s == (BACKOFF_FEEDBACK_S[0] if queue_seen else UNCONFIRMED_RETRY_S)


def test_a_queue_draining_is_not_a_link_widening():
    bwe = narrowed(kbps=13.0)
    t = 10.0
    for q in (0.01, 0.005, 0.012, 0.2, 0.21, 0.18, 0.16, 0.2, 0.008):  # a narrow link from the start, a probe's queue
        t += 0.25
        bwe.on_feedback(t, q, None, sending_kbps=13.0)
    bwe.on_feedback(t + 0.25, 0.004, None, sending_kbps=13.0)
    assert not bwe.link_widened(t + 0.25)


def test_feedback_stands_in_for_the_rtt_queue_signal():
    from sender.bwe import FEEDBACK_FRESH_S, RTT_QUEUE_S

    plain, fed = narrowed(kbps=14.0), narrowed(kbps=14.0)
    for bwe in (plain, fed):
        bwe.on_report(1.0, 0.0, rtt_s=0.05, sending_kbps=14.0, expected=30)
    fed.on_feedback(2.5, 0.05, None, sending_kbps=14.0)
    for bwe in (plain, fed):
        bwe.on_report(3.0, 0.0, rtt_s=0.05 + 3 * RTT_QUEUE_S, sending_kbps=14.0, expected=30)
        bwe.on_report(3.5, 0.0, rtt_s=0.05 + 3 * RTT_QUEUE_S, sending_kbps=14.0, expected=30)
    assert plain.estimate(3.5) < 14.0 and plain.history[-1].reason.startswith("RTT")
    assert fed.estimate(3.5) >= 14.0
    fed.on_report(2.5 + FEEDBACK_FRESH_S + 0.5, 0.0, rtt_s=0.05 + 3 * RTT_QUEUE_S, sending_kbps=14.0, expected=30)
    assert fed.history[-1].reason.startswith("RTT")  # the feedback stopped: the RTT speaks again


def test_a_widened_link_is_probed_within_the_quiet_time_and_a_success_followed_up():
    from tests.test_probe import Link
    from sender.probe import AFTER_SUCCESS_S, QUIET_S, Prober

    link = Link()
    prober = Prober(link, lambda data: None)
    link.estimator.lowered_at = 20.0  # a REMB's trim, a moment before the link widened
    t = 18.0
    for q in (0.04,) * 8 + (0.0, 0.004) * 2:
        t += 0.25
        link.estimator.on_feedback(t, q, None, sending_kbps=14.0)
    assert t - 20.0 < QUIET_S and prober.due(t)
    assert not prober.due(t + 2.0)  # the signal is fresh for a moment only
    # A success after the last decrease: the next probe follows at once, not a quiet time later.
    prober.last_probe_at = t + 0.5
    assert prober.due(t + 0.5 + AFTER_SUCCESS_S)


def test_a_packets_own_time_on_a_narrow_link_does_not_hold_the_climb():
    bwe = narrowed(kbps=12.0)
    bwe.max_kbps = 60.0
    own = 360 * 8 / 1000 / 12.0  # a 360-byte packet alone at 12 kbps: 0.24 s
    bwe.on_feedback(10.0, own + FEEDBACK_HOLD_QUEUE_S / 2, None, sending_kbps=12.0, packet_bits=360 * 8)
    assert bwe.on_report(10.5, 0.0, sending_kbps=12.0, expected=30) > 12.0
    bwe.on_feedback(11.0, own + FEEDBACK_HOLD_QUEUE_S, None, sending_kbps=12.0, packet_bits=360 * 8)
    held = bwe.estimate(11.0)
    assert bwe.on_report(11.5, 0.0, sending_kbps=12.0, expected=30) == held


# -- a full link: the trim, the probes it stops, the cut a new measure repeats --------------------------------------------
STANDING_BITS = 400 * 8  # 400-byte packets: 53 ms each at 60 kbps


def standing(bwe: BandwidthEstimator, start: float, delivered: list[float], step: float = 0.2) -> float:
    """Feedback reading a queue FULL_QUEUE_S and a little over the packets' own time, at the given delivered rates."""
    t = start
    for kbps in delivered:
        own = STANDING_BITS / 1000 / bwe.estimate(t)
        bwe.on_feedback(t, own + FULL_QUEUE_S + 0.02, kbps, sending_kbps=bwe.estimate(t), packet_bits=STANDING_BITS)
        t += step
    return t - step


def test_a_queue_standing_at_a_full_link_trims_to_its_rate_once_per_climb():
    bwe = narrowed()
    t = standing(bwe, 10.0, [56.0, 64.0, 58.0])
    assert t - 10.0 < FULL_STANDING_S and bwe.estimate(t) == 60.0  # not yet: a moment's queue is a frame's burst
    t = standing(bwe, t + 0.2, [57.0])
    assert bwe.estimate(t) == pytest.approx(FULL_SHARE * 58.0)  # the median rate delivered while it stood
    assert bwe.history[-1].reason.endswith("the link is full") and bwe.full_at() == t
    assert bwe.overflow_at < t  # no loss: resends do not pause
    # The queue stands on (a competing flow fills it, or the video drains it slowly): no second trim, whatever is read.
    t = standing(bwe, t + 0.2, [50.0] * 20)
    assert bwe.estimate(t) == pytest.approx(FULL_SHARE * 58.0)
    # Once the estimate has climbed past the trim (a probe), a queue that stands again trims again ...
    bwe.on_probe_sent(t + 0.1)
    bwe.on_probe(t + 0.3, 62.0)
    t = standing(bwe, t + 0.1 + FEEDBACK_PROBE_S, [60.0] * 4)
    assert bwe.estimate(t) == pytest.approx(FULL_SHARE * 60.0)
    # ... but never under where the last trim left it: a flow beside the video keeps the queue standing.
    bwe.loss_kbps = 60.0
    t = standing(bwe, t + 2.0, [40.0] * 6)
    assert bwe.estimate(t) == pytest.approx(FULL_SHARE * 60.0)


def test_the_trim_takes_its_share_of_the_reading_not_of_the_links_share_of_it():
    """A trim goes to FULL_SHARE of the delivered rate as read, data channels' share and all: while a queue stands their
    packets may be among the video's (the lab's 15 kbps cap read 14.3 kbps so, and 0.95 of the 11.3 left held the call
    at the floor for 8 s). The capacity is noted at the link's share (`link_kbps`)."""
    from sender.session import DATA_HEADROOM_KBPS

    bwe = BandwidthEstimator(start_kbps=13.5, min_kbps=10.96, max_kbps=27.0, data_kbps=DATA_HEADROOM_KBPS)
    bwe.capacity_kbps = 15.0  # past the slow start
    bwe.loss_kbps = 14.9
    own = STANDING_BITS / 1000 / 14.9
    for k in range(4):
        bwe.on_feedback(10.0 + 0.2 * k, own + FULL_QUEUE_S + 0.01, 14.3, sending_kbps=14.9, packet_bits=STANDING_BITS)
    assert bwe.estimate(11.0) == pytest.approx(FULL_SHARE * 14.3) and "the link is full" in bwe.reason
    assert bwe.capacity_kbps == pytest.approx(14.3 - DATA_HEADROOM_KBPS)


def test_no_trim_in_the_slow_start_nor_from_a_probes_own_queue():
    start = BandwidthEstimator(start_kbps=60.0, min_kbps=5.0)
    assert start.starting
    standing(start, 10.0, [40.0] * 6)
    assert start.estimate(11.0) == 60.0  # the start ends on the REMB or a cut, back to the last step's base
    bwe = narrowed()
    bwe.on_probe_sent(10.0)
    t = standing(bwe, 10.0, [30.0] * 4)  # the padding's share of the link: the video's rate reads low
    assert bwe.estimate(t) == 60.0
    t = standing(bwe, 10.0 + FEEDBACK_PROBE_S, [58.0] * 4)
    assert bwe.estimate(t) == pytest.approx(FULL_SHARE * 58.0)  # from the readings after the probe's only


def test_a_full_link_stops_follow_up_and_blind_probes():
    from tests.test_probe import Link
    from sender.probe import AFTER_SUCCESS_S, QUIET_FEEDBACK_S, Prober

    link = Link(estimate=50.0, request=70.0)
    link.estimator.lowered_at = 5.0
    prober = Prober(link, lambda data: None)
    prober.last_probe_at = 9.0  # a success
    link.estimator.on_feedback(8.9, 0.01, None, sending_kbps=50.0, packet_bits=STANDING_BITS)
    assert prober.due(9.0 + AFTER_SUCCESS_S)  # followed up at once ...
    own = STANDING_BITS / 1000 / 50.0
    for k in range(3):  # ... unless a queue then stood at the link's rate, short of the hold's
        link.estimator.on_feedback(9.1 + 0.2 * k, own + FULL_QUEUE_S + 0.01, 52.0, sending_kbps=50.0, packet_bits=STANDING_BITS)
    assert FULL_QUEUE_S + 0.01 < FEEDBACK_HOLD_QUEUE_S and link.estimator.feedback_full_at < 9.0
    assert not prober.due(9.5 + AFTER_SUCCESS_S) and not prober.due(12.0)
    assert link.estimator.full_at() == pytest.approx(9.5)
    link.estimator.on_feedback(9.5 + QUIET_FEEDBACK_S - 1, 0.0, None, sending_kbps=50.0, packet_bits=STANDING_BITS)
    assert not prober.due(9.5 + QUIET_FEEDBACK_S - 0.5)


def test_inside_a_cuts_hold_a_much_lower_rate_measured_cuts_again():
    bwe = narrowed()
    first = bwe.on_feedback(10.0, 0.4, 40.0, sending_kbps=45.0)  # its rate counted arrivals from before the link narrowed
    share = DELIVERED_SHARE - 0.45 / DRAIN_S
    assert share * 30.0 >= REMEASURED_SHARE * first  # a little lower: still the first cut's queue draining
    assert bwe.on_feedback(10.2, 0.45, 30.0, sending_kbps=first) == first
    assert share * 18.0 < REMEASURED_SHARE * first  # far lower: the link is narrower than the cut took it for
    assert bwe.on_feedback(10.4, 0.45, 18.0, sending_kbps=first) == pytest.approx(share * 18.0)


def test_a_cut_held_up_by_the_floor_goes_on_when_a_sparser_shape_lowers_it():
    bwe = narrowed(floor=16.9)  # s4t1: 6 kbps of video costs 16.9 on the wire at 15 packets a second
    assert bwe.on_feedback(10.0, 0.8, 16.5, sending_kbps=60.0) == 16.9  # the cut wants 8.3: held at the floor
    bwe.move_floor(10.1, 13.0)  # s8t2 takes over: 7.5 packets a second
    assert bwe.estimate(10.1) == 13.0 and bwe.history[-1].reason.startswith("the floor moved")
    later = narrowed(floor=16.9)
    later.on_feedback(10.0, 0.8, 16.5, sending_kbps=60.0)
    later.move_floor(10.0 + DECREASE_HOLD_S, 13.0)  # too late: the cut is old news
    assert later.estimate(12.0) == 16.9
    above = narrowed(floor=13.0)
    above.on_feedback(10.0, 0.4, 30.0, sending_kbps=60.0)  # a cut that the floor did not hold
    cut = above.estimate(10.0)
    above.move_floor(10.1, 11.0)
    assert above.estimate(10.1) == cut


@pytest.mark.parametrize("name", ["probe", "feedback"])
def test_an_unknown_switch_mode_is_one_clear_error(name):
    import numpy as np

    from sender.session import SendOptions, SessionError, send

    with pytest.raises(SessionError, match=f"{name} must be one of auto, on, off"):
        asyncio.run(send(np.zeros((2, 16, 16, 3), np.uint8), 15.0, b"", SendOptions(**{name: "maybe"})))


def test_a_probe_is_judged_against_the_rate_its_messages_left_at():
    """A sender's loop that sleeps past each gap sends its cluster slower than planned; a link that carries that
    cluster at the rate it left at is not a failed probe."""
    from tests.test_probe import Link, run_probe
    from sender.probe import PROBE_MESSAGES

    link = Link(estimate=14.0)
    late = 0.012
    prober, _ = run_probe(link, link_kbps=200.0, late=late)
    outcome = prober.outcomes[-1]
    assert outcome.ok and link.successes
    assert outcome.sent_ms == pytest.approx(1000 * (prober.plan(0.0)[3] + late) * (PROBE_MESSAGES - 1), rel=0.01)
