"""The live view in a real browser: `vsae recv --view` serves the page, `vsae send --input` streams a file as a
live source (paced at its real rate), headless Chromium opens the page over loopback WebRTC.

Asserted from the browser's side: frames decoded on both tracks and still rising during the call, a
screenshot whose rebuilt panel is not blank, the rebuilt picture the page shows matching one of the
receiver's rebuilt output frames (and not its bicubic ones), and the capture-time stamps the sender draws
read back off the displayed picture. A control run whose receiver sends the page nothing must fail those
checks. Skips when no Chromium is installed (`.ci/run` installs Debian's).
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.browser import Chromium, find_chromium
from codec import bundle
from codec.ops import Codec
from codec.video import read_video, sample_clip

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="no Chromium on this machine (apt-get install chromium, or set VSAE_CHROMIUM)")

ROOT = Path(__file__).resolve().parents[1]
SECONDS = 4.0  # of carphone (29.97 fps), streamed live
# A receiver whose view publishes nothing: the control run (the page's checks must fail on it).
SILENT_VIEW = "import receiver.view as v; v.LiveView.publish = lambda *a: None; "


@pytest.fixture(scope="module")
def live_bundle(tiny_codec, tmp_path_factory) -> str:
    """The tiny codec as a bundle that records carphone's frame size (a live source is scaled to it)."""
    path = tmp_path_factory.mktemp("live") / "tiny.vsae"
    bundle.save(Codec(tiny_codec.model, tiny_codec.normalization, meta={"frame_size": [176, 144]}), path)
    return str(path)


def _vsae(args: list[str], prelude: str = "") -> subprocess.Popen:
    code = f"import sys; {prelude}from codec.cli import main; sys.exit(main(sys.argv[1:]))"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _decode(grab) -> np.ndarray | None:
    if not grab:
        return None
    width, height, data = grab
    return np.frombuffer(base64.b64decode(data), np.uint8).reshape(height, width, 4)[..., :3]


async def _call(model: str, tmp_path: Path, silent: bool = False) -> dict:
    """One call watched in Chromium; what the page saw."""
    recv = _vsae(["recv", "--listen", "127.0.0.1:0", "--view", "127.0.0.1:0", "-o", str(tmp_path / "out.mp4"),
                  "--bicubic-output", str(tmp_path / "bicubic.mp4"), "--timeout", "90"], SILENT_VIEW if silent else "")
    try:
        view_line, listen_line = recv.stdout.readline(), recv.stdout.readline()
        assert "live view at" in view_line, view_line + recv.stderr.read()
        view_url = view_line.split(" at ", 1)[1].strip()
        listen = listen_line.rsplit(" ", 1)[1].strip()
        seen: dict = {"decoded": []}
        async with Chromium() as browser:
            page = await browser.open(view_url, ready="window.vsaeView")
            send = _vsae(["send", "--input", str(sample_clip("carphone")), "--connect", listen, "--model", model,
                          "--duration", str(SECONDS), "--stamp-capture-time", "--kbps", "60", "--json"])
            try:
                while send.poll() is None:
                    await asyncio.sleep(0.5)
                    seen["decoded"].append(await page.evaluate("vsaeView.framesDecoded"))
                    if "shot" not in seen and seen["decoded"][-1]["rebuilt"] >= 30:  # mid-call (~1 s of video shown)
                        seen["shot"] = await page.screenshot()
                        seen["rect"] = await page.evaluate("vsaeView.rect('rebuilt')")
                        seen["grab"] = _decode(await page.evaluate("vsaeView.grab('rebuilt')"))
                seen["send_out"], seen["send_err"] = send.communicate(timeout=30)
            finally:
                if send.poll() is None:
                    send.kill()
            seen["latencies"] = await page.evaluate("vsaeView.latencies")
            seen["error"] = await page.evaluate("vsaeView.error")
        recv.wait(60)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    return seen


def check_page(seen: dict, tmp_path: Path) -> None:
    """The browser-side assertions of a call."""
    from PIL import Image

    assert seen["error"] is None, seen["error"]
    assert "shot" in seen, f"the page never decoded 30 frames: {seen['decoded']}"
    decoded = seen["decoded"]
    # Frames decoded on both tracks, and still rising in the second half of the call.
    assert decoded[-1]["rebuilt"] >= 20 and decoded[-1]["bicubic"] >= 20, decoded
    half = decoded[len(decoded) // 2]
    assert decoded[-1]["rebuilt"] > half["rebuilt"], decoded
    # The screenshot's rebuilt panel is a picture, not a blank or uniform box.
    shot = np.asarray(Image.open(io.BytesIO(seen["shot"])).convert("RGB"), np.float64)
    x, y, w, h = (int(round(v)) for v in seen["rect"])
    panel = shot[y : y + h, x : x + w]
    assert panel.size and panel.std() > 10, f"rebuilt panel std {panel.std():.1f}"
    # What the page shows on the rebuilt track is one of the receiver's rebuilt frames (after VP8 at the view's
    # high local bitrate), and closer to them than to any bicubic frame: the right picture on the right track.
    grab = seen["grab"]
    assert grab is not None and grab.shape == (144, 176, 3)
    rebuilt, _ = read_video(tmp_path / "out.mp4")
    bicubic, _ = read_video(tmp_path / "bicubic.mp4")

    def best_psnr(frames: np.ndarray) -> float:
        mse = ((frames.astype(np.float64) - grab.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
        return float(10 * np.log10(255**2 / max(mse.min(), 1e-9)))

    match, other = best_psnr(rebuilt), best_psnr(bicubic)
    assert match > 30 and match > other + 3, (match, other)
    # The sender's capture-time stamps, read back off the displayed picture: capture-to-display latency.
    latencies = seen["latencies"]["bicubic"]
    assert len(latencies) >= 10, seen["latencies"]
    assert 0 < float(np.median(latencies)) < 3000, latencies


def test_browser_shows_the_call_live(live_bundle, tmp_path):
    seen = asyncio.run(_call(live_bundle, tmp_path))
    assert '"receiver_frames_out"' in seen["send_out"], seen["send_err"][-2000:]
    check_page(seen, tmp_path)


def test_browser_checks_fail_when_the_receiver_sends_nothing(live_bundle, tmp_path):
    """The control: the same call with a view that publishes no frame; the page decodes nothing and the checks fail."""
    seen = asyncio.run(_call(live_bundle, tmp_path, silent=True))
    assert '"receiver_frames_out"' in seen["send_out"], seen["send_err"][-2000:]  # the call itself went through
    assert seen["decoded"][-1] == {"rebuilt": 0, "bicubic": 0}
    with pytest.raises(AssertionError):
        check_page(seen, tmp_path)
