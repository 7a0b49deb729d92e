"""The codec switched mid-call with the stream's shape: a two-codec rate-quality table (sender/shapes.py), the sender's
payload format per frame (sender/payload.py), the receiver's jitter buffer keeping each frame's codec
(receiver/jitter.py), and a loopback call that goes VP8 -> H.264 -> VP8 -> H.264 with one output per source frame."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import av
import msgpack
import numpy as np
import pytest
from aiortc import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from codec.video import to_uint8
from protocol import messages as msg
from protocol.timing import SYNC_FRAMES
from receiver.jitter import DrainingJitterBuffer
from sender.encoder import RealtimeEncoder
from sender.payload import PayloadHookError, PayloadSwitch
from sender.session import AdaptiveLowResTrack
from sender.shapes import Shape, ShapeTableError, load_table
from tests.calls import scheduled_call

H, W = 144, 176


def two_codec_result(fps: float) -> dict:
    """A `vsae bench rd` result with both codecs: plain VP8 cannot hold under 40 kbps (as at 176x144), plain x264
    holds 15 and beats the model's shapes from there; at a few kbps only VP8 s8t4 holds."""
    def method(name, codec, scale, temporal, points):
        return {"name": name, "codec": codec, "scale": scale, "temporal": temporal,
                "points": [{"target_kbps": k, "kbps": k, "psnr": p} for k, p in points]}

    return {"fps": fps, "setting": "heldout", "split": "half", "methods": [
        method("vp8", "vp8", 1, 1, [(40, 30.0), (100, 35.0), (200, 36.0)]),
        method("x264", "x264", 1, 1, [(15, 27.0), (40, 29.5), (100, 34.0), (200, 35.0)]),
        method("vsae-vp8-s8-t4", "vp8", 8, 4, [(3, 25.0), (8, 26.0), (12, 26.2)]),
        method("vsae-x264-s8-t4", "x264", 8, 4, [(6, 20.0), (12, 24.0)]),
    ]}


@pytest.fixture()
def table_path(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(two_codec_result(15.0)))
    return path


def test_a_two_codec_table_holds_each_codecs_shapes_and_picks_across_them(table_path):
    table = load_table(table_path, ("vp8", "h264"), fps=15.0)
    assert table.codecs == ("vp8", "h264") and table.codec == "vp8"
    assert {c.shape for c in table.curves} == {Shape(1, 1, True, "vp8"), Shape(1, 1, True, "h264"),
                                               Shape(8, 4, False, "vp8"), Shape(8, 4, False, "h264")}
    assert table.best(lambda s: 150.0)[0] == Shape(1, 1, True, "vp8")
    assert table.best(lambda s: 25.0)[0] == Shape(1, 1, True, "h264")  # plain VP8 cannot hold 25 kbps
    assert table.best(lambda s: 5.0)[0] == Shape(8, 4, False, "vp8")
    assert Shape(1, 1, True, "h264").label == "plain h264"
    # One codec reads as before: the other's shapes are not candidates.
    assert {c.shape.codec for c in load_table(table_path, "vp8", fps=15.0).curves} == {"vp8"}
    assert table.best(lambda s: 25.0, among=[c.shape for c in table.curves if c.shape.codec == "vp8"])[0] == Shape(8, 4)


def test_a_codec_the_table_did_not_measure_is_one_clear_error(tmp_path):
    result = two_codec_result(15.0)
    result["methods"] = [m for m in result["methods"] if m["codec"] != "x264"]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result))
    with pytest.raises(ShapeTableError, match="no shape measured with h264.*--codecs h264"):
        load_table(path, ("vp8", "h264"))


def test_the_track_leaves_out_the_codecs_the_receiver_did_not_take(table_path, carphone):
    table = load_table(table_path, ("vp8", "h264"), fps=15.0)
    track = AdaptiveLowResTrack(to_uint8(carphone), 24, 15.0, 6000, "vp8", 25.0, table, start_kbps=25.0)
    assert track.shape == Shape(1, 1, True, "h264") and track.codec == "h264"
    assert track.encoder.codec_name == "h264"
    assert track._sync_encoder.codec_name == "vp8"  # the sync frames go in the first codec
    track.keep_codecs(("vp8",))
    assert {s.codec for s in track.shapes} == {"vp8"}
    assert track.shape.codec == "vp8" and track.encoder.codec_name == "vp8"
    assert [s["shape"] for s in track.shape_log] == ["s8t4 vp8"]  # the h264 start was never sent


def negotiated() -> list[RTCRtpCodecParameters]:
    return [RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=97),
            RTCRtpCodecParameters(mimeType="video/rtx", clockRate=90000, payloadType=98, parameters={"apt": 97}),
            RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=99,
                                  parameters={"packetization-mode": "1", "profile-level-id": "42001f"}),
            RTCRtpCodecParameters(mimeType="video/rtx", clockRate=90000, payloadType=100, parameters={"apt": 99})]


def encoded(codec: str, count: int, pts0: int = 0) -> list[av.Packet]:
    encoder = RealtimeEncoder(codec, 176, 144, 100.0, 15.0)
    rng = np.random.default_rng(0)
    return [encoder.encode(rng.integers(0, 255, (144, 176, 3), np.uint8), pts0 + 6000 * i) for i in range(count)]


def test_each_frame_goes_in_its_own_codecs_payload_format():
    switch = PayloadSwitch()
    switch.learn(negotiated())
    assert set(switch.negotiated) == {"vp8", "h264"} and switch.rtx_of == {97: 98, 99: 100}
    assert switch.current.payloadType == 97
    vp8, h264 = encoded("vp8", 2), encoded("h264", 2, pts0=12000)
    payloads, _ = switch.pack(vp8[0])
    assert switch.current.payloadType == 97 and payloads[0][0] & 0x10  # a VP8 payload descriptor (S bit)
    payloads, _ = switch.pack(h264[0])
    assert switch.current.payloadType == 99
    assert payloads[0][0] & 0x1F in (24, 28, 7)  # H.264 in RTP: STAP-A / FU-A / a single SPS NAL unit
    switch.pack(h264[1])
    switch.pack(vp8[1])
    assert [s["codec"] for s in switch.switches] == ["h264", "vp8"]  # the first frame was already VP8's


def test_a_frame_of_a_codec_the_receiver_did_not_take_is_refused():
    switch = PayloadSwitch()
    switch.learn(negotiated()[:2])
    with pytest.raises(PayloadHookError, match="took only vp8"):
        switch.pack(encoded("h264", 1)[0])


class FakeReceiver:
    """The names DrainingJitterBuffer reads from aiortc's RTCRtpReceiver, with two codecs and a decoder queue."""

    def __init__(self):
        self._RTCRtpReceiver__codecs = {97: SimpleNamespace(mimeType="video/VP8"),
                                        99: SimpleNamespace(mimeType="video/H264")}
        self._RTCRtpReceiver__decoder_thread = object()
        self._RTCRtpReceiver__timestamp_mapper = SimpleNamespace(map=lambda ts: ts)
        self._RTCRtpReceiver__decoder_queue = SimpleNamespace(put=lambda item: self.queue.append(item))
        self.queue: list = []


def rtp(seq: int, ts: int, pt: int, payload: bytes, marker: bool) -> RtpPacket:
    packet = RtpPacket(payload_type=pt, sequence_number=seq, timestamp=ts, marker=int(marker))
    packet.payload = payload
    packet._data = payload
    return packet


def test_the_jitter_buffer_hands_out_each_frame_with_its_own_codec():
    """The last VP8 frame's last packet is lost and comes back (retransmitted) after the H.264 keyframe that follows
    it: both frames leave at once, on a VP8 packet, each to the decoder in its own codec."""
    receiver = FakeReceiver()
    buffer = DrainingJitterBuffer(receiver, spawn=lambda coro: coro.close())
    vp8_key = bytes([0x10, 0x00, 0x00, 0x00])  # S bit, partition 0; frame tag bit 0 clear: a key frame
    assert buffer.add(rtp(1, 1000, 97, vp8_key, marker=True))[1] is not None  # complete: handed back to aiortc
    assert buffer.add(rtp(2, 2000, 97, bytes([0x10, 0x01]), marker=False))[1] is None
    idr = b"\x00\x00\x00\x01\x65\x88"
    assert buffer.add(rtp(4, 3000, 99, idr, marker=True))[1] is None  # waits behind the hole at 3
    _, frame = buffer.add(rtp(3, 2000, 97, bytes([0x02]), marker=True))  # the retransmission
    assert frame is None  # aiortc would queue it with the arriving packet's codec (VP8): queued here instead
    assert [(codec.mimeType, f.timestamp) for codec, f in receiver.queue] == [("video/VP8", 2000), ("video/H264", 3000)]
    assert buffer.stats()["frames_by_codec"] == {"VP8": 2, "H264": 1}
    # The next frame, H.264 on an H.264 packet, goes back to aiortc as before.
    _, frame = buffer.add(rtp(5, 4000, 99, b"\x00\x00\x00\x01\x41\x9a", marker=True))
    assert frame is not None and frame.timestamp == 4000 and len(receiver.queue) == 2


def test_a_shape_message_names_its_codec_only_when_it_switches():
    plain = msg.Shape(first=4, scale=1, temporal=1, low_width=176, low_height=144, plain=True)
    assert b"codec" not in msg.encode(plain)  # an older receiver reads it as before
    h264 = msg.Shape(first=4, scale=1, temporal=1, low_width=176, low_height=144, plain=True, codec="h264")
    assert msg.decode(msg.encode(h264)) == h264
    bad = msgpack.unpackb(msg.encode(h264), raw=False)
    bad["codec"] = "mjpeg"
    with pytest.raises(msg.ProtocolError, match="shape.codec"):
        msg.decode(msgpack.packb(bad, use_bin_type=True))


def test_a_call_that_switches_codec_keeps_one_output_per_source_frame(model_bytes, tmp_path, monkeypatch):
    """A loopback call with the estimate stepped so that the table picks plain VP8, plain H.264, VP8 at s8t4, then
    plain H.264 again: the sender switches codec at keys on one RTP stream, the receiver decodes each codec's frames,
    and every source frame is output once."""
    fps, loops = 8.0, 4  # 48 frames, 6 s
    path = tmp_path / "results.json"
    path.write_text(json.dumps(two_codec_result(fps)))
    table = load_table(path, ("vp8", "h264"), fps=fps)
    frames, stats, result = scheduled_call(monkeypatch, tmp_path, model_bytes, table,
                                           [(0.0, 400.0), (1.2, 32.0), (2.8, 6.0), (4.3, 32.0)], fps, loops)
    log = result.extra["shape_log"]
    assert [s["shape"] for s in log] == ["plain vp8", "plain h264", "s8t4 vp8", "plain h264"], log
    assert result.extra["codecs_negotiated"] == ["vp8", "h264"]
    assert [s["codec"] for s in result.extra["codec_switches"]] == ["h264", "vp8", "h264"]
    firsts = [s["first"] for s in log]
    assert stats["frames_out"] == len(frames) * loops == result.receiver_frames_out
    assert [run[0] for run in stats["shape_runs"]][1:] == firsts  # the receiver followed each change at its key
    assert stats["shape_codecs"] == [[first, s["codec"]] for first, s in zip(firsts, log)]
    assert stats["frames_concealed"] == 0 and stats["shape_unannounced"] == 0
    # Every frame reached the decoder in its own codec: the keys of each run, the sync frames in the first codec
    # (VP8), and the trailer that pushes the last frame out in the last run's.
    ends = firsts[1:] + [len(frames) * loops]
    keys = {"VP8": SYNC_FRAMES, "H264": 0}
    for (first, s), end in zip(zip(firsts, log), ends):
        keys[s["codec"].upper()] += len(range(first, end, s["temporal"]))
    keys[log[-1]["codec"].upper()] += 1
    assert stats["frames_by_codec"] == keys
    assert stats["frames_plain"] == sum(end - first for (first, s), end in zip(zip(firsts, log), ends) if s["plain"])
    from receiver.cli import summary_line
    assert f"{stats['frames_plain']} frames plain h264 and vp8 at full size" in summary_line(stats)


def test_the_rd_bench_takes_h264_by_either_name_and_refuses_others():
    import argparse

    from bench.rd import codec_names

    assert codec_names("vp8,x264") == codec_names("VP8, h264") == ["vp8", "h264"]
    with pytest.raises(argparse.ArgumentTypeError, match="expected codecs from"):
        codec_names("vp8,mjpeg")


@pytest.mark.parametrize("extra,why", [
    (["--switch-codecs", "h264"], "--switch-codecs: the codec switches with the stream's shape"),
    (["--switch-codecs", "h264", "--input", "x.mp4"], "--switch-codecs: the codec switches with the stream's shape"),
    (["--switch-codecs", "h264", "--shapes", "VP8_ONLY"], "no shape measured with h264"),
])
def test_the_cli_refuses_a_switch_it_cannot_make_in_one_line(tmp_path, tiny_codec, capsys, extra, why):
    from codec import bundle
    from codec.cli import main

    model = tmp_path / "m.vsae"
    bundle.save(tiny_codec, model)
    result = two_codec_result(15.0)
    result["methods"] = [m for m in result["methods"] if m["codec"] != "x264"]
    (tmp_path / "vp8.json").write_text(json.dumps(result))
    extra = [str(tmp_path / "vp8.json") if a == "VP8_ONLY" else a for a in extra]
    video = [] if "--input" in extra else ["carphone", "--frames", "0:4"]
    code = main(["send", *video, "--model", str(model), "--connect", "127.0.0.1:9", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("vsae: error:") and why in err[0], err


class FakeSender:
    """The names sender.payload wraps on aiortc's RTCRtpSender, recording what aiortc would do with them."""

    def __init__(self, history: dict):
        self._enabled = True
        self._RTCRtpSender__rtx_payload_type = None
        self._RTCRtpSender__rtp_history = history
        self.track = None
        self.resent: list[tuple[int, int | None]] = []
        self.started_with = None

    async def send(self, parameters):
        self.started_with = parameters

    async def _run_rtp(self, codec):
        self.started_with = codec

    async def _next_encoded_frame(self, codec):
        raise AssertionError("replaced by sender.payload")

    async def _retransmit(self, sequence_number: int) -> None:
        self.resent.append((sequence_number, self._RTCRtpSender__rtx_payload_type))


def test_a_resent_packet_goes_in_its_own_payload_types_retransmission_format():
    from sender.payload import CurrentCodec, install

    history = {10: RtpPacket(payload_type=97, sequence_number=10), 11: RtpPacket(payload_type=99, sequence_number=11)}
    sender = FakeSender(history)
    told = []
    switch = install(sender, told.append)
    asyncio.run(sender.send(SimpleNamespace(codecs=negotiated())))
    assert told == [("vp8", "h264")] and switch.current.payloadType == 97
    asyncio.run(sender._run_rtp(negotiated()[0]))
    assert isinstance(sender.started_with, CurrentCodec) and sender.started_with.payloadType == 97
    switch.pack(encoded("h264", 1)[0])
    assert sender.started_with.payloadType == 99  # what aiortc stamps on the next packets
    for seq in (10, 11, 10):
        asyncio.run(sender._retransmit(seq))
    assert sender.resent == [(10, 98), (11, 100), (10, 98)]


def test_an_aiortc_without_the_hooks_is_one_clear_error():
    from sender.payload import install

    sender = FakeSender({})
    del sender._RTCRtpSender__rtp_history
    with pytest.raises(PayloadHookError, match="_RTCRtpSender__rtp_history.*pin aiortc"):
        install(sender)
