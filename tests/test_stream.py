"""Sender and receiver over real WebRTC on loopback: in-process sessions, then the two-process CLI path."""

from __future__ import annotations

import asyncio
import fractions
import hashlib
import json

import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCDataChannel

from codec import bundle
from codec.ops import Codec
from codec.metrics import psnr_per_frame
from codec.video import read_video, to_tensor
from protocol import messages as msg
from protocol.peer import new_peer_connection, parse_address
from protocol.signaling import request_answer
from receiver import session as receiver_session
from receiver.session import Receiver, ReceiveOptions
from sender import session as sender_session
from sender.session import SendOptions, SessionError, low_res_size, send

FRAMES = 12


@pytest.fixture(scope="module")
def clip() -> tuple[np.ndarray, float]:
    return read_video("carphone", frames=f"0:{FRAMES}")


def frame_count(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


async def session(clip, model: bytes, tmp_path, options: SendOptions | None = None, models=None, reference=True, sends=1):
    """Start a receiver on a free port, run `sends` sender sessions against it, return (stats, results)."""
    frames, fps = clip
    receiver = Receiver(ReceiveOptions(port=0, output=str(tmp_path / "out.mp4"), reference=frames if reference else None,
                                       bicubic_output=str(tmp_path / "bicubic.mp4"), models=models or {}))
    port = await receiver.start()
    # Unpaced unless a test says otherwise: a clip of a second ends before a transfer paced inside the
    # estimate has climbed (tested on its own below).
    options = options or SendOptions(model_pace="off")
    options.port = port
    results = []
    try:
        for _ in range(sends):
            results.append(await send(frames, fps, model, options))
        stats = await receiver.wait(30)
    finally:
        await receiver.stop()
    return stats, results, receiver


def test_loopback_session_transfers_model_and_rebuilds_every_frame(clip, model_bytes, tmp_path):
    stats, (result,), _ = asyncio.run(session(clip, model_bytes, tmp_path))
    assert result.frames == FRAMES and result.frames_sent == FRAMES // 2  # T=2 by default
    assert result.model_bytes_sent >= len(model_bytes)
    assert "completed" in result.extra["ice_states"]
    assert stats["frames_in"] == stats["frames_out"] == FRAMES
    assert stats["model_transferred"] and stats["model_bytes"] == len(model_bytes)
    assert stats["datachannel_bytes"] >= len(model_bytes)
    assert stats["timestamps_anchored"]
    assert stats["frames_received"] == FRAMES // 2 and stats["frames_concealed"] == 0
    assert stats["video_kbps"] == pytest.approx(result.video_kbps, rel=1e-3) and stats["video_kbps"] > 0
    for key in ("fps_reconstruct", "latency_ms", "psnr", "psnr_bicubic", "ssim"):
        assert stats[key] is not None and stats[key] > 0, key
    assert frame_count(tmp_path / "out.mp4") == FRAMES
    assert frame_count(tmp_path / "bicubic.mp4") == FRAMES
    assert result.receiver_frames_out == FRAMES


def decoded(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_early_start_shows_bicubic_until_the_model_then_switches_at_a_key(clip, model_bytes, tmp_path):
    """The video starts before the model: the receiver shows the bicubic rebuild, takes the model chunks
    during the stream (paced to arrive about half way) and switches to the model at a key; one output per
    source frame throughout."""
    frames, _ = clip
    send_fps = 8.0  # 12 frames over 1.5 s
    pace = len(model_bytes) * 8 / 1000 / 0.6  # the model takes ~0.6 s
    stats, (result,), _ = asyncio.run(session(clip, model_bytes, tmp_path, SendOptions(fps=send_fps, model_pace=pace)))
    assert stats["early_start"] and result.extra["early_start"] and result.extra["model_shipped"]
    switch = stats["model_from_frame"]
    assert 0 < switch < FRAMES and switch % 2 == 0, switch  # a key (T = 2)
    assert stats["frames_before_model"] == switch
    assert 0 < stats["time_to_first_frame_ms"] < stats["time_to_model_ms"]
    assert result.extra["model_after_video_s"] > 0.3
    assert stats["frames_out"] == FRAMES and stats["model_transferred"]
    assert stats["psnr_before_model"] is not None and stats["psnr_after_model"] is not None
    shown, bicubic = decoded(tmp_path / "out.mp4"), decoded(tmp_path / "bicubic.mp4")
    assert len(shown) == len(bicubic) == FRAMES
    ref = to_tensor(frames)
    for i in range(FRAMES):
        same = float(psnr_per_frame(to_tensor(shown[i][None]), to_tensor(bicubic[i][None]))[0])
        if i < switch:
            assert same > 40, (i, same)  # the bicubic rebuild itself (through the same lossy writer, whose
            # look-ahead also sees the frames after the switch)
        else:
            assert same < 30, (i, same)  # the model's rebuild, which differs from it
    assert abs(stats["psnr_bicubic"] - float(psnr_per_frame(to_tensor(np.stack(bicubic)), ref).mean())) < 1.0


def test_early_model_paced_as_the_background_flow_arrives_in_link_sized_chunks(clip, model_bytes, tmp_path, monkeypatch):
    """`--model-pace estimate`: the model chunks are sized for the requested link (Config.chunk_size), every one
    goes through the background pacer, and the receiver assembles and verifies them during the call. The
    share is fixed here (the estimate's climb on a loaded loopback is not the subject: tests/test_sender_rate.py
    and tests/test_pacer.py cover the share and the pacing)."""
    share = 400.0  # kbps on the wire: the 52 KB model in about a second
    monkeypatch.setattr(sender_session.LowResTrack, "background_share_kbps", lambda self: share)
    loops = 4  # 48 frames at 8 fps: 6 s
    stats, (result,), _ = asyncio.run(session(clip, model_bytes, tmp_path, SendOptions(fps=8.0, loop=loops, model_pace="estimate"),
                                              reference=False))
    chunk = result.extra["model_chunk_bytes"]
    assert msg.MIN_CHUNK_BYTES <= chunk < msg.CHUNK_BYTES  # 0.2 s of a ~25 kbps link is under the minimum
    background = result.extra["background"]
    assert background is not None and result.extra["model_shipped"], result.extra
    assert background["messages"] == -(-len(model_bytes) // chunk)  # every chunk went through the pacer
    assert len(model_bytes) < background["wire_bytes"] < 1.2 * len(model_bytes)
    assert result.extra["model_after_video_s"] > 0.8 * len(model_bytes) * 8 / (share * 1000)  # paced, not at once
    assert stats["model_transferred"] and stats["model_bytes"] == len(model_bytes)
    assert 0 < stats["model_from_frame"] < FRAMES * loops
    assert stats["frames_out"] == FRAMES * loops


def test_a_loopback_receiver_gets_the_full_rate_at_once_any_other_a_slow_start():
    assert sender_session.resolved_start_kbps(SendOptions(host="127.0.0.1", kbps=30)) == 30
    assert sender_session.resolved_start_kbps(SendOptions(host="10.77.2.2", kbps=30)) is None  # the track's slow start
    assert sender_session.resolved_start_kbps(SendOptions(host="10.77.2.2", kbps=30, start_kbps=12)) == 12


def test_the_in_call_transfer_is_unpaced_to_a_loopback_receiver_and_paced_to_any_other():
    assert sender_session.resolved_model_pace(SendOptions(host="127.0.0.1")) == "off"
    assert sender_session.resolved_model_pace(SendOptions(host="localhost")) == "off"
    assert sender_session.resolved_model_pace(SendOptions(host="10.77.2.2")) == "estimate"
    assert sender_session.resolved_model_pace(SendOptions(host="127.0.0.1", model_pace="estimate")) == "estimate"
    assert sender_session.resolved_model_pace(SendOptions(host="10.77.2.2", model_pace=50.0)) == 50.0


def test_wait_for_model_starts_the_video_with_the_model(clip, model_bytes, tmp_path):
    stats, (result,), _ = asyncio.run(session(clip, model_bytes, tmp_path, SendOptions(early_start=False), reference=False))
    assert not stats["early_start"] and result.extra["early_start"] is False
    assert stats["model_from_frame"] == 0 and stats["frames_before_model"] == 0
    assert stats["time_to_model_ms"] < stats["time_to_first_frame_ms"]
    assert stats["frames_out"] == FRAMES


def test_ice_completes_on_uvloop(clip, model_bytes, tmp_path):
    """The CLI runs sender and receiver on uvloop; this is the check that aiortc works there."""
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        stats, (result,), _ = runner.run(session(clip, model_bytes, tmp_path, reference=False))
    assert "completed" in result.extra["ice_states"]
    assert stats["frames_out"] == FRAMES


def test_receiver_that_has_the_model_skips_the_transfer(clip, model_bytes, tiny_codec, tmp_path):
    models = {hashlib.sha256(model_bytes).hexdigest(): tiny_codec}
    stats, (result,), _ = asyncio.run(session(clip, model_bytes, tmp_path, models=models, reference=False))
    assert result.model_bytes_sent == 0
    assert not stats["model_transferred"]
    assert stats["datachannel_bytes"] < 10_000
    assert stats["frames_out"] == FRAMES and stats["psnr"] is None


def test_h264_track(clip, model_bytes, tmp_path):
    stats, (result,), _ = asyncio.run(session(clip, model_bytes, tmp_path, SendOptions(codec="h264", kbps=40), reference=False))
    assert stats["codec"] == "h264"
    assert stats["frames_out"] == FRAMES and stats["frames_received"] == FRAMES // 2


def test_frame_identity_follows_the_rtp_timestamps(clip, model_bytes, tmp_path):
    """With T=3, every received frame lands at its source index: each key of the bicubic output matches
    its own source frame better than the neighbours one frame either side."""
    # This is about indices: the four frames must be told from their neighbours. The whole stream would go by in
    # the slow start's half rate, and its first key is capped to 0.2 s of the target (sender/encoder.py): start
    # at the full rate, and give it 40 kbps.
    options = SendOptions(scale=2, temporal=3, kbps=40, start_kbps=40)
    stats, (result,), _ = asyncio.run(session(clip, model_bytes, tmp_path, options))
    assert stats["frames_received"] == 4 and stats["frames_out"] == FRAMES
    assert stats["low_size"] == [88, 72]
    source = to_tensor(clip[0])
    bicubic = to_tensor(read_video(tmp_path / "bicubic.mp4")[0])
    for i in (3, 6, 9):
        own = psnr_per_frame(bicubic[i : i + 1], source[i : i + 1])
        for j in (i - 1, i + 1):
            assert own > psnr_per_frame(bicubic[i : i + 1], source[j : j + 1]) + 0.5, (i, j)


def test_lost_frame_is_concealed(clip, model_bytes, tmp_path, monkeypatch):
    """The sender never sends source frame 4: the receiver rebuilds 3, 4, 5 across the gap and counts them."""
    prepare = sender_session.prepare_low_res

    def drop_four(frames, scale, temporal):
        indices, low = prepare(frames, scale, temporal)
        keep = [j for j, i in enumerate(indices) if i != 4]
        return [indices[j] for j in keep], low[keep]

    monkeypatch.setattr(sender_session, "prepare_low_res", drop_four)
    stats, (result,), _ = asyncio.run(session(clip, model_bytes, tmp_path))
    assert stats["frames_out"] == FRAMES
    assert stats["frames_received"] == FRAMES // 2 - 1
    assert stats["frames_concealed"] == 3
    # Every packet arrived, so the decoder's reference chain is intact: no keyframe is needed or asked for.
    assert stats["keyframe_requests"] == 0 and result.keyframe_requests == 0 and stats["jitter_skips"] == 0


class DropMedia:
    """Drops the sender's media packets (RTP, not RTCP) on their way out, by count or for a time window."""

    def __init__(self, monkeypatch, first_only: set[int] = frozenset(), window_after: int | None = None, window_s: float = 0.0):
        from aiortc.rtcdtlstransport import RTCDtlsTransport
        from aiortc.rtp import is_rtcp

        self.first_only, self.window_after, self.window_s = first_only, window_after, window_s
        self.count, self.dropped, self.media_pt, self.window_end = 0, 0, None, None
        original = RTCDtlsTransport._send_rtp

        async def send_rtp(transport, data: bytes) -> None:
            if not is_rtcp(data) and self.drop(data):
                self.dropped += 1
                return
            await original(transport, data)

        monkeypatch.setattr(RTCDtlsTransport, "_send_rtp", send_rtp)

    def drop(self, data: bytes) -> bool:
        import time

        pt = data[1] & 0x7F
        self.media_pt = self.media_pt if self.media_pt is not None else pt  # the first packet is a sync frame
        if pt != self.media_pt:
            return self.window_end is not None and time.monotonic() < self.window_end  # retransmissions (RTX)
        self.count += 1
        if self.window_after is not None and self.count == self.window_after:
            self.window_end = time.monotonic() + self.window_s
        if self.window_end is not None and time.monotonic() < self.window_end:
            return True
        return self.count in self.first_only


def test_packets_recovered_by_retransmission_are_neither_concealed_nor_late(clip, model_bytes, tmp_path, monkeypatch):
    """Two media packets are lost once; NACK brings them back, and every frame behind them leaves the jitter
    buffer at once (aiortc's own buffer would keep a backlog and never release the stream's last frame)."""
    dropper = DropMedia(monkeypatch, first_only={8, 10})
    stats, (result,), _ = asyncio.run(session(clip, model_bytes, tmp_path))
    assert dropper.dropped == 2
    assert stats["frames_received"] == FRAMES // 2 and stats["frames_concealed"] == 0
    assert stats["jitter_skips"] == 0 and stats["keyframe_requests"] == 0


def test_media_outage_is_concealed_and_recovers_with_a_pli_keyframe(model_bytes, tmp_path, monkeypatch):
    """1.2 s of media lost mid-stream: the receiver gives up on it, asks for a keyframe by RTCP PLI, the
    sender's encoder answers, and the stream goes on; the lost span is concealed and counted."""
    frames, _ = read_video("carphone", frames="0:40")
    dropper = DropMedia(monkeypatch, window_after=12, window_s=1.2)
    stats, (result,), _ = asyncio.run(session((frames, 10.0), model_bytes, tmp_path, SendOptions(fps=10.0)))
    assert dropper.dropped >= 5
    assert stats["frames_out"] == 40
    assert stats["jitter_skips"] >= 1 and stats["keyframe_requests"] >= 1 and result.keyframe_requests >= 1
    assert len(stats["recovery_ms"]) >= 1 and stats["recovery_ms_max"] < 2000
    # 1.2 s at 10 fps is ~12 source frames; frames before and after the outage were received.
    assert 8 <= stats["frames_concealed"] <= 24
    assert stats["frames_received"] >= 20 - 12 // 2 - 3


def test_corrupted_model_chunk_is_refused_on_both_sides(clip, model_bytes, tmp_path, monkeypatch):
    ship = sender_session._ship_model

    async def corrupt(channel, model, sha, first, sent, *pace):
        flipped = bytearray(model)
        flipped[len(flipped) // 2] ^= 0x01
        return await ship(channel, bytes(flipped), sha, first, sent, *pace)

    async def scenario():
        frames, fps = clip
        receiver = Receiver(ReceiveOptions(port=0, output=str(tmp_path / "out.mp4")))
        port = await receiver.start()
        try:
            monkeypatch.setattr(sender_session, "_ship_model", corrupt)
            with pytest.raises(SessionError, match="model_rejected.*SHA-256"):
                await send(frames, fps, model_bytes, SendOptions(port=port, model_pace="off"))
            await asyncio.sleep(0.3)
            assert receiver.failures and "SHA-256" in receiver.failures[-1]
            assert not receiver.options.models  # nothing half-loaded was kept
            # The receiver is still up: an honest sender then gets through.
            monkeypatch.setattr(sender_session, "_ship_model", ship)
            result = await send(frames, fps, model_bytes, SendOptions(port=port, model_pace="off"))
            stats = await receiver.wait(30)
        finally:
            await receiver.stop()
        return stats, result

    stats, result = asyncio.run(scenario())
    assert stats["frames_out"] == FRAMES and result.model_bytes_sent > 0


def test_model_transfer_resumes_after_the_connection_drops(clip, model_bytes, tmp_path, monkeypatch):
    """The connection dies after the first model chunk of a call that waits for the model: the sender starts a
    new session, the receiver offers what it kept (Hello.model_offset), and only the rest of the model is sent
    again."""
    assert len(model_bytes) > 2 * msg.CHUNK_BYTES
    ship, calls = sender_session._ship_model, []

    async def dies_after_one_chunk(channel, model, sha, first, sent, *pace):
        calls.append(first)
        if len(calls) > 1:
            return await ship(channel, model, sha, first, sent, *pace)
        sent[0] += await sender_session.send_message(channel, msg.ModelChunk(seq=0, data=model[: msg.CHUNK_BYTES]))
        await asyncio.sleep(0.5)  # the chunk reaches the receiver
        raise ConnectionError("data channel 'control' is closed")

    monkeypatch.setattr(sender_session, "_ship_model", dies_after_one_chunk)
    monkeypatch.setattr(sender_session, "RETRY_DELAY_S", 0.5)
    stats, (result,), receiver = asyncio.run(session(clip, model_bytes, tmp_path, SendOptions(early_start=False), reference=False))
    assert calls == [0, 1] and result.attempts == 2
    assert stats["model_bytes_resumed"] == msg.CHUNK_BYTES and stats["frames_out"] == FRAMES
    assert result.model_bytes_sent < len(model_bytes) + 2048  # the first chunk was not sent twice
    assert receiver.failures and "connection" in receiver.failures[0] and receiver.partial is None


def test_stalled_transfer_is_superseded_and_its_chunks_reused(clip, model_bytes, tmp_path, monkeypatch):
    """A sender that went silent mid-transfer holds the receiver only STALLED_HANDSHAKE_S: the next sender
    is refused as busy, retries, takes over and resumes from the silent one's chunks."""
    monkeypatch.setattr(receiver_session, "STALLED_HANDSHAKE_S", 1.5)
    monkeypatch.setattr(sender_session, "RETRY_DELAY_S", 0.5)
    frames, fps = clip

    async def scenario():
        receiver = Receiver(ReceiveOptions(port=0, output=str(tmp_path / "out.mp4")))
        port = await receiver.start()
        try:
            silent = asyncio.ensure_future(raw_peer(port, handshake(model_bytes)[:4], linger=20))
            await asyncio.sleep(0.5)
            result = await send(frames, fps, model_bytes, SendOptions(port=port, model_pace="off"))
            stats = await receiver.wait(30)
            silent.cancel()
        finally:
            await receiver.stop()
        return result, stats, receiver.failures

    result, stats, failures = asyncio.run(scenario())
    assert result.attempts >= 2  # busy first
    assert "superseded" in failures[0]
    assert stats["model_bytes_resumed"] == msg.CHUNK_BYTES and stats["frames_out"] == FRAMES


def test_resumed_chunks_that_do_not_match_the_sha256_load_nothing(clip, model_bytes, tmp_path, monkeypatch):
    """A stalled peer left a wrong first chunk: the resumed model fails its SHA-256 check, nothing is loaded,
    the bad chunks are gone, and the next session transfers the whole model."""
    monkeypatch.setattr(receiver_session, "STALLED_HANDSHAKE_S", 0.5)
    frames, fps = clip
    steps = handshake(model_bytes)[:3] + [msg.encode(msg.ModelChunk(seq=0, data=bytes(msg.CHUNK_BYTES)))]

    async def scenario():
        receiver = Receiver(ReceiveOptions(port=0, output=str(tmp_path / "out.mp4")))
        port = await receiver.start()
        try:
            silent = asyncio.ensure_future(raw_peer(port, steps, linger=20))
            await asyncio.sleep(1.5)
            with pytest.raises(SessionError, match="model_rejected.*SHA-256"):
                await send(frames, fps, model_bytes, SendOptions(port=port, model_pace="off"))
            assert not receiver.options.models and receiver.partial is None
            result = await send(frames, fps, model_bytes, SendOptions(port=port, model_pace="off"))
            stats = await receiver.wait(30)
            silent.cancel()
        finally:
            await receiver.stop()
        return result, stats

    result, stats = asyncio.run(scenario())
    assert stats["model_bytes_resumed"] == 0 and result.model_bytes_sent > len(model_bytes)


class BlackTrack(MediaStreamTrack):
    """A small black video track that starts sending when `start` is set."""

    kind = "video"

    def __init__(self):
        super().__init__()
        self.start = asyncio.Event()
        self.pts = 0

    async def recv(self):
        await self.start.wait()
        await asyncio.sleep(1 / 30)
        frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
        frame.pts, frame.time_base = self.pts, fractions.Fraction(1, 90000)
        self.pts += 3000
        return frame


async def raw_peer(port: int, steps: list, video: bool = False, linger: float = 5.0) -> list[msg.Message]:
    """A hand-driven peer: opens the control and meta channels (and a video track with `video`), then
    runs `steps`: bytes go out on control, ("meta", bytes) on meta, a message class waits for that
    reply (or stops at an error). Returns what came back once the receiver closed (or `linger` s passed)."""
    pc = new_peer_connection()
    channel: RTCDataChannel = pc.createDataChannel("control")
    meta: RTCDataChannel = pc.createDataChannel("meta", ordered=False, maxRetransmits=0)
    track = BlackTrack()
    if video:
        pc.addTrack(track)
    replies: list[msg.Message] = []
    arrived = asyncio.Event()
    closed = asyncio.Event()

    def on_message(data) -> None:
        replies.append(msg.decode(data))
        arrived.set()

    channel.on("message", on_message)
    channel.on("close", closed.set)
    opened = [asyncio.Event(), asyncio.Event()]
    channel.on("open", opened[0].set)
    meta.on("open", opened[1].set)
    await pc.setLocalDescription(await pc.createOffer())
    await pc.setRemoteDescription(await request_answer("127.0.0.1", port, pc.localDescription))
    await asyncio.wait_for(asyncio.gather(*(o.wait() for o in opened)), 10)
    track.start.set()
    for step in steps:
        if isinstance(step, type):
            while not any(isinstance(r, (step, msg.Error)) for r in replies):
                arrived.clear()
                await asyncio.wait_for(arrived.wait(), 10)
            if not any(isinstance(r, step) for r in replies):
                break
        elif isinstance(step, tuple):
            meta.send(step[1])
        else:
            channel.send(step)
    try:
        await asyncio.wait_for(closed.wait(), linger)
    except asyncio.TimeoutError:
        pass
    await pc.close()
    return replies


def handshake(model: bytes, width: int = 176, height: int = 144, auth: str = "") -> list:
    """Raw steps of an honest sender up to the model transfer (hello, config, chunks, model_done)."""
    sha = hashlib.sha256(model).hexdigest()
    config = msg.Config(width=width, height=height, low_width=width // 4, low_height=height // 4, fps=30.0, scale=4,
                        temporal=2, frames=FRAMES, codec="vp8", kbps=20.0, ticks=3000, auth=auth)
    chunks = [msg.encode(msg.ModelChunk(seq=i, data=model[j : j + msg.CHUNK_BYTES]))
              for i, j in enumerate(range(0, len(model), msg.CHUNK_BYTES))]
    return [msg.encode(msg.Hello(role="sender", model_sha256=sha, model_bytes=len(model))), msg.Hello,
            msg.encode(config), *chunks, msg.encode(msg.ModelDone(size=len(model), sha256=sha))]


async def refused_then_honest(clip, model: bytes, tmp_path, peer, **receiver_options):
    """Run `peer(port)` against a fresh receiver, then an honest sender; returns (peer's result, stats, failures)."""
    frames, fps = clip
    receiver = Receiver(ReceiveOptions(port=0, output=str(tmp_path / "out.mp4"), **receiver_options))
    port = await receiver.start()
    try:
        result = await peer(port)
        await asyncio.sleep(0.2)
        # The receiver process is unharmed and serves the next, honest sender.
        await send(frames, fps, model, SendOptions(port=port, model_pace="off", secret=receiver_options.get("secret")))
        stats = await receiver.wait(30)
    finally:
        await receiver.stop()
    return result, stats, receiver.failures


@pytest.mark.parametrize(
    "payloads, code",
    [
        ([b"\xc1garbage"], "bad_encoding"),
        ([msg.encode(msg.Hello(role="sender", model_sha256="a" * 64, model_bytes=10))[:-1] + b"\x02"], "bad_type"),
        ([b"\x82\xa1v\x02\xa4kind\xa5hello"], "version"),
        ([msg.encode(msg.Ack(sha256="0" * 64))], "unexpected"),  # an ack before any hello
    ],
)
def test_malformed_or_out_of_order_messages_get_an_error_and_a_clean_close(clip, model_bytes, tmp_path, payloads, code):
    replies, stats, failures = asyncio.run(
        refused_then_honest(clip, model_bytes, tmp_path, lambda port: raw_peer(port, payloads)))
    errors = [r for r in replies if isinstance(r, msg.Error)]
    assert len(errors) == 1 and len(failures) == 1
    assert errors[0].code == code
    assert stats["frames_out"] == FRAMES


FRAME_META = msg.encode(msg.Frame(index=0, capture_time=1.0))
OUT_OF_ORDER = {
    # Frames before the model: metadata on the meta channel (before anything, or after the hello), a
    # frame message on the control channel, RTP video before any hello.
    "frame_meta_first": lambda model: [("meta", FRAME_META)],
    "frame_meta_before_model": lambda model: [*handshake(model)[:3], ("meta", FRAME_META)],
    "frame_on_control_before_model": lambda model: [*handshake(model)[:3], FRAME_META],
    "video_before_hello": lambda model: [],
    # A second model mid-stream: a chunk or a model_done after the model was acknowledged, and a chunk
    # racing the verification of the first one (after model_done, before the ack).
    "model_chunk_after_ack": lambda model: [*handshake(model), msg.Ack, handshake(model)[3]],
    "model_done_after_ack": lambda model: [*handshake(model), msg.Ack, handshake(model)[-1]],
    "hello_after_ack": lambda model: [*handshake(model), msg.Ack, handshake(model)[0]],
    "model_chunk_after_model_done": lambda model: [*handshake(model), handshake(model)[3]],
    # A model that does not fit the stream: fitted at 88x72, the config says 176x144.
    "model_for_another_frame_size": None,
}


@pytest.mark.parametrize("case", sorted(OUT_OF_ORDER))
def test_out_of_order_peer_gets_an_error_and_a_clean_close(clip, model_bytes, tiny_codec, tmp_path, case):
    if case == "model_for_another_frame_size":
        other = bundle.dumps(Codec(tiny_codec.model, tiny_codec.normalization, meta={"frame_size": [88, 72]}))
        steps, code = [*handshake(other), msg.Ack], "model_mismatch"
    else:
        steps, code = OUT_OF_ORDER[case](model_bytes), "unexpected"
    replies, stats, failures = asyncio.run(refused_then_honest(
        clip, model_bytes, tmp_path, lambda port: raw_peer(port, steps, video=case == "video_before_hello")))
    errors = [r for r in replies if isinstance(r, msg.Error)]
    assert [e.code for e in errors] == [code], replies
    assert len(failures) == 1 and code in failures[0]
    assert stats["frames_out"] == FRAMES


def test_model_that_fails_to_load_with_any_error_is_refused(clip, model_bytes, tmp_path, monkeypatch):
    """Not only BundleError: an allocation failure while building the model (a bundle whose config asks
    for billions of parameters) is a refusal too, not a stuck session."""
    real_loads = receiver_session.bundle.loads
    calls = []

    def failing_once(*args):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory")
        return real_loads(*args)

    monkeypatch.setattr(receiver_session.bundle, "loads", failing_once)

    async def peer(port):
        with pytest.raises(SessionError, match="model_rejected.*RuntimeError"):
            await send(*clip, model_bytes, SendOptions(port=port, model_pace="off"))

    _, stats, failures = asyncio.run(refused_then_honest(clip, model_bytes, tmp_path, peer))
    assert len(failures) == 1 and "model_rejected" in failures[0]
    assert stats["frames_out"] == FRAMES and stats["model_transferred"]


def test_cached_model_for_another_frame_size_is_refused(clip, model_bytes, tiny_codec, tmp_path):
    """The receiver holds a model fitted at 88x72 (--model); a sender announcing it for a 176x144 stream is refused."""
    other = bundle.dumps(Codec(tiny_codec.model, tiny_codec.normalization, meta={"frame_size": [88, 72]}))
    models = {hashlib.sha256(other).hexdigest(): bundle.loads(other)}

    async def peer(port):
        with pytest.raises(SessionError, match="model_mismatch.*88x72.*176x144"):
            await send(*clip, other, SendOptions(port=port, model_pace="off"))

    _, stats, failures = asyncio.run(refused_then_honest(clip, model_bytes, tmp_path, peer, models=models))
    assert len(failures) == 1 and "model_mismatch" in failures[0]
    assert stats["frames_out"] == FRAMES


# -- the optional shared secret ---------------------------------------------------------------------
SECRET = b"the tests' shared secret"


def test_shared_secret_refuses_other_senders_before_any_model_is_loaded(clip, model_bytes, tmp_path, monkeypatch):
    loads = []
    real_loads = receiver_session.bundle.loads
    monkeypatch.setattr(receiver_session.bundle, "loads", lambda *a: loads.append(1) or real_loads(*a))

    async def peers(port):
        with pytest.raises(SessionError, match="auth_required"):  # no secret at all
            await send(*clip, model_bytes, SendOptions(port=port, model_pace="off"))
        with pytest.raises(SessionError, match="auth_failed"):  # another secret
            await send(*clip, model_bytes, SendOptions(port=port, model_pace="off", secret=SECRET + b"!"))
        await asyncio.sleep(0.3)
        return len(loads)

    loads_before_honest, stats, failures = asyncio.run(refused_then_honest(clip, model_bytes, tmp_path, peers, secret=SECRET))
    assert loads_before_honest == 0  # neither refused sender got its model loaded (nor any chunk taken)
    assert [f.split(":")[0] for f in failures] == ["auth_required", "auth_failed"]
    assert stats["authenticated"] and stats["model_transferred"] and stats["frames_out"] == FRAMES
    assert len(loads) == 1


def test_shared_secret_is_checked_when_the_model_is_cached(clip, model_bytes, tiny_codec, tmp_path):
    models = {hashlib.sha256(model_bytes).hexdigest(): tiny_codec}

    async def peers(port):
        with pytest.raises(SessionError, match="auth_failed"):
            await send(*clip, model_bytes, SendOptions(port=port, model_pace="off", secret=b"x" * 32))
        # A raw peer replaying a tag made for another session's nonce gets nowhere either.
        from protocol import auth

        hello = msg.Hello(role="sender", model_sha256=hashlib.sha256(model_bytes).hexdigest(), model_bytes=len(model_bytes))
        config = msg.decode(handshake(model_bytes)[2])
        stale = auth.tag(SECRET, auth.new_nonce(), hello, config)
        return await raw_peer(port, [*handshake(model_bytes, auth=stale)[:3], msg.Ack])

    replies, stats, failures = asyncio.run(refused_then_honest(clip, model_bytes, tmp_path, peers, secret=SECRET, models=models))
    assert [r.code for r in replies if isinstance(r, msg.Error)] == ["auth_failed"]
    assert [f.split(":")[0] for f in failures] == ["auth_failed", "auth_failed"]
    assert stats["authenticated"] and not stats["model_transferred"] and stats["frames_out"] == FRAMES


def test_receiver_without_a_secret_accepts_a_tagged_sender(clip, model_bytes, tmp_path):
    """A receiver with no secret sends no nonce; a sender with one streams untagged (and warns). An
    unsolicited tag from a hand-driven peer is ignored too: it gets its ack."""
    async def peers(port):
        return await raw_peer(port, [*handshake(model_bytes, auth="0" * 64), msg.Ack], linger=0.1)

    replies, stats, failures = asyncio.run(refused_then_honest(clip, model_bytes, tmp_path, peers))
    assert [r.kind for r in replies] == ["hello", "ack"] and replies[0].nonce == ""
    assert len(failures) == 1 and "connection" in failures[0]  # the raw peer just hung up
    stats_tagged, (result,), _ = asyncio.run(session(clip, model_bytes, tmp_path, SendOptions(secret=SECRET), reference=False))
    assert not stats_tagged["authenticated"] and stats_tagged["frames_out"] == FRAMES


def test_sender_reports_a_missing_receiver(clip, model_bytes):
    frames, fps = clip
    with pytest.raises(SessionError, match="no vsae receiver"):
        asyncio.run(send(frames, fps, model_bytes, SendOptions(port=9, connect_timeout=0.5)))


def test_low_res_size_is_even_and_positive():
    assert low_res_size(144, 176, 4) == (36, 44)
    assert low_res_size(144, 176, 8) == (18, 22)
    assert low_res_size(136, 320, 4) == (34, 80)
    assert low_res_size(10, 10, 64) == (2, 2)


@pytest.mark.parametrize("text, expected", [("127.0.0.1:8765", ("127.0.0.1", 8765)), (":0", ("127.0.0.1", 0)), ("[::1]:5", ("::1", 5))])
def test_parse_address(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["localhost:80", "127.0.0.1", "127.0.0.1:99999", "1.2.3.4:x"])
def test_parse_address_rejects(text):
    with pytest.raises(ValueError):
        parse_address(text)


def test_two_process_cli_demo(tiny_codec, tmp_path, capsys):
    """`vsae demo` with a given model: receiver and sender as separate processes, real files out."""
    from codec.cli import main

    model = tmp_path / "tiny.vsae"
    bundle.save(tiny_codec, model)
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(model), "--out", str(out), "--frames", f"0:{FRAMES}"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["frames_in"] == stats["frames_out"] == FRAMES
    assert stats["model_transferred"] and stats["sender"]["frames_sent"] == FRAMES // 2
    assert frame_count(out / "side_by_side.mp4") == FRAMES
    with av.open(str(out / "side_by_side.mp4")) as container:
        assert container.streams.video[0].width >= 3 * 176
    printed = capsys.readouterr().out
    assert "kbps sent" in printed and "PSNR vsae" in printed


def test_cli_errors_are_one_line(tmp_path, capsys):
    from codec.cli import main

    bad = tmp_path / "bad.vsae"
    bad.write_bytes(b"not a model")
    assert main(["send", "carphone", "--connect", "127.0.0.1:9", "--model", str(bad)]) == 1
    assert main(["send", "carphone", "--connect", "localhost", "--model", str(bad)]) == 1
    assert main(["recv", "--listen", "nowhere", "-o", str(tmp_path / "o.mp4")]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("vsae: error:")]
    assert len(lines) == 3 and "Traceback" not in err


def test_cli_secret_file_and_frame_size_errors_are_one_line(tiny_codec, tmp_path, capsys):
    from codec.cli import main

    weak = tmp_path / "weak"
    weak.write_text("hunter2\n")
    model = tmp_path / "small.vsae"
    bundle.save(Codec(tiny_codec.model, tiny_codec.normalization, meta={"frame_size": [88, 72]}), model)
    good = tmp_path / "good"
    good.write_bytes(b"0123456789abcdef0123456789abcdef")
    assert main(["recv", "--listen", "127.0.0.1:0", "-o", str(tmp_path / "o.mp4"), "--secret-file", str(weak)]) == 1
    assert main(["recv", "--listen", "127.0.0.1:0", "-o", str(tmp_path / "o.mp4"), "--secret-file", str(tmp_path / "none")]) == 1
    assert main(["send", "carphone", "--connect", "127.0.0.1:9", "--model", str(model), "--secret-file", str(weak)]) == 1
    # A model fitted at another size is refused before any connection (port 9 has no receiver anyway).
    assert main(["send", "carphone", "--connect", "127.0.0.1:9", "--model", str(model), "--secret-file", str(good),
                 "--frames", "0:2"]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("vsae: error:")]
    assert len(lines) == 4 and "Traceback" not in err
    assert "at least 16" in lines[0] and "cannot read" in lines[1] and "at least 16" in lines[2]
    assert "fitted at 88x72 but the video is 176x144" in lines[3]
