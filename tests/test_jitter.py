"""The receiver's draining jitter buffer, packet by packet (pure: a fake clock and a stand-in receiver)."""

from __future__ import annotations

import queue
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcrtpreceiver import NackGenerator, TimestampMapper
from aiortc.rtp import RtpPacket

from receiver.jitter import CLOCK_RATE, MAX_WAIT_S, NACK_REPEATS, NACK_RETRY_S, PLI_RETRY_S, DrainingJitterBuffer, is_keyframe

PT = 96
TICKS = 6000  # 15 fps on the 90 kHz clock
KEY, DELTA = b"\x00", b"\x01"  # VP8 frame tags: bit 0 clear on key frames


class FakeReceiver:
    """The four attributes of aiortc's RTCRtpReceiver the buffer uses, and its own handling of `add`."""

    def __init__(self):
        self._RTCRtpReceiver__codecs = {PT: SimpleNamespace(mimeType="video/VP8")}
        self._RTCRtpReceiver__decoder_thread = object()
        self._RTCRtpReceiver__timestamp_mapper = TimestampMapper()
        self._RTCRtpReceiver__decoder_queue = queue.Queue()
        self._RTCRtpReceiver__nack_generator = NackGenerator()
        self.now = 0.0
        self.nacks: list[tuple[float, list[int]]] = []
        self.buffer = DrainingJitterBuffer(self, clock=lambda: self.now, spawn=lambda _: None)
        self.plis = 0

    def _send_rtcp_nack(self, ssrc: int, lost: list[int]) -> None:
        self.nacks.append((self.now, lost))

    def receive(self, packet: RtpPacket) -> None:
        """What RTCRtpReceiver._handle_rtp_packet does with the buffer's answer."""
        self._RTCRtpReceiver__nack_generator.add(packet)
        pli, frame = self.buffer.add(packet)
        self.plis += pli
        if frame is not None:
            frame.timestamp = self._RTCRtpReceiver__timestamp_mapper.map(frame.timestamp)
            self._RTCRtpReceiver__decoder_queue.put((None, frame))

    def decoded(self) -> list[tuple[int, bytes]]:
        """(frame number, payload) of every frame handed to the decoder so far."""
        out = []
        q = self._RTCRtpReceiver__decoder_queue
        while not q.empty():
            frame = q.get()[1]
            out.append((frame.data[1], frame.data))  # the frame number its first packet carries (see `packets`)
        return out


def packets(frame: int, first_seq: int, parts: int = 1, kind: bytes = DELTA) -> list[RtpPacket]:
    """The RTP packets of frame `frame` (timestamps from 0), marker on the last."""
    out = []
    for k in range(parts):
        p = RtpPacket(payload_type=PT, sequence_number=(first_seq + k) % 65536, timestamp=frame * TICKS,
                      marker=int(k == parts - 1))
        p._data = (kind if k == 0 else b"") + bytes([frame % 256, k])
        p.payload = bytes([0x10 if k == 0 else 0x00]) + p._data  # VP8 descriptor: S bit on the first packet
        out.append(p)
    return out


def stream(frames: range, parts: int = 1, key_at: tuple[int, ...] = (0,), seq0: int = 100) -> dict[int, list[RtpPacket]]:
    return {f: packets(f, seq0 + (f - frames.start) * parts, parts, KEY if f in key_at else DELTA) for f in frames}


def deliver(receiver: FakeReceiver, frame_packets: list[RtpPacket], frame: int) -> None:
    receiver.now = frame * TICKS / CLOCK_RATE  # packets arrive in real time
    for p in frame_packets:
        receiver.receive(p)


def test_each_frame_leaves_when_its_last_packet_arrives():
    """aiortc's buffer holds a frame until the next frame's first packet: one frame interval of latency."""
    r = FakeReceiver()
    s = stream(range(4), parts=3)
    for f in range(4):
        deliver(r, s[f][:2], f)
        assert [n for n, _ in r.decoded()] == []  # the frame is not complete yet
        deliver(r, s[f][2:], f)
        assert [n for n, _ in r.decoded()] == [f]


def test_recovered_hole_releases_every_waiting_frame_at_once():
    """A NACKed packet comes back: the frames behind it all leave, in order (aiortc's buffer: one per packet)."""
    r = FakeReceiver()
    s = stream(range(6), parts=2)
    deliver(r, s[0], 0)
    deliver(r, s[1][:1], 1)  # frame 1's second packet is lost for now
    for f in (2, 3, 4):
        deliver(r, s[f], f)
    assert [n for n, _ in r.decoded()] == [0]
    deliver(r, s[1][1:], 4)  # the retransmission
    assert [n for n, _ in r.decoded()] == [1, 2, 3, 4]
    assert r.buffer.skips == 0 and r.plis == 0

    stock = JitterBuffer(capacity=512, is_video=True)
    released = [frame for p in s[0] + s[1][:1] + s[2] + s[3] + s[4] + s[1][1:] if (frame := stock.add(p)[1])]
    assert len(released) < 4  # the stock buffer keeps the backlog


def test_unrecoverable_hole_is_skipped_to_the_next_keyframe_with_a_pli():
    r = FakeReceiver()
    s = stream(range(30), key_at=(0, 20))
    for f in range(5):
        deliver(r, s[f], f)
    # Frame 5 never arrives. The hole is dated by the last frame handed out (4): wait while the newest packet
    # is within MAX_WAIT_S of it.
    last_waiting = 4 + int(MAX_WAIT_S * CLOCK_RATE / TICKS)
    for f in range(6, last_waiting + 1):
        deliver(r, s[f], f)
    assert r.buffer.skips == 0 and r.plis == 0
    deliver(r, s[last_waiting + 1], last_waiting + 1)  # now the hole is older than MAX_WAIT_S
    assert r.buffer.skips == 1 and r.plis == 1 and r.buffer.awaiting_keyframe
    for f in range(last_waiting + 2, 30):
        deliver(r, s[f], f)
    out = [n for n, _ in r.decoded()]
    assert out == [0, 1, 2, 3, 4] + list(range(20, 30))  # nothing that references the lost frame
    assert not r.buffer.awaiting_keyframe and len(r.buffer.recoveries_ms) == 1
    # The PLI was repeated while waiting (frames 6+wait .. 20 span > PLI_RETRY_S), not on every packet.
    waited_s = (20 - (last_waiting + 1)) * TICKS / CLOCK_RATE
    assert 1 + int(waited_s / PLI_RETRY_S) - 1 <= r.plis <= 1 + int(waited_s / PLI_RETRY_S) + 1
    assert r.buffer.recoveries_ms[0] == pytest.approx(waited_s * 1000, abs=1)


def test_a_hole_is_nacked_again_until_it_is_filled_or_given_up():
    """aiortc NACKs a gap once; a lost NACK or retransmission is asked for again every NACK_RETRY_S."""
    r = FakeReceiver()
    s = stream(range(30))
    for f in range(3):
        deliver(r, s[f], f)
    for f in range(4, 30):  # frame 3 (sequence 103) never comes
        deliver(r, s[f], f)
        if r.buffer.skips:
            break
    times = [t for t, _ in r.nacks]
    assert r.nacks and all(lost == [103] for _, lost in r.nacks)
    assert times[0] >= 4 * TICKS / CLOCK_RATE + NACK_RETRY_S - 1e-9  # not at once: aiortc NACKed it then
    assert all(b - a >= NACK_RETRY_S - 1e-9 for a, b in zip(times, times[1:]))
    assert len(r.nacks) == NACK_REPEATS  # then no more: on a congested link retransmissions only add load
    # Given up on, it is gone from aiortc's NACK list too (aiortc re-NACKs every missing packet at each new loss).
    assert r.buffer.skips == 1 and 103 not in r._RTCRtpReceiver__nack_generator.missing


def test_outage_skips_at_the_first_packet_after_it():
    """3 s without packets: waiting for retransmissions would only hand out 3-second-old frames."""
    r = FakeReceiver()
    s = stream(range(100), key_at=(0, 70))
    for f in range(10):
        deliver(r, s[f], f)
    deliver(r, s[55], 55)  # frames 10..54 (3 s) were lost
    assert r.buffer.skips == 1 and r.plis == 1
    for f in range(10, 55):  # their late retransmissions are dropped as too old
        r.receive(s[f][0])
    for f in range(56, 100):
        deliver(r, s[f], f)
    assert [n for n, _ in r.decoded()] == list(range(10)) + list(range(70, 100))


def test_frame_of_the_packet_that_triggers_a_skip_is_kept():
    r = FakeReceiver()
    s = stream(range(40), parts=3, key_at=(0, 30))
    for f in range(3):
        deliver(r, s[f], f)
    deliver(r, s[30][:2], 30)  # frames 3..29 lost; keyframe 30 starts arriving: the skip happens here
    assert r.buffer.skips == 1
    deliver(r, s[30][2:], 30)
    assert [n for n, _ in r.decoded()] == [0, 1, 2, 30]
    assert r.decoded() == [] and not r.buffer.awaiting_keyframe


def test_is_keyframe():
    assert is_keyframe("video/VP8", b"\x10\x02\x00") and not is_keyframe("video/VP8", b"\x11\x02\x00")
    idr = b"\x00\x00\x00\x01\x67\x42" + b"\x00\x00\x00\x01\x68\xce" + b"\x00\x00\x00\x01\x65\x88"
    assert is_keyframe("video/H264", idr)
    assert not is_keyframe("video/H264", b"\x00\x00\x00\x01\x41\x9a")
    assert not is_keyframe("video/VP8", b"")


@settings(max_examples=300, deadline=None)
@given(
    seq0=st.integers(0, 65535),
    parts=st.lists(st.integers(1, 4), min_size=30, max_size=120),
    events=st.lists(st.tuples(st.sampled_from(["drop", "dup", "swap", "late"]), st.integers(0, 10_000)), max_size=40),
    keys=st.sets(st.integers(0, 119), max_size=10),
)
def test_any_mix_of_loss_reordering_and_duplicates_is_handled(seq0, parts, events, keys):
    """No exception (inside aiortc it would close the connection), frames leave in time order, each whole."""
    r = FakeReceiver()
    sent, seq = [], seq0
    for f, n in enumerate(parts):
        sent += [(f, p) for p in packets(f, seq, n, KEY if f == 0 or f in keys else DELTA)]
        seq += n
    arrivals = list(sent)
    for kind, where in events:
        i = where % len(arrivals)
        if kind == "drop":
            arrivals.pop(i)
        elif kind == "dup":
            arrivals.insert(min(len(arrivals), i + 3), arrivals[i])
        elif kind == "swap" and i + 1 < len(arrivals):
            arrivals[i], arrivals[i + 1] = arrivals[i + 1], arrivals[i]
        elif kind == "late":  # a retransmission, a second or more later
            arrivals.insert(min(len(arrivals), i + 20), arrivals[i])
    for f, p in arrivals:
        r.now = max(r.now, f * TICKS / CLOCK_RATE)
        r.receive(p)
    out = r.decoded()
    numbers = [n for n, _ in out]
    assert numbers == sorted(set(numbers))
    for n, data in out:
        assert data == b"".join(p._data for p in packets(n, 0, parts[n], data[:1]))
