"""The fault lab: the impairment relay's packet fates (pure, always run) and real streams across network
namespaces (root and iproute2 only; skipped with the reason otherwise)."""

from __future__ import annotations

import subprocess
import struct

import pytest

from bench.faults import SETTLE_SHARE, NetworkLab, Scenario, lab_available, per_second, plot_per_second, run_scenario, settling
from bench.impair import Impairment, Relay, packet_kind

SENDER = bytes([10, 77, 1, 1])
RECEIVER = bytes([10, 77, 2, 2])


def udp_packet(payload: bytes, src: bytes = SENDER, dst: bytes = RECEIVER) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0, 64, 17, 0, src, dst)
    return header + struct.pack("!HHHH", 5000, 6000, 8 + len(payload), 0) + payload


RTP = udp_packet(bytes([0x80, 96]) + bytes(40))
DTLS = udp_packet(bytes([23, 0xFE, 0xFD]) + bytes(60))
BACK_RTP = udp_packet(bytes([0x80, 96]) + bytes(40), src=RECEIVER, dst=SENDER)


def fates(relay: Relay, packet: bytes, count: int, start: float = 0.0, step: float = 0.001) -> list[float | None]:
    return [relay.fate(packet, start + i * step)[1] for i in range(count)]


def test_packet_kinds_follow_rfc7983():
    assert packet_kind(bytes([0x80, 96])) == "rtp" and packet_kind(bytes([22, 0xFE])) == "dtls"
    assert packet_kind(bytes([0, 1])) == "stun" and packet_kind(b"") == "other"
    assert packet_kind(bytes([0x80, 200])) == "rtcp" and packet_kind(bytes([0x81, 206])) == "rtcp"  # SR, PLI/REMB


def test_an_rtcp_sender_report_does_not_start_the_calls_clock():
    relay = Relay(Impairment(rate_kbps=15), Impairment(), "10.77.2.2")
    sender_report = udp_packet(bytes([0x80, 200]) + bytes(50))
    relay.fate(sender_report, 0.0)
    assert relay.first_media is None and relay.fate(DTLS, 0.1)[1] == 0.0  # the model transfer is not capped yet
    relay.fate(RTP, 0.2)
    assert relay.first_media == 0.2 and relay.directions["forward"].counts["rtcp"] == 1


def test_random_loss_rate_and_directions():
    relay = Relay(Impairment(loss=0.1), Impairment(), "10.77.2.2", seed=3)
    forward = fates(relay, RTP, 20000)
    backward = fates(relay, BACK_RTP, 2000)
    assert 0.09 < sum(f is None for f in forward) / 20000 < 0.11
    assert all(f == 0.0 for f in backward)
    assert relay.directions["forward"].counts["lost_random"] == sum(f is None for f in forward)


def test_gilbert_elliott_losses_come_in_bursts():
    p, r = 0.02, 0.25
    relay = Relay(Impairment(burst_p=p, burst_r=r), Impairment(), "10.77.2.2", seed=1)
    lost = [f is None for f in fates(relay, RTP, 50000)]
    rate = sum(lost) / len(lost)
    assert abs(rate - p / (p + r)) < 0.015  # the chain's stationary share of bad packets
    runs, run = [], 0
    for x in lost + [False]:
        if x:
            run += 1
        elif run:
            runs.append(run)
            run = 0
    assert 3.4 < sum(runs) / len(runs) < 4.6  # mean burst 1 / r = 4 packets (random loss: ~1)


def test_delay_jitter_and_reordering():
    relay = Relay(Impairment(delay_ms=100, jitter_ms=30, reorder=0.1), Impairment(), "10.77.2.2", seed=2)
    delays = fates(relay, RTP, 5000)
    assert all(d is not None for d in delays)
    fast = [d for d in delays if d == 0.0]
    slow = [d for d in delays if d]
    assert 0.08 < len(fast) / len(delays) < 0.12
    assert min(slow) >= 0.07 - 1e-9 and max(slow) <= 0.13 + 1e-9 and abs(sum(slow) / len(slow) - 0.1) < 0.003


def test_rate_cap_spaces_packets_and_drops_past_the_queue_limit():
    relay = Relay(Impairment(rate_kbps=100), Impairment(), "10.77.2.2")
    assert relay.fate(DTLS, 0.0)[1] == 0.0  # before media: the model transfer is not capped
    relay.fate(RTP, 0.0)
    # 100 packets of 70 bytes offered at once: each takes 5.6 ms on a 100 kbps link, the queue holds 0.3 s.
    delays = fates(relay, RTP, 100, start=0.0, step=0.0)
    kept = [d for d in delays if d is not None]
    assert kept == sorted(kept) and abs((kept[1] - kept[0]) - len(RTP) * 8 / 100e3) < 1e-9
    assert max(kept) <= 0.3 + 0.01 and delays.count(None) > 0


def test_rate_steps_change_the_cap_from_the_first_media_packet_and_a_cap_can_cover_the_model_transfer():
    relay = Relay(Impairment(rate_kbps=60, rate_steps=[[2.0, 15], [4.0, 60]]), Impairment(), "10.77.2.2")
    d = relay.directions["forward"]
    assert d.rate_at(None) == 0 and d.rate_at(0.5) == 60 and d.rate_at(2.5) == 15 and d.rate_at(4.0) == 60
    relay.fate(RTP, 10.0)  # media starts at 10 s
    spacing = len(RTP) * 8 / 15e3
    first, second = relay.fate(RTP, 12.5)[1], relay.fate(RTP, 12.5)[1]  # 15 kbps from 12 s: each takes its own spacing
    assert abs(first - spacing) < 1e-9 and abs(second - 2 * spacing) < 1e-9
    assert Relay(Impairment(rate_kbps=30, rate_from_start=True), Impairment(), "10.77.2.2").directions["forward"].rate_at(None) == 30
    capped = Relay(Impairment(rate_kbps=30, rate_from_start=True), Impairment(), "10.77.2.2")
    capped.fate(DTLS, 0.0)
    assert capped.fate(DTLS, 0.0)[1] > 0  # the model transfer waits in the cap's queue


def test_per_second_counts_split_delivered_bytes_by_kind_and_count_drops():
    tcp = bytearray(udp_packet(bytes(40)))
    tcp[9] = 6
    relay = Relay(Impairment(rate_kbps=100), Impairment(), "10.77.2.2")
    relay.fate(DTLS, 0.0)  # before media: not in the call's seconds
    for i in range(10):
        relay.fate(RTP, 1.0 + i * 0.05)
    relay.fate(bytes(tcp), 1.6)
    relay.fate(DTLS, 2.2)
    fates(relay, RTP, 100, start=2.3, step=0.0)  # a burst past the 0.3 s queue
    seconds = relay.report()["forward"]["per_second"]
    assert [s["t"] for s in seconds] == [0, 1]
    assert seconds[0]["rtp"] == 10 * len(RTP) and seconds[0]["tcp"] == len(tcp) and seconds[0]["dropped"] == 0
    assert seconds[1]["dtls"] == len(DTLS) and seconds[1]["dropped"] == relay.directions["forward"].counts["lost_queue"] > 0
    assert relay.directions["forward"].counts["tcp"] == 1


def test_outage_is_timed_from_the_first_media_packet_and_model_loss_hits_only_dtls_before_it():
    relay = Relay(Impairment(outage_after_media_s=1.0, outage_s=2.0, model_loss=1.0), Impairment(), "10.77.2.2")
    assert relay.fate(DTLS, 0.0)[1] is None  # model transfer: every data-channel packet lost
    assert relay.fate(RTP, 0.5)[1] == 0.0  # first media packet (not lost: model loss is DTLS only)
    assert relay.fate(DTLS, 0.6)[1] == 0.0  # after media started, no model loss
    assert relay.fate(RTP, 1.4)[1] == 0.0
    assert relay.fate(RTP, 1.6)[1] is None and relay.fate(DTLS, 3.4)[1] is None  # outage 1.5 .. 3.5
    assert relay.fate(RTP, 3.6)[1] == 0.0
    counts = relay.directions["forward"].counts
    assert counts["lost_outage"] == 2 and counts["lost_model"] == 1


def test_loss_from_media_spares_the_model_transfer():
    relay = Relay(Impairment(loss=1.0, from_media=True), Impairment(), "10.77.2.2")
    assert relay.fate(DTLS, 0.0)[1] == 0.0
    assert relay.fate(RTP, 0.1)[1] is None


# -- real streams across namespaces ---------------------------------------------------------------------
needs_lab = pytest.mark.skipif(lab_available() is not None, reason=lab_available() or "")


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@needs_lab
def test_lab_removes_everything_even_on_failure():
    with pytest.raises(RuntimeError):
        with NetworkLab("t1") as lab:
            assert lab.receiver in _namespaces()
            raise RuntimeError("boom")
    assert "vsae-" not in _namespaces()


FRAMES = "0:40"


@needs_lab
@pytest.mark.parametrize("scenario, clean", [
    (Scenario("clean"), True),
    (Scenario("loss 10%", Impairment(loss=0.1), Impairment(loss=0.1)), False),
    (Scenario("outage 1 s", Impairment(outage_after_media_s=1.0, outage_s=1.0), Impairment(outage_after_media_s=1.0, outage_s=1.0)), False),
])
def test_stream_across_faults_ends_with_one_frame_per_source_frame(fitted_bundle, tmp_path, scenario, clean):
    with NetworkLab("t2") as lab:
        row = run_scenario(lab, scenario, "carphone", fitted_bundle, tmp_path / "run", frames=FRAMES, timeout=90)
    assert "vsae-" not in _namespaces()
    assert row["outcome"] == "completed", row.get("error")
    stats = row["stats"]
    assert stats["frames_out"] == 40 and stats["model_transferred"] is True
    relay = row["relay"]["forward"]["counts"]
    assert relay["rtp"] > 0 and row["relay"]["first_media_s"] is not None
    # Second by second: what crossed the link beside what the receiver showed (its PSNR, from the same second of frames).
    # The link's last second may hold only late packets (a retransmission, RTCP) after the stream's last source
    # second: it has no frames of its own, so no PSNR.
    seconds = per_second(row)
    shown = len(stats["psnr_per_second"])
    with_frames = [s for s in seconds if s["t"] < shown]
    assert shown >= 2 and len(with_frames) >= 2
    assert all(s["psnr"] is not None and 15.0 < s["psnr"] < 60.0 for s in with_frames)
    assert all(s["psnr"] is None for s in seconds if s["t"] >= shown)
    assert plot_per_second(row, seconds, tmp_path / "per_second.png").stat().st_size > 0
    if clean:
        assert stats["frames_concealed"] == 0 and relay["delivered"] == relay["packets"]
    else:
        lost = relay["packets"] - relay["delivered"]
        assert lost > 0  # the fault really hit packets
    if scenario.name.startswith("loss"):
        # Retransmission (NACK, repeated by the jitter buffer) recovers random loss: at most one hole is given
        # up, and it costs the frames until the PLI's keyframe is through (that keyframe's packets see the same
        # 10 % loss: 6 frames measured twice on a busy 2-core machine, so the bound is two such round trips).
        assert stats["jitter_skips"] <= 1
        if stats["recovery_ms_max"] is not None:
            assert stats["frames_concealed"] <= 8
        else:
            # No keyframe came after the hole before this 2.7 s stream ended (seen in a fresh-clone CI run: the
            # hole given up near the end, 12 concealed): the cost runs to the end, and every concealed output
            # frame is one of those the given-up low-res frames stood for (T = 2), nothing else.
            assert stats["frames_concealed"] <= max(8, 2 * stats["frames_skipped_jitter"])
    if scenario.name.startswith("outage"):
        # The receiver gave up on the lost second, asked for a keyframe by PLI and got it: the stream resumed
        # in the same processes, and the concealed span is counted (1 s at 15 fps is 15 source frames).
        assert stats["jitter_skips"] >= 1 and stats["keyframe_requests"] >= 1
        assert stats["sender"]["keyframe_requests"] >= 1
        assert stats["recovery_ms_max"] is not None and stats["recovery_ms_max"] < 2000
        assert 12 <= stats["frames_concealed"] <= 30
        assert stats["frames_received"] >= 20 - 8 - 4  # the frames after the outage arrived


def test_settling_after_each_step_on_the_links_measure_and_the_senders_rate():
    steps = [[0.0, 60.0], [8.0, 15.0], [16.0, 60.0]]
    seconds = []
    for t in range(24):
        video, wire, dropped = 40.0, 63.0, 0
        if 8 <= t < 16:
            video, wire, dropped = (17.0, 20.0, 5) if t < 10 else (12.0, 14.0, 0)  # settled down 2 s after its step
        elif t >= 16:
            video, wire = (12.0, 14.0) if t < 18 else (40.0, 63.0)  # the sender's rate back at 18; VP8 spends 40 of it
        seconds.append({"t": t, "video_kbps": video, "target_wire_kbps": wire, "dropped": dropped})
    strict = settling(seconds, steps)
    assert [x["settle_s"] for x in strict] == [2.0, None]  # the link's measure: 40 of 60 is no climb back
    assert [x["settle_s"] for x in settling(seconds, steps, sender_rate=True)] == [2.0, 2.0]
    seconds[20]["dropped"] = 3  # a second the rate overfilled the link does not count, whatever the target
    assert [x["settle_s"] for x in settling(seconds, steps, sender_rate=True)] == [2.0, 5.0]
    seconds[22]["video_kbps"] = SETTLE_SHARE * 60.0  # nor does a second the video filled alone make others count
    assert settling(seconds, steps)[1]["settle_s"] is None


def test_random_seed_matters():
    a = fates(Relay(Impairment(loss=0.5), Impairment(), "10.77.2.2", seed=1), RTP, 50)
    b = fates(Relay(Impairment(loss=0.5), Impairment(), "10.77.2.2", seed=2), RTP, 50)
    assert a != b


def test_the_stepped_rows_take_other_rates_and_a_codec_switch():
    import argparse

    from bench.faults import STEP_DOWN_S, STEP_UP_S, scenarios, step_rates

    assert step_rates("60,20,60") == (60.0, 20.0, 60.0)
    for bad in ("60,20", "60,x,60", "60,0,60", "60,nan,60"):
        with pytest.raises(argparse.ArgumentTypeError, match="three positive rates"):
            step_rates(bad)
    rows = {s.name: s for s in scenarios(20.0, "t.json", (60.0, 20.0, 60.0), 6, ("--switch-codecs", "h264"))}
    fixed, shapes = rows["cap steps 60-20-60 kbps"], rows["cap steps 60-20-60 kbps + shapes"]
    assert fixed.forward.rate_steps == [[STEP_DOWN_S, 20.0], [STEP_UP_S, 60.0]] and fixed.loops == shapes.loops == 6
    assert shapes.send_args == ("--shapes", "t.json", "--switch-codecs", "h264") and fixed.send_args == ()
    assert "cap steps 60-15-60 kbps" in {s.name for s in scenarios(20.0)}  # the default, as the tables name it
