"""`vsae bench liveview`: a live-sourced call watched in a real browser, timed from capture to display.

For each duration: starts `vsae recv --view` (its own process), opens the page in headless Chromium (bench/
browser.py), then `vsae send --input SOURCE --stamp-capture-time --duration S` (its own process) from an
FFmpeg lavfi source. The sender draws each frame's capture time into its top-left corner as a block code
(codec/capture.py); the page reads it back off every frame it displays (requestVideoFrameCallback, a
canvas) and keeps capture-to-display latency = display wall time - capture wall time (one machine, one
clock). The stamp survives only where the displayed picture shows it cleanly: on the keys (the in-between
frames blend two stamps and are skipped), on the bicubic track always, on the rebuilt one when the model
reproduces the blocks. Both tracks are published at the same moment, so either measures the same delay.

Records: capture fps and frames dropped at the sender (its --json), the page's latency median/p95 per
track, frames decoded in the browser, the receiver's stats (--stats), and a screenshot of the page in the
middle of the longest call. Writes OUT/liveview.json, OUT/liveview.md, OUT/liveview.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from codec.argtypes import positive_float
from codec.errors import VsaeError

from .browser import BrowserError, Chromium, find_chromium
from .precision import cpu_description
from .results import write_results

DEFAULT_SOURCE = "testsrc2=size=176x144:rate=15"
DEFAULT_SECONDS = (10.0, 120.0)
# Beyond the call itself: process start-up (torch import), model transfer, the end of the session.
MARGIN_S = 120.0
POLL_S = 1.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model bundle fitted at the source's frame size (vsae fit --input)")
    p.add_argument("--source", default=DEFAULT_SOURCE, help=f"lavfi graph to capture (default {DEFAULT_SOURCE})")
    p.add_argument("--input-format", default="lavfi")
    p.add_argument("--seconds", type=positive_float, nargs="+", default=list(DEFAULT_SECONDS),
                   help="call durations to measure (default 10 120)")
    p.add_argument("--kbps", type=positive_float, default=None, help="video target for vsae send (default its own)")
    p.add_argument("--out", default="bench/results/liveview", help="output folder")


def _vsae(args: list[str], stdout=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "codec.cli", *args], stdout=stdout, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _summary(values: list[float]) -> dict:
    if not values:
        return {"count": 0, "median_ms": None, "p95_ms": None}
    a = np.asarray(values, np.float64)
    return {"count": len(values), "median_ms": round(float(np.median(a)), 1), "p95_ms": round(float(np.percentile(a, 95)), 1),
            "min_ms": round(float(a.min()), 1), "max_ms": round(float(a.max()), 1)}


async def measure(model: str, source: str, fmt: str, seconds: float, out: Path, kbps: float | None,
                  screenshot: Path | None) -> dict:
    stats_path = out / f"recv-{seconds:g}s.json"
    recv = _vsae(["recv", "--listen", "127.0.0.1:0", "--view", "127.0.0.1:0", "-o", str(out / "call.mp4"),
                  "--stats", str(stats_path), "--timeout", str(seconds + MARGIN_S)])
    try:
        view_line, listen_line = recv.stdout.readline(), recv.stdout.readline()
        if "live view at" not in view_line:
            raise VsaeError(f"vsae recv did not start: {view_line}{recv.stderr.read()[-2000:]}")
        url, listen = view_line.split(" at ", 1)[1].strip(), listen_line.rsplit(" ", 1)[1].strip()
        async with Chromium() as browser:
            page = await browser.open(url, ready="window.vsaeView")
            argv = ["send", "--input", source, "--input-format", fmt, "--connect", listen, "--model", model,
                    "--duration", f"{seconds:g}", "--stamp-capture-time", "--json"]
            send = _vsae(argv + (["--kbps", f"{kbps:g}"] if kbps else []))
            began, shot_at, first_frame, trace = time.monotonic(), None, None, []
            while send.poll() is None:
                await asyncio.sleep(POLL_S)
                view = await page.evaluate("({d: vsaeView.framesDecoded, s: vsaeView.stats, "
                                           "n: vsaeView.latencies.rebuilt.length, nb: vsaeView.latencies.bicubic.length})")
                trace.append({"t": round(time.monotonic() - began, 1), "decoded": view["d"], "stamps": [view["n"], view["nb"]],
                              "page_fps": view["s"].get("fps"), "kbps": view["s"].get("kbps")})
                if first_frame is None and view["d"]["rebuilt"]:
                    first_frame = time.monotonic()
                if screenshot is not None and shot_at is None and first_frame and time.monotonic() - first_frame >= seconds / 2:
                    screenshot.write_bytes(await page.screenshot())
                    shot_at = trace[-1]["t"]
                if time.monotonic() - began > seconds + MARGIN_S:
                    send.kill()
                    raise VsaeError(f"the {seconds:g} s call did not end within {MARGIN_S:g} s of its length")
            send_out, send_err = send.communicate()
            if send.returncode != 0:
                raise VsaeError(f"vsae send failed: {send_err[-2000:]}")
            latencies = await page.evaluate("vsaeView.latencies")
            decoded = await page.evaluate("vsaeView.framesDecoded")
        recv.wait(60)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    sent = json.loads(send_out.strip().splitlines()[-1])
    received = json.loads(stats_path.read_text())
    stats_path.unlink()
    return {
        "seconds": seconds, "source": source,
        "capture": sent["capture"], "frames": sent["frames"], "frames_sent": sent["frames_sent"],
        "video_kbps": sent["video_kbps"], "keyframe_requests": sent["keyframe_requests"],
        "browser_frames_decoded": decoded,
        "capture_to_display": {"rebuilt": _summary(latencies["rebuilt"]), "bicubic": _summary(latencies["bicubic"])},
        "capture_to_display_ms": latencies,  # every stamp the page read, per track, in display order
        "receiver": {k: received.get(k) for k in ("frames_out", "frames_concealed", "frames_dropped_backlog", "latency_ms",
                                                   "latency_ms_p95", "fps_reconstruct", "ladder", "method", "iterations")},
        "screenshot_at_s": shot_at, "trace": trace,
    }


def table(runs: list[dict]) -> str:
    rows = ["| call | capture fps | captured | dropped | frames out (concealed) | decoded in browser | capture→display median / p95 (ms), track, stamps | receiver latency median / p95 (ms) |",
            "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        c = r["capture"]
        track = "rebuilt" if r["capture_to_display"]["rebuilt"]["count"] else "bicubic"
        lat = r["capture_to_display"][track]
        rows.append(f"| {r['seconds']:g} s | {c['capture_fps']} | {c['captured']} | {c['dropped']} | "
                    f"{r['receiver']['frames_out']} ({r['receiver']['frames_concealed']}) | "
                    f"{r['browser_frames_decoded']['rebuilt']} / {r['browser_frames_decoded']['bicubic']} | "
                    f"{lat['median_ms']} / {lat['p95_ms']}, {track}, {lat['count']} | "
                    f"{r['receiver']['latency_ms']} / {r['receiver']['latency_ms_p95']} |")
    return "\n".join(rows) + "\n"


def run(args: argparse.Namespace) -> int:
    if find_chromium() is None:
        raise VsaeError("no Chromium found (apt-get install chromium, or set VSAE_CHROMIUM)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    longest = max(args.seconds)
    runs = []
    for seconds in args.seconds:
        print(f"vsae bench liveview: {seconds:g} s call from {args.source}", file=sys.stderr, flush=True)
        try:
            runs.append(asyncio.run(measure(args.model, args.source, args.input_format, seconds, out, args.kbps,
                                            out / "liveview.png" if seconds == longest else None)))
        except BrowserError as exc:
            raise VsaeError(f"browser: {exc}") from None
    (out / "call.mp4").unlink(missing_ok=True)
    machine = {"cpu": cpu_description()["model"], "cores": os.cpu_count(), "load_average_at_end": [round(v, 2) for v in os.getloadavg()]}
    write_results(out, "liveview", {"model": args.model, "machine": machine, "runs": runs}, table(runs), out / "liveview.png")
    return 0
