"""`vsae demo`: the whole product in one command, on loopback.

Fits a model for the clip (or reuses the cached one), starts `vsae recv` and `vsae send` as two
processes talking WebRTC over 127.0.0.1, and writes OUT/side_by_side.mp4 (source | bicubic from the
same low-res stream | vsae), OUT/stats.json and a short summary.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from codec import bundle
from codec.argtypes import positive, positive_float
from codec.errors import VsaeError
from codec.cache import cached_fit
from codec.train import DEFAULT_MINUTES
from codec.video import VideoWriter, read_video, resolve_video
from protocol.defaults import DEFAULT_CODEC, DEFAULT_KBPS, DEFAULT_SCALE, DEFAULT_TEMPORAL
from protocol.messages import CODECS
from protocol.peer import codec_list

from .cli import summary_line
from .spawn import vsae_command

DEFAULT_VIDEO = "carphone"
DEFAULT_OUT = "vsae-demo"
# The demo's model is fitted on the even frames: every odd output frame is one the model never saw.
FIT_FRAMES = "even"
LISTEN_TIMEOUT_S = 60.0
STREAM_TIMEOUT_S = 600.0
SEPARATOR_PX = 2


def cached_model(video: Path, minutes: float, progress: bool = True) -> tuple[Path, bool]:
    """The demo's model for `video` (fitted on its even frames), cached after the first fit."""
    return cached_fit(video, FIT_FRAMES, minutes, progress=progress)


def _pump(stream, sink: list[str], echo: bool) -> None:
    for line in stream:
        sink.append(line.rstrip("\n"))
        if echo:
            print(f"  {line.rstrip()}", file=sys.stderr)


def run_stream(
    video: str | Path,
    model: str | Path,
    out: str | Path,
    scale: int = DEFAULT_SCALE,
    temporal: int = DEFAULT_TEMPORAL,
    kbps: float = DEFAULT_KBPS,
    codec: str = DEFAULT_CODEC,
    frames: str | None = None,
    extra_recv: tuple[str, ...] = (),
    timeout: float = STREAM_TIMEOUT_S,
    echo: bool = False,
    extra_send: tuple[str, ...] = (),
    recv_host: str = "127.0.0.1",
    recv_wrap: tuple[str, ...] = (),
    send_wrap: tuple[str, ...] = (),
) -> dict:
    """Run `vsae recv` and `vsae send` as two processes (over loopback by default; `recv_wrap`/`send_wrap`
    prefix their commands, e.g. `ip netns exec NS`, with the receiver listening on `recv_host`); returns the
    receiver's stats (with the sender's report under "sender"). Writes OUT/vsae.mp4, OUT/bicubic.mp4,
    OUT/stats.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recv_cmd = [*recv_wrap, *vsae_command(
        "recv", "--listen", f"{recv_host}:0", "-o", str(out / "vsae.mp4"), "--stats", str(out / "stats.json"),
        "--reference", str(video), "--bicubic-output", str(out / "bicubic.mp4"), "--timeout", str(timeout),
        *(("--reference-frames", frames) if frames else ()), *extra_recv)]
    receiver = subprocess.Popen(recv_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    recv_out: list[str] = []
    recv_err: list[str] = []
    try:
        port = _wait_listening(receiver, recv_out)
        threading.Thread(target=_pump, args=(receiver.stdout, recv_out, echo), daemon=True).start()
        threading.Thread(target=_pump, args=(receiver.stderr, recv_err, echo), daemon=True).start()
        send_cmd = [*send_wrap, *vsae_command("send", str(video), "--connect", f"{recv_host}:{port}", "--model", str(model),
                                              "--scale", str(scale), "--temporal", str(temporal), "--kbps", str(kbps),
                                              "--codec", codec, "--json", *(("--frames", frames) if frames else ()), *extra_send)]
        try:
            sender = subprocess.run(send_cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            (out / "sender.log").write_text(exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or "")
            raise VsaeError(f"sender did not finish within {timeout:g} s (receiver: {_last_line(chr(10).join(recv_err))})") from None
        (out / "sender.log").write_text(sender.stderr)
        if sender.returncode != 0:
            time.sleep(0.2)  # the receiver's own account of the failure
            raise VsaeError(f"sender failed: {_last_line(sender.stderr)} (receiver: {_last_line(chr(10).join(recv_err))})")
        try:
            receiver.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise VsaeError("receiver did not finish within 60 s of the sender") from None
        if receiver.returncode != 0:
            time.sleep(0.1)
            raise VsaeError(f"receiver failed: {_last_line(chr(10).join(recv_err))}")
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
        (out / "receiver.log").write_text("\n".join(recv_out + recv_err) + "\n")
    stats = json.loads((out / "stats.json").read_text())
    stats["sender"] = json.loads(sender.stdout.strip().splitlines()[-1])
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def _wait_listening(receiver: subprocess.Popen, lines: list[str]) -> int:
    deadline = time.monotonic() + LISTEN_TIMEOUT_S
    while time.monotonic() < deadline:
        line = receiver.stdout.readline()
        if not line:
            raise VsaeError(f"receiver exited before listening: {_last_line(receiver.stderr.read())}")
        lines.append(line.rstrip())
        if "listening on" in line:
            return int(line.rsplit(":", 1)[1])
    raise VsaeError(f"receiver not listening after {LISTEN_TIMEOUT_S:g} s")


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def side_by_side(source: np.ndarray, *videos: Path, path: Path, fps: float) -> int:
    """Write source | video1 | video2 ... as one MP4 (frames aligned by index); returns frames written."""
    decoded = [read_video(v)[0] for v in videos]
    count = min(len(source), *(len(d) for d in decoded))
    h, w = source.shape[1:3]
    gap = np.full((h, SEPARATOR_PX, 3), 255, np.uint8)
    with VideoWriter(path, (h, (w + SEPARATOR_PX) * (1 + len(videos)) - SEPARATOR_PX), fps) as writer:
        for i in range(count):
            panels = [source[i]] + [d[i][:h, :w] for d in decoded]
            row = [p for panel in panels for p in (panel, gap)][:-1]
            writer.write(np.concatenate(row, axis=1))
    return count


def cmd_demo(args: argparse.Namespace) -> int:
    began = time.monotonic()
    video = resolve_video(args.video)
    source, fps = read_video(video, args.frames)  # a bad video is one line here, before a fit or two processes
    out = Path(args.out)
    if args.model:
        model, fitted = Path(args.model), False
        bundle.load(model)
    else:
        model, fitted = cached_model(video, args.minutes)
    fit_s = time.monotonic() - began
    shape = f"÷{args.scale}, every {args.temporal} frame(s)"
    if args.switch_codecs and not args.shapes:
        raise VsaeError("--switch-codecs: the codec switches with the stream's shape (--shapes)")
    if args.shapes:
        shape = f"the shape following the rate by {args.shapes}"
        if args.switch_codecs:
            shape += f" (codec switching among {', '.join(dict.fromkeys((args.codec, *args.switch_codecs)))})"
    print(f"vsae demo: streaming {video.name} over loopback WebRTC: {shape}, {args.codec} at {args.kbps:g} kbps",
          file=sys.stderr)
    live = (("--guard",) if args.guard else ()) + (("--refresh", "--model-kbps", f"{args.model_kbps:g}") if args.refresh else ())
    if args.shapes:
        live += ("--shapes", args.shapes)
    if args.switch_codecs:
        live += ("--switch-codecs", ",".join(args.switch_codecs))
    stats = run_stream(video, model, out, args.scale, args.temporal, args.kbps, args.codec, args.frames, echo=args.verbose,
                       extra_send=live)
    count = side_by_side(source, out / "bicubic.mp4", out / "vsae.mp4", path=out / "side_by_side.mp4", fps=fps)
    stats["demo"] = {"model": str(model), "model_fitted_now": fitted, "fit_s": round(fit_s, 1),
                     "wall_s": round(time.monotonic() - began, 1), "side_by_side_frames": count}
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(f"vsae demo: {summary_line(stats)}")
    print(f"vsae demo: wrote {out / 'side_by_side.mp4'} (source | bicubic | vsae), {out / 'stats.json'} "
          f"in {time.monotonic() - began:.0f} s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="fit (or reuse) a model and stream a clip through sender and receiver over loopback")
    p.add_argument("--video", default=DEFAULT_VIDEO, help="video file or bundled clip name (default: carphone)")
    p.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: vsae-demo)")
    p.add_argument("--model", default=None, help="use this model instead of the cached fit")
    p.add_argument("--minutes", type=positive_float, default=DEFAULT_MINUTES, help="fit budget when no cached model exists")
    p.add_argument("--scale", type=positive, default=DEFAULT_SCALE)
    p.add_argument("--temporal", type=positive, default=DEFAULT_TEMPORAL)
    p.add_argument("--kbps", type=positive_float, default=DEFAULT_KBPS)
    p.add_argument("--codec", choices=CODECS, default=DEFAULT_CODEC)
    p.add_argument("--frames", default=None, help="frame selection to stream (default: all)")
    p.add_argument("--guard", action="store_true",
                   help="a live call: the sender guards every frame from its closed loop (see vsae send --guard)")
    p.add_argument("--refresh", action="store_true", help="a live call with live model updates (vsae send --refresh)")
    p.add_argument("--model-kbps", type=positive_float, default=10.0, help="model-update budget with --refresh (default 10)")
    p.add_argument("--shapes", default=None, metavar="RESULTS.json",
                   help="let the stream's shape follow the rate by this rate-quality table (vsae send --shapes)")
    p.add_argument("--switch-codecs", type=codec_list, default=(), metavar="CODEC[,CODEC]",
                   help="with --shapes: other codecs the stream may switch to mid-call (vsae send --switch-codecs)")
    p.add_argument("-v", "--verbose", action="store_true", help="show the receiver's log")
    p.set_defaults(func=cmd_demo)
