"""A loopback call whose bandwidth estimate follows a schedule: the stream's shape (and codec) then change on cue, and
the tests look at what the receiver made of it (tests/test_shapes.py, tests/test_codec_switch.py)."""

from __future__ import annotations

import asyncio

from sender import session as sender_session
from sender.session import SendOptions, send
from sender.shapes import ShapeTable


def scheduled_call(monkeypatch, tmp_path, model_bytes: bytes, table: ShapeTable, schedule: list[tuple[float, float]],
                   fps: float = 8.0, loops: int = 4, frames: str = "0:12"):
    """(source frames, receiver stats, SendResult) of a call whose estimate is `schedule`'s wire kbps from each time
    (seconds from the first estimate) on. The link's own part is not the subject (tests/test_bwe.py, the fault lab)."""
    from codec.video import read_video
    from receiver.session import Receiver, ReceiveOptions

    source, _ = read_video("carphone", frames=frames)
    began: list[float] = []

    def estimate(self, now):
        began[:] = began or [now]
        return [kbps for at, kbps in schedule if now - began[0] >= at][-1]

    monkeypatch.setattr(sender_session.BandwidthEstimator, "estimate", estimate)
    monkeypatch.setattr(sender_session, "RETARGET_UP_S", 0.0)

    async def run():
        receiver = Receiver(ReceiveOptions(port=0, output=str(tmp_path / "out.mp4"), reference=source,
                                           reference_loop=True))
        port = await receiver.start()
        try:
            options = SendOptions(port=port, kbps=100.0, fps=fps, loop=loops, model_pace="off", early_start=False,
                                  shape_table=table)
            result = await send(source, fps, model_bytes, options)
            return await receiver.wait(30), result
        finally:
            await receiver.stop()

    stats, result = asyncio.run(run())
    return source, stats, result
