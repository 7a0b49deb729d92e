"""Live sources (codec/capture.py) and a live call over loopback WebRTC (vsae send --input, in-process).

The sources here are FFmpeg's lavfi generators and a real file decoded at its own rate: no camera needed.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from codec import bundle, capture
from codec.capture import LiveCapture, capture_stamp, read_stamp, record, stamp_age_ms, stamp_code
from codec.cli import main
from codec.errors import VsaeError
from codec.ops import Codec
from codec.video import read_video, sample_clip
from receiver.session import Receiver, ReceiveOptions
from sender.session import LiveFrames, SendOptions, send

LAVFI = "testsrc2=size=320x240:rate=15"


def test_lavfi_source_runs_at_its_rate_scaled_to_the_requested_size():
    source = LiveCapture(LAVFI, "lavfi", size=(176, 144))
    try:
        assert source.fps == 15
        first = source.get(10)
        began = time.monotonic()
        frames = [source.get(10) for _ in range(15)]
        elapsed = time.monotonic() - began
    finally:
        source.close()
    assert first[2].shape == (144, 176, 3) and first[2].dtype == np.uint8
    assert [f[0] for f in frames] == list(range(first[0] + 1, first[0] + 16))  # nothing dropped: we kept up
    # Paced like a camera (a generator would otherwise deliver as fast as the CPU allows): 15 frames ~ 1 s.
    assert 0.7 < elapsed < 2.0, elapsed


def test_a_slow_consumer_loses_the_oldest_frames_never_builds_a_queue():
    source = LiveCapture(LAVFI, "lavfi", size=(176, 144))
    try:
        source.get(10)
        time.sleep(1.0)  # ~15 frames come while nobody takes them
        waiting = []
        while True:
            with source._cond:
                if not source._queue:
                    break
            waiting.append(source.get(1))
        captured, dropped = source.captured, source.dropped
    finally:
        source.close()
    assert len(waiting) <= capture.CAPTURE_QUEUE
    assert dropped >= 10 and captured >= 12
    # What waited are the newest frames, in order.
    assert [w[0] for w in waiting] == list(range(waiting[0][0], waiting[0][0] + len(waiting)))
    assert waiting[-1][0] >= captured - 2


def test_a_file_is_a_live_source_at_its_own_rate():
    source = LiveCapture(str(sample_clip("carphone")), size=(176, 144))
    try:
        assert source.fps == pytest.approx(29.97, abs=0.01)
        _, t0, frame = source.get(10)
        for _ in range(29):
            _, t1, _ = source.get(10)
    finally:
        source.close()
    assert 0.7 < t1 - t0 < 1.6
    assert frame.shape == (144, 176, 3)


@pytest.mark.parametrize("width", [176, 352])
def test_capture_stamp_reads_back_and_refuses_blends(width):
    rgb = np.full((width * 3 // 4, width, 3), 90, np.uint8)
    now = time.time()
    capture_stamp(rgb, now)
    assert read_stamp(rgb) == stamp_code(now)
    assert stamp_age_ms(stamp_code(now), now + 0.5) == pytest.approx(500, abs=capture.STAMP_MS)
    other = rgb.copy()
    capture_stamp(other, now + 1.234)
    blend = ((rgb.astype(np.uint16) + other) // 2).astype(np.uint8)  # an in-between frame of two stamps
    assert read_stamp(blend) is None


def test_bad_sources_are_one_clear_error():
    with pytest.raises(VsaeError, match="unknown --input-format"):
        LiveCapture("x", "no-such-format")
    with pytest.raises(VsaeError, match="cannot open --input"):
        LiveCapture("no_such_filter=1", "lavfi")
    with pytest.raises(VsaeError, match="cannot open --input"):
        LiveCapture("/no/such/file.mp4")
    with pytest.raises(VsaeError, match="KEY=VALUE"):
        capture.parse_options(["framerate"])


def test_record_returns_seconds_of_frames():
    frames, fps = record(LAVFI, 1.0, "lavfi", size=(176, 144))
    assert fps == 15 and frames.shape == (15, 144, 176, 3)


@pytest.fixture(scope="module")
def sized_model(tiny_codec) -> bytes:
    return bundle.dumps(Codec(tiny_codec.model, tiny_codec.normalization, meta={"frame_size": [176, 144]}))


def test_live_call_covers_every_source_frame_and_ends_with_the_byes_count(sized_model, tmp_path):
    """A 2 s lavfi call: the config names a cap of 10 s of frames, the source stops after 2 s (request_stop);
    the receiver outputs exactly the frames the stream covered, one per source frame."""

    async def call():
        receiver = Receiver(ReceiveOptions(port=0, output=str(tmp_path / "out.mp4")))
        port = await receiver.start()
        source = LiveCapture("testsrc2=size=176x144:rate=15", "lavfi", size=(176, 144))
        live = LiveFrames(source, cap=150)
        asyncio.get_running_loop().call_later(4.0, live.request_stop)
        try:
            result = await send(live, source.fps, sized_model, SendOptions(port=port))
            stats = await receiver.wait(60)
        finally:
            source.close()
            await receiver.stop()
        return result, stats

    result, stats = asyncio.run(call())
    covered = result.frames
    assert 15 <= covered < 150  # stopped early, well before the cap
    assert result.receiver_frames_out == stats["frames_out"] == stats["frames_in"] == covered
    assert result.frames_sent == len(range(0, covered, 2))
    cap = result.extra["capture"]
    assert cap["captured"] >= covered and cap["capture_fps"] == pytest.approx(15, rel=0.2)
    assert cap["dropped"] <= 2  # a tiny model keeps up on any machine
    frames, _ = read_video(tmp_path / "out.mp4")
    assert len(frames) == covered


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_cli_live_errors_are_one_line(sized_model, tmp_path, capsys):
    model = tmp_path / "m.vsae"
    model.write_bytes(sized_model)
    base = ["send", "--connect", "127.0.0.1:9", "--model", model]
    cases = [
        ([*base, "--input", "x", "--input-format", "nope"], "unknown --input-format"),
        ([*base, "--input", "nonexistent_filter=1", "--input-format", "lavfi"], "cannot open --input"),
        ([*base, "carphone", "--input", LAVFI], "not both"),
        ([*base, "--input", LAVFI, "--input-format", "lavfi", "--loop", "2"], "--loop does not go"),
        ([*base, "--input", LAVFI, "--input-format", "lavfi", "--input-option", "novalue"], "KEY=VALUE"),
        ([*base, "carphone", "--input-format", "lavfi"], "go with --input"),
        (["fit", "--input", LAVFI, "--input-format", "lavfi", "-o", tmp_path / "f.vsae"], "needs --seconds"),
        (["fit", "--input", "nonexistent_filter=1", "--input-format", "lavfi", "--seconds", "1", "-o", tmp_path / "f.vsae"],
         "cannot open --input"),
    ]
    for argv, expected in cases:
        code, err = run(capsys, *argv)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code != 0 and "Traceback" not in err and len(lines) == 1, (argv, err)
        assert lines[0].startswith("vsae: error: ") and expected in lines[0], (argv, lines[0])


def test_fit_records_from_a_live_source(tmp_path, capsys):
    out = tmp_path / "live.vsae"
    code, err = run(capsys, "fit", "--input", "testsrc2=size=64x48:rate=10", "--input-format", "lavfi", "--seconds", "1",
                    "-o", out, "--epochs", "1", "--width", "4", "-q", "--train-precision", "f32")
    assert code == 0, err
    meta = bundle.load(out).meta
    assert meta["frame_size"] == [64, 48] and meta["frames"] == 10
    assert meta["source"].startswith("testsrc2") and meta["frame_selection"] == "live 1 s"


def test_a_local_udp_stream_is_a_live_source():
    """An MPEG-TS stream over UDP on loopback (a thread plays lavfi into it in real time), as from a camera box."""
    import socket
    import threading

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"udp://127.0.0.1:{port}"
    stop = threading.Event()

    def play() -> None:
        import av

        source = av.open("testsrc2=size=176x144:rate=15", format="lavfi")
        out = av.open(f"{url}?pkt_size=1316", mode="w", format="mpegts")
        stream = out.add_stream("mpeg2video", rate=15)
        stream.width, stream.height, stream.pix_fmt = 176, 144, "yuv420p"
        began = time.monotonic()
        for n, frame in enumerate(source.decode(video=0)):
            if stop.is_set() or n >= 15 * 10:
                break
            time.sleep(max(0.0, began + n / 15 - time.monotonic()))
            frame.pts = None
            for packet in stream.encode(frame):
                out.mux(packet)
        out.close()
        source.close()

    player = threading.Thread(target=play, daemon=True)
    player.start()
    try:
        live = LiveCapture(url, "mpegts", size=(88, 72))
        try:
            first = live.get(10)
            frames = [live.get(10) for _ in range(15)]
        finally:
            live.close()
    finally:
        stop.set()
        player.join(10)
    assert live.fps == 15 and first[2].shape == (72, 88, 3)
    assert 0.6 < frames[-1][1] - first[1] < 1.8  # ~15 frames a second, as the stream plays


def test_ctrl_c_ends_a_live_send_cleanly(sized_model, tmp_path):
    """`vsae send --input` without --duration runs until Ctrl-C, which ends the stream with a bye: the
    receiver completes the session with one output frame per source frame covered, and both exit 0."""
    import json
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    model = tmp_path / "m.vsae"
    model.write_bytes(sized_model)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def vsae(*argv):
        return subprocess.Popen([sys.executable, "-m", "codec.cli", *map(str, argv)], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    recv = vsae("recv", "--listen", "127.0.0.1:0", "-o", tmp_path / "out.mp4", "--stats", tmp_path / "stats.json",
                "--timeout", "60")
    try:
        listen = recv.stdout.readline().rsplit(" ", 1)[1].strip()
        send = vsae("send", "--input", "testsrc2=size=176x144:rate=15", "--input-format", "lavfi", "--connect", listen,
                    "--model", model, "--json")
        try:
            began = time.monotonic()
            while "until the source ends or Ctrl-C" not in (line := send.stderr.readline()):
                assert line and time.monotonic() - began < 60, "vsae send did not start"
            time.sleep(5.0)  # process start-up, the model transfer, then a few seconds of video
            send.send_signal(signal.SIGINT)
            out, err = send.communicate(timeout=60)
        finally:
            if send.poll() is None:
                send.kill()
        assert send.returncode == 0, err
        assert recv.wait(60) == 0
    finally:
        if recv.poll() is None:
            recv.kill()
    result = json.loads(out)
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert result["frames"] >= 10 and stats["frames_out"] == stats["frames_in"] == result["frames"]
    assert len(read_video(tmp_path / "out.mp4")[0]) == result["frames"]
