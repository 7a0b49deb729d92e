"""`vsae send`: stream a video to a listening `vsae recv` (plugged into the `vsae` CLI by entry point)."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys

from codec import bundle
from codec.cli import _positive, _positive_float
from codec.errors import VsaeError
from codec.memory import peak_rss_mb
from codec.video import read_video
from protocol.auth import secret_option
from protocol.messages import CODECS
from protocol.peer import install_event_loop, parse_address

from .session import DEFAULT_CODEC, DEFAULT_KBPS, DEFAULT_SCALE, DEFAULT_TEMPORAL, SendOptions, SessionError, send


def loop_count(loop: int | None, duration: float | None, frames: int, fps: float) -> int:
    """How many passes of the clip to stream: --loop N as given, or for --duration S the fewest whole
    passes that last at least S seconds; 1 without either."""
    if loop is not None and duration is not None:
        raise VsaeError("--loop and --duration are alternatives: give one")
    if loop is not None:
        if loop < 1:
            raise VsaeError(f"--loop must be a positive number of passes, got {loop}")
        return loop
    if duration is not None:
        if not (duration > 0 and math.isfinite(duration)):
            raise VsaeError(f"--duration must be a positive number of seconds, got {duration:g}")
        return max(1, math.ceil(duration * fps / frames - 1e-9))  # tolerance: 8.0 s of a 4.0 s clip is 2 passes
    return 1


def cmd_send(args: argparse.Namespace) -> int:
    loop_count(args.loop, args.duration, 1, 1.0)  # bad values fail before any file is read
    try:
        host, port = parse_address(args.connect)
    except ValueError as exc:
        raise VsaeError(f"--connect: {exc}") from None
    bind = None
    if args.bind:
        try:
            bind, _ = parse_address(f"{args.bind}:0")
        except ValueError as exc:
            raise VsaeError(f"--bind: {exc}") from None
    try:
        model = open(args.model, "rb").read()
    except OSError as exc:
        raise VsaeError(f"cannot read model {args.model}: {exc.strerror}") from None
    codec = bundle.loads(model)  # refuse a broken or foreign model here, before any connection
    secret = secret_option(args.secret_file, "vsae send")
    frames, fps = read_video(args.video, args.frames)
    size = codec.meta.get("frame_size")
    if isinstance(size, list) and len(size) == 2 and size != [frames.shape[2], frames.shape[1]]:
        raise VsaeError(f"the model was fitted at {size[0]}x{size[1]} but the video is {frames.shape[2]}x{frames.shape[1]}")
    loop = loop_count(args.loop, args.duration, len(frames), args.fps or fps)
    options = SendOptions(host=host, port=port, scale=args.scale, temporal=args.temporal, kbps=args.kbps,
                          codec=args.codec, fps=args.fps, connect_timeout=args.connect_timeout, bind=bind,
                          secret=secret, loop=loop)
    install_event_loop()
    looped = f" x{loop} passes" if loop > 1 else ""
    print(f"vsae send: {len(frames)} frames{looped} {frames.shape[2]}x{frames.shape[1]} -> {host}:{port}, "
          f"÷{args.scale} every {args.temporal} frame(s), {args.codec} at {args.kbps:g} kbps", file=sys.stderr)
    try:
        result = asyncio.run(send(frames, fps, model, options))
    except SessionError as exc:
        raise VsaeError(str(exc)) from None
    summary = {
        "frames": result.frames, "frames_sent": result.frames_sent, "video_kbps": round(result.video_kbps, 3),
        "video_bytes": result.video_bytes, "video_packets": result.video_packets,
        "model_bytes_sent": result.model_bytes_sent, "keyframe_requests": result.keyframe_requests,
        "receiver_frames_out": result.receiver_frames_out, "wall_s": round(result.wall_s, 2), "loop": loop,
        "peak_rss_mb": round(peak_rss_mb(), 1), **result.extra,
    }
    print(json.dumps(summary) if args.json else
          f"vsae send: done, {result.frames_sent} low-res frames at {result.video_kbps:.1f} kbps measured "
          f"(target {args.kbps:g}), model {'sent' if result.model_bytes_sent else 'already at the receiver'}, "
          f"receiver output {result.receiver_frames_out} frames")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("send", help="stream a video's low-res frames to a vsae receiver over WebRTC")
    p.add_argument("video", help="video file or bundled clip name (carphone, bikes)")
    p.add_argument("--connect", required=True, metavar="HOST:PORT", help="the receiver's signaling address, e.g. 127.0.0.1:8765")
    p.add_argument("--model", required=True, help="the video's model bundle (.vsae)")
    p.add_argument("--scale", type=_positive, default=DEFAULT_SCALE, help="spatial factor S: send frames ÷S")
    p.add_argument("--temporal", type=_positive, default=DEFAULT_TEMPORAL, help="temporal factor T: send every T-th frame")
    p.add_argument("--kbps", type=_positive_float, default=DEFAULT_KBPS, help="video bitrate target (kbps)")
    p.add_argument("--codec", choices=CODECS, default=DEFAULT_CODEC)
    p.add_argument("--frames", default=None, help="frame selection, e.g. 0:60 or even")
    p.add_argument("--fps", type=_positive_float, default=None, help="source frame rate to stream at (default: the video's)")
    p.add_argument("--loop", type=int, default=None, metavar="N",
                   help="stream the clip N times back to back as one stream of N x frames (source indices keep "
                        "counting; the receiver's output is N x frames long; see vsae recv --reference-loop)")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="instead of --loop: repeat the clip in whole passes until the stream lasts at least SECONDS")
    p.add_argument("--bind", default=None, metavar="HOST",
                   help="this side's address for media (default: the --connect host; set it when the receiver is on another network namespace)")
    p.add_argument("--secret-file", default=None, metavar="FILE",
                   help="shared secret (>= 16 bytes) for a receiver started with the same --secret-file")
    p.add_argument("--connect-timeout", type=_positive_float, default=15.0, help="seconds to wait for the receiver")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_send)
