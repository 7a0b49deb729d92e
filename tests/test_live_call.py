"""A live call over real WebRTC on loopback: the sender's closed loop, the guard's modes, verified model updates.

The sender runs the receiver's rebuild on its own decoded packets; both ends must then agree frame by frame:
the same modes shown, the same model version for every frame, updates applied from the key they name, and
a corrupted update refused by the receiver with its old model kept (and the sender going back with it).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from codec.guard import FrameModes
from codec.video import read_video
from protocol import messages as msg
from receiver.session import Receiver, ReceiveOptions
from sender import closedloop
from sender.closedloop import RefreshOptions
from sender.session import SendOptions, send

FRAMES = 36  # 1.2 s at 29.97 fps
# A generous model budget and short decision interval so that a 1.2 s call makes several updates.
REFRESH = dict(model_kbps=200.0, steps_per_s=20.0, interval_s=0.2)


@pytest.fixture(scope="module")
def clip() -> tuple[np.ndarray, float]:
    return read_video("carphone", frames=f"0:{FRAMES}")


@pytest.fixture(autouse=True)
def one_torch_thread(monkeypatch):
    """As `vsae send --guard` runs: the closed loop, the trainer and (here, in-process) the receiver each on one
    intra-op thread, side by side. The trainer is not niced here: these tests are about both ends agreeing,
    and on a busy CI machine a niced trainer may not get a step in before the short call ends."""
    monkeypatch.setattr(closedloop, "TRAINER_NICE", 0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


async def call(clip, model: bytes, tmp_path, options: SendOptions):
    frames, fps = clip
    receiver = Receiver(ReceiveOptions(port=0, output=str(tmp_path / "out.mp4"), reference=frames,
                                       reference_loop=options.loop > 1))
    options.port = await receiver.start()
    try:
        result = await send(frames, fps, model, options)
        stats = await receiver.wait(60)
    finally:
        await receiver.stop()
    return stats, result


def test_guarded_call_shows_what_the_sender_decided(clip, model_bytes, tmp_path):
    stats, result = asyncio.run(call(clip, model_bytes, tmp_path, SendOptions(guard=True)))
    live = result.extra["live"]
    assert stats["guard"] and stats["frames_out"] == FRAMES and stats["frames_unguarded"] == 0
    # Every frame got modes, and the receiver applied the same ones the sender chose.
    assert sum(stats["modes"].values()) == FRAMES == live["frames"]
    assert stats["modes"] == live["modes"]
    # The untrained tiny model is far worse than bicubic: the guard keeps the picture at the baseline.
    assert stats["psnr_vsae"] < stats["psnr_bicubic"] - 3
    assert stats["psnr"] >= stats["psnr_bicubic"] - 0.2
    # The sender knew what the receiver would show (its own decode of the same packets).
    assert live["psnr_shown"] == pytest.approx(stats["psnr"], abs=0.5)
    assert stats["guard_kbps"] > 0 and stats["guard_kbps"] == pytest.approx(live["guard_kbps"], rel=1e-6)
    assert stats["updates_applied"] == 0 and live["updates_sent"] == 0


def test_refresh_updates_switch_both_ends_at_the_same_frame(clip, model_bytes, tmp_path):
    options = SendOptions(guard=True, refresh=RefreshOptions(**REFRESH), loop=2)
    stats, result = asyncio.run(call(clip, model_bytes, tmp_path, options))
    live = result.extra["live"]
    assert live["updates_sent"] >= 1, str({k: v for k, v in live.items() if k != "modes"})
    assert stats["updates_applied"] == live["updates_sent"] == live["updates_acked"]
    assert stats["updates_refused"] == 0 and stats["updates_late"] == 0
    # Both ends used the same model version for every frame: the same (first frame, version) runs.
    assert stats["model_versions"] == live["model_versions"]
    assert stats["model_versions"][0] == [0, 0] and stats["model_versions"][-1][1] == live["updates_sent"]
    for update, (first, version) in zip(live["updates"], stats["model_versions"][1:]):
        assert version == update["version"] and first >= update["apply_from"]  # from the key it names on
    assert stats["model_kbps"] > 0 and stats["model_kbps"] == pytest.approx(live["model_kbps"], rel=1e-6)
    assert stats["total_kbps"] > stats["video_kbps"] + stats["model_kbps"]
    assert stats["frames_out"] == 2 * FRAMES and stats["psnr"] >= stats["psnr_bicubic"] - 0.2


def test_corrupted_update_is_refused_and_the_old_model_kept(clip, model_bytes, tmp_path):
    corrupted = []

    def corrupt_first(version: int, data: bytes) -> bytes:
        if corrupted:
            return data
        corrupted.append(version)
        return data[:-5] + bytes([data[-5] ^ 0x40]) + data[-4:]

    options = SendOptions(guard=True, refresh=RefreshOptions(**REFRESH), update_filter=corrupt_first, loop=2)
    stats, result = asyncio.run(call(clip, model_bytes, tmp_path, options))
    live = result.extra["live"]
    assert corrupted == [1]
    assert stats["updates_refused"] == 1 and "checksum" in stats["update_refusals"][0]
    assert live["updates_refused"] == 1 and live["updates_reverted"] == 1
    # The receiver never rebuilt a frame with the corrupted update's weights: its first switch, if any, is to
    # a version the sender made again after going back.
    bad = live["updates"][0]
    assert [bad["apply_from"], 1] not in stats["model_versions"] or len(live["updates"]) > 1
    assert stats["updates_applied"] == live["updates_sent"] - 1
    assert stats["frames_out"] == 2 * FRAMES and stats["frames_unguarded"] == 0


@pytest.mark.parametrize("message, code", [
    (msg.Modes(first=0, data=bytes([7])), "bad_value"),  # mode 7 does not exist
    (msg.Modes(first=0, data=bytes([1 | (5 << 3)])), "bad_value"),  # 5 tile exceptions: more than allowed
    (msg.Update(version=1, part=1, parts=2, data=b"x"), "bad_value"),  # a part before part 0
])
def test_malformed_live_messages_end_the_session_with_an_error(clip, model_bytes, tmp_path, message, code, monkeypatch):
    """A peer's malformed modes or out-of-order update parts: one error, a clean close (never applied)."""
    from sender import session as sender_session

    real_drain = sender_session._drain_outbox

    async def inject(channel, outbox, live):
        await sender_session.send_message(channel, message)
        await real_drain(channel, outbox, live)

    monkeypatch.setattr(sender_session, "_drain_outbox", inject)
    with pytest.raises(sender_session.SessionError, match=code):
        asyncio.run(call(clip, model_bytes, tmp_path, SendOptions(guard=True, retries=0)))


def test_live_messages_round_trip_and_refuse_bad_fields():
    for message in (msg.Modes(first=3, data=FrameModes(2, ((1, 0),)).to_bytes(12)), msg.UpdateAck(version=2, applied=False, reason="x"),
                    msg.Update(version=1, part=0, parts=1, data=b"\x00" * 100)):
        assert msg.decode(msg.encode(message)) == message
    with pytest.raises(msg.ProtocolError, match="parts"):
        msg.encode(msg.Update(version=1, part=2, parts=2, data=b""))
    with pytest.raises(msg.ProtocolError):
        msg.encode(msg.Modes(first=0, data=b"\x00" * (msg.MAX_MODES_BYTES + 1)))
    # The guard flag stays off the wire unless used (a peer that predates it sees the same config).
    config = msg.Config(width=2, height=2, low_width=2, low_height=2, fps=30.0, scale=1, temporal=1, frames=1, codec="vp8",
                        kbps=20.0, ticks=3000)
    assert b"guard" not in msg.encode(config) and b"guard" in msg.encode(msg.Config(**{**config.__dict__, "guard": True}))


def test_waiting_for_modes_is_not_counted_as_load(tiny_codec, tmp_path):
    """A receiver whose sender's modes come late waits for them; that wait is not work, so it stays out of the
    busy time the ladder reads as load (else the ladder would step the rebuild down, away from the sender's
    mirror, for a CPU that is idle)."""
    import threading
    import time

    from receiver.worker import MODES_WAIT_S, ReconstructWorker, StreamInfo

    fps, frames = 30.0, 40
    worker = ReconstructWorker(tiny_codec, StreamInfo((144, 176), fps, 2, frames), str(tmp_path / "o.mp4"), 1, "flow",
                               guard=True)
    low = (np.random.default_rng(0).random((36, 44, 3)) * 255).astype(np.uint8)
    delay = 0.2  # every key's modes arrive this long after its frame
    began = time.perf_counter()
    for i in range(0, frames, 2):
        worker.submit(i, low)
        first = max(0, i - 1)
        threading.Timer(delay, worker.note_modes, (first, [FrameModes(1)] * (i + 1 - first))).start()
        time.sleep(2 / fps)
    time.sleep(delay + 0.1)
    worker.finish(frames, timeout=60)
    elapsed = time.perf_counter() - began
    stats = worker.stats()
    assert worker.error is None and stats["frames_out"] == frames
    assert stats["modes_wait_s"] > delay  # it waited, gated by the modes key after key...
    # ...and none of that wait is in the busy time (counted as busy, the two would add up to about twice the
    # run's length, since the worker spends most of it waiting).
    assert worker.busy_s + stats["modes_wait_s"] < elapsed
    assert stats["frames_unguarded"] <= 1 and delay < MODES_WAIT_S  # the last frame's modes may never come
