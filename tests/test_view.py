"""The live view's server without a browser: the page, /stats, bad offers, and latest-frame tracks."""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np

from receiver.view import LatestFrameTrack, LiveView


def _frame(value: int) -> np.ndarray:
    return np.full((48, 64, 3), value, np.uint8)


def test_page_stats_and_bad_offers():
    async def go():
        view = LiveView("127.0.0.1", 0, stats=lambda: {"state": "streaming", "video_bytes_received": 1000})
        port = await view.start()
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/") as r:
                    page = await r.text()
                    assert r.status == 200 and "vsae live view" in page and "RTCPeerConnection" in page
                async with http.get(f"http://127.0.0.1:{port}/stats") as r:
                    first = await r.json()
                view.stats_source = lambda: {"state": "streaming", "video_bytes_received": 2000}
                async with http.get(f"http://127.0.0.1:{port}/stats") as r:
                    second = await r.json()
                async with http.post(f"http://127.0.0.1:{port}/offer", json={"type": "answer"}) as r:
                    bad = r.status
                async with http.post(f"http://127.0.0.1:{port}/offer", json={"type": "offer", "sdp": "garbage"}) as r:
                    broken = r.status
        finally:
            await view.stop()
        return first, second, bad, broken

    first, second, bad, broken = asyncio.run(go())
    assert first["state"] == "streaming" and first["frames_published"] == 0 and first["frame_index"] == -1
    assert "video_bytes_received" not in first and second["kbps"] > 0  # a rate over the time between polls
    assert bad == 400 and broken == 400


def test_tracks_skip_to_the_newest_frame_never_queue():
    async def go():
        view = LiveView("127.0.0.1", 0)
        await view.start()
        try:
            rebuilt, bicubic = LatestFrameTrack(view, "rebuilt"), LatestFrameTrack(view, "bicubic")
            waiting = asyncio.ensure_future(rebuilt.recv())
            await asyncio.sleep(0.05)
            assert not waiting.done()  # nothing published yet: the track waits, sends no placeholder
            view.publish(0, _frame(10), _frame(110))
            first = await asyncio.wait_for(waiting, 5)
            for k in (1, 2, 3):  # three frames while the browser is busy
                view.publish(k, _frame(10 + k), _frame(110 + k))
            await asyncio.sleep(0.05)
            newest = await asyncio.wait_for(rebuilt.recv(), 5)
            base = await asyncio.wait_for(bicubic.recv(), 5)
            later = asyncio.ensure_future(rebuilt.recv())
            await asyncio.sleep(0.05)
            assert not later.done()  # no repeat of a frame already sent
            later.cancel()
        finally:
            await view.stop()
        return first, newest, base

    first, newest, base = asyncio.run(go())
    assert first.to_ndarray(format="rgb24")[0, 0, 0] == 10
    assert newest.to_ndarray(format="rgb24")[0, 0, 0] == 13  # frames 1 and 2 skipped
    assert base.to_ndarray(format="rgb24")[0, 0, 0] == 113 and newest.pts >= first.pts
