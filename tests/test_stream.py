"""Sender and receiver over real WebRTC on loopback: in-process sessions, then the two-process CLI path."""

from __future__ import annotations

import asyncio
import hashlib
import json

import av
import numpy as np
import pytest
from aiortc import RTCDataChannel

from codec import bundle
from codec.metrics import psnr_per_frame
from codec.video import read_video, to_tensor
from protocol import messages as msg
from protocol.peer import new_peer_connection, parse_address
from protocol.signaling import request_answer
from receiver.session import Receiver, ReceiveOptions
from sender import session as sender_session
from sender.session import SendOptions, SessionError, low_res_size, send

FRAMES = 12


@pytest.fixture(scope="module")
def clip() -> tuple[np.ndarray, float]:
    return read_video("carphone", frames=f"0:{FRAMES}")


@pytest.fixture(scope="module")
def model_bytes(tiny_codec) -> bytes:
    return bundle.dumps(tiny_codec)


def frame_count(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


async def session(clip, model: bytes, tmp_path, options: SendOptions | None = None, models=None, reference=True, sends=1):
    """Start a receiver on a free port, run `sends` sender sessions against it, return (stats, results)."""
    frames, fps = clip
    receiver = Receiver(ReceiveOptions(port=0, output=str(tmp_path / "out.mp4"), reference=frames if reference else None,
                                       bicubic_output=str(tmp_path / "bicubic.mp4"), models=models or {}))
    port = await receiver.start()
    options = options or SendOptions()
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
    stats, (result,), _ = asyncio.run(session(clip, model_bytes, tmp_path, SendOptions(scale=2, temporal=3)))
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
    assert stats["keyframe_requests"] >= 1 and result.keyframe_requests >= 1


def test_corrupted_model_chunk_is_refused_on_both_sides(clip, model_bytes, tmp_path, monkeypatch):
    ship = sender_session._ship_model

    async def corrupt(channel, model, sha):
        flipped = bytearray(model)
        flipped[len(flipped) // 2] ^= 0x01
        return await ship(channel, bytes(flipped), sha)

    async def scenario():
        frames, fps = clip
        receiver = Receiver(ReceiveOptions(port=0, output=str(tmp_path / "out.mp4")))
        port = await receiver.start()
        try:
            monkeypatch.setattr(sender_session, "_ship_model", corrupt)
            with pytest.raises(SessionError, match="model_rejected.*SHA-256"):
                await send(frames, fps, model_bytes, SendOptions(port=port))
            await asyncio.sleep(0.3)
            assert receiver.failures and "SHA-256" in receiver.failures[-1]
            assert not receiver.options.models  # nothing half-loaded was kept
            # The receiver is still up: an honest sender then gets through.
            monkeypatch.setattr(sender_session, "_ship_model", ship)
            result = await send(frames, fps, model_bytes, SendOptions(port=port))
            stats = await receiver.wait(30)
        finally:
            await receiver.stop()
        return stats, result

    stats, result = asyncio.run(scenario())
    assert stats["frames_out"] == FRAMES and result.model_bytes_sent > 0


async def raw_peer(port: int, payloads: list[bytes]) -> list[msg.Message]:
    """A hand-driven peer: opens the control channel, sends raw payloads, returns what came back."""
    pc = new_peer_connection()
    channel: RTCDataChannel = pc.createDataChannel("control")
    replies: list[msg.Message] = []
    closed = asyncio.Event()
    channel.on("message", lambda data: replies.append(msg.decode(data)))
    channel.on("close", closed.set)
    opened = asyncio.Event()
    channel.on("open", opened.set)
    await pc.setLocalDescription(await pc.createOffer())
    await pc.setRemoteDescription(await request_answer("127.0.0.1", port, pc.localDescription))
    await asyncio.wait_for(opened.wait(), 10)
    for payload in payloads:
        channel.send(payload)
    try:
        await asyncio.wait_for(closed.wait(), 5)
    except asyncio.TimeoutError:
        pass
    await pc.close()
    return replies


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
    async def scenario():
        frames, fps = clip
        receiver = Receiver(ReceiveOptions(port=0, output=str(tmp_path / "out.mp4")))
        port = await receiver.start()
        try:
            replies = await raw_peer(port, payloads)
            await asyncio.sleep(0.2)
            # The receiver process is unharmed and serves the next, honest sender.
            await send(frames, fps, model_bytes, SendOptions(port=port))
            stats = await receiver.wait(30)
        finally:
            await receiver.stop()
        return replies, stats, receiver.failures

    replies, stats, failures = asyncio.run(scenario())
    errors = [r for r in replies if isinstance(r, msg.Error)]
    assert len(errors) == 1 and len(failures) == 1
    assert errors[0].code == code
    assert stats["frames_out"] == FRAMES


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
