"""`vsae send`: stream a video to a listening `vsae recv` (plugged into the `vsae` CLI by entry point).

`--connect` may be repeated: one sender process then runs one full session per receiver at once, in one
event loop, each with its own peer connection and encoder, from low-res frames prepared once. A session
that fails does not stop the others. With one receiver the output is one summary (`--json`: one object);
with several, one per receiver in `--connect` order (`--json`: a list of objects, each with `connect` and
`ok`, and `error` instead of the results when that session failed). Exit status 1 if any session failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import sys

import numpy as np
import torch

from codec import bundle
from codec.capture import LiveCapture, parse_options
from codec.argtypes import non_negative, positive, positive_float
from codec.errors import VsaeError
from codec.refresh import UPDATE_FORMS
from codec.memory import peak_rss_mb
from codec.video import read_video
from protocol.auth import secret_option
from protocol.defaults import DEFAULT_CODEC, DEFAULT_KBPS, DEFAULT_SCALE, DEFAULT_TEMPORAL
from protocol.messages import CODECS, MAX_FRAMES
from protocol.peer import codec_list, install_event_loop, parse_address

from .closedloop import RefreshOptions
from .session import DEFAULT_RETRIES, MODEL_PACES, SWITCH_MODES, LiveFrames, SendOptions, SendResult, SessionError, prepare_low_res, send, stream_config
from .shapes import load_table, setting_text


LIVE_SENDER_THREADS = 1


def _summary(result: SendResult, loop: int) -> dict:
    return {
        "frames": result.frames, "frames_sent": result.frames_sent, "video_kbps": round(result.video_kbps, 3),
        "video_bytes": result.video_bytes, "video_packets": result.video_packets,
        "model_bytes_sent": result.model_bytes_sent, "keyframe_requests": result.keyframe_requests,
        "receiver_frames_out": result.receiver_frames_out, "wall_s": round(result.wall_s, 2), "attempts": result.attempts,
        "loop": loop, "peak_rss_mb": round(peak_rss_mb(), 1), **result.extra,
    }


def _done_line(result: SendResult, kbps: float) -> str:
    return (f"done, {result.frames_sent} low-res frames at {result.video_kbps:.1f} kbps measured "
            f"(target {kbps:g}), model {'sent' if result.model_bytes_sent else 'already at the receiver'}, "
            f"receiver output {result.receiver_frames_out} frames" + _live_line(result.extra.get("live"))
            + _shape_line(result.extra.get("shape_log")))


def _shape_line(shapes: list[dict] | None) -> str:
    if not shapes:
        return ""
    path = " -> ".join(f"{s['shape']}@{s['first']}" for s in shapes if s["first"] is not None)
    return f"; shapes {path} ({len(shapes) - 1} switch{'es' if len(shapes) != 2 else ''})"


def _live_line(live: dict | None) -> str:
    if not live:
        return ""
    line = (f"; closed loop: shown {live['psnr_shown']:.2f} dB (vsae {live['psnr_vsae']:.2f}, bicubic "
            f"{live['psnr_bicubic']:.2f}), guard {live['guard_kbps']:.2f} kbps")
    if "refresh_steps" in live:
        line += (f", {live['updates_acked']}/{live['updates_sent']} updates applied ({live['model_kbps']:.2f} kbps, "
                 f"{live['refresh_steps']} of {live['refresh_steps_due']} refresh steps)")
    return line


async def send_all(frames: np.ndarray, fps: float, model: bytes, options: list[SendOptions]) -> list[SendResult | str]:
    """One session per receiver, all at once; each entry is that session's result or why it failed."""
    first = options[0]
    prepared = prepare_low_res(frames, first.scale, first.temporal)  # the same stream for every receiver

    async def one(o: SendOptions) -> SendResult | str:
        try:
            return await send(frames, fps, model, o, prepared)
        except Exception as exc:  # noqa: BLE001 -- any failure stays this session's, the others go on
            return str(exc) if isinstance(exc, SessionError) else f"{type(exc).__name__}: {exc}"

    return list(await asyncio.gather(*(one(o) for o in options)))


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
    targets = []
    for text in args.connect:
        try:
            targets.append(parse_address(text))
        except ValueError as exc:
            raise VsaeError(f"--connect: {exc}") from None
    if len(set(targets)) < len(targets):
        raise VsaeError("--connect: the same receiver is given twice (a receiver serves one session at a time)")
    if len({host for host, _ in targets}) > 1 and not args.bind:
        # ICE gathers on one address per process (protocol.peer.restrict_host_candidates), so say which.
        raise VsaeError("--connect: receivers on different hosts need --bind HOST (this side's address for media)")
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
    if (args.video is None) == (args.input is None):
        raise VsaeError("give a video file (or clip name) or --input URL for a live source, not both")
    size = codec.meta.get("frame_size")
    if args.switch_codecs and args.shapes is None:
        raise VsaeError("--switch-codecs: the codec switches with the stream's shape (--shapes)")
    if args.input is not None and args.shapes is not None:
        raise VsaeError("--shapes: a live source keeps one stream shape (its frames are downsized as they come)")
    if args.input is not None:
        return _send_live(args, model, size, targets, bind, secret)
    if args.input_format or args.input_option or args.stamp_capture_time:
        raise VsaeError("--input-format, --input-option and --stamp-capture-time go with --input")
    frames, fps = read_video(args.video, args.frames, fps=args.fps)  # --fps: also when the file's rate is unusable
    if isinstance(size, list) and len(size) == 2 and size != [frames.shape[2], frames.shape[1]]:
        raise VsaeError(f"the model was fitted at {size[0]}x{size[1]} but the video is {frames.shape[2]}x{frames.shape[1]}")
    loop = loop_count(args.loop, args.duration, len(frames), args.fps or fps)
    table = None
    if args.shapes is not None:
        if args.guard or args.refresh:
            raise VsaeError("--shapes: the guard's closed loop keeps one stream shape")
        table = load_table(args.shapes, (args.codec, *args.switch_codecs), args.fps or fps)  # a VsaeError if bad
    refresh = None
    if args.refresh:
        refresh = RefreshOptions(form=args.update_form, model_kbps=args.model_kbps, steps_per_s=args.refresh_steps)
    options = [SendOptions(host=host, port=port, scale=args.scale, temporal=args.temporal, kbps=args.kbps,
                           start_kbps=args.start_kbps, codec=args.codec, fps=args.fps,
                           connect_timeout=args.connect_timeout, bind=bind,
                           secret=secret, retries=args.retries, loop=loop, guard=args.guard or args.refresh,
                           refresh=refresh, early_start=not args.wait_for_model, model_pace=args.model_pace,
                           shape_table=table, probe=args.probe, feedback=args.feedback)
               for host, port in targets]
    try:
        stream_config(frames.shape, fps, options[0])  # e.g. a frame rate the protocol cannot carry: refused before connecting
    except SessionError as exc:
        raise VsaeError(str(exc)) from None
    if args.guard or args.refresh:
        # The closed loop and the refresh trainer each run torch on their own thread: one intra-op thread
        # each, so they run side by side instead of oversubscribing the cores (measured on 2 busy cores:
        # 73 ms per closed-loop key with one thread, 1.4 s with two).
        torch.set_num_threads(LIVE_SENDER_THREADS)
    install_event_loop()
    where = ", ".join(f"{host}:{port}" for host, port in targets)
    looped = f" x{loop} passes" if loop > 1 else ""
    if refresh is not None:
        looped += f", live: guard + refresh ({refresh.form}, {refresh.model_kbps:g} kbps model stream)"
    elif args.guard:
        looped += ", live: guard"
    shape = (f"shape by the estimate from {args.shapes} ({len(table.curves)} shapes"
             + (f" of {', '.join(table.codecs)}" if len(table.codecs) > 1 else "") + f", {setting_text(table)})"
             if table is not None else f"÷{args.scale} every {args.temporal} frame(s)")
    print(f"vsae send: {len(frames)} frames{looped} {frames.shape[2]}x{frames.shape[1]} -> {where}, "
          f"{shape}, {args.codec} at {args.kbps:g} kbps", file=sys.stderr)
    if table is not None and not table.unseen:
        print("vsae send: note: on a call's new frames the model's shapes score lower than this table predicts (8-10 dB "
              "on carphone), so it may pick them where the plain codec is better; a table for a call is measured with "
              "`vsae bench rd --setting heldout --split half` on the prior footage", file=sys.stderr)
    if len(options) == 1:
        try:
            result = asyncio.run(send(frames, fps, model, options[0]))
        except SessionError as exc:
            raise VsaeError(str(exc)) from None
        print(json.dumps(_summary(result, loop)) if args.json else f"vsae send: {_done_line(result, args.kbps)}")
        return 0

    results = asyncio.run(send_all(frames, fps, model, options))
    report = []
    for (host, port), result in zip(targets, results):
        name = f"{host}:{port}"
        if isinstance(result, SendResult):
            report.append({"connect": name, "ok": True, **_summary(result, loop)})
            if not args.json:
                print(f"vsae send: {name}: {_done_line(result, args.kbps)}")
        else:
            report.append({"connect": name, "ok": False, "error": result})
            print(f"vsae send: {name}: failed: {result}", file=sys.stderr)
    if args.json:
        print(json.dumps(report))
    failed = [r for r in report if not r["ok"]]
    if failed:
        raise VsaeError(f"{len(failed)} of {len(report)} sessions failed; first: {failed[0]['connect']}: {failed[0]['error']}")
    return 0


def _send_live(args: argparse.Namespace, model: bytes, size, targets: list, bind: str | None, secret: bytes | None) -> int:
    """`vsae send --input URL`: stream a live source until --duration, the source's end or Ctrl-C."""
    if len(targets) > 1:
        raise VsaeError("--input streams to one receiver (one --connect)")
    for flag, given in (("--frames", args.frames), ("--loop", args.loop), ("--guard", args.guard),
                        ("--refresh", args.refresh)):
        if given:
            raise VsaeError(f"{flag} does not go with a live --input")
    if not (isinstance(size, list) and len(size) == 2):
        raise VsaeError("the model records no frame size (fitted by an older vsae?): a live source is scaled to it")
    capture = LiveCapture(args.input, args.input_format, parse_options(args.input_option), size=tuple(size),
                          fps=args.fps, stamp=args.stamp_capture_time)
    try:
        cap = math.ceil(args.duration * capture.fps) if args.duration is not None else MAX_FRAMES
        if args.duration is not None and not (args.duration > 0 and math.isfinite(args.duration)):
            raise VsaeError(f"--duration must be a positive number of seconds, got {args.duration:g}")
        host, port = targets[0]
        options = SendOptions(host=host, port=port, scale=args.scale, temporal=args.temporal, kbps=args.kbps,
                              start_kbps=args.start_kbps, codec=args.codec, fps=capture.fps,
                              connect_timeout=args.connect_timeout, bind=bind,
                              secret=secret, retries=args.retries, probe=args.probe,
                              feedback=args.feedback)
        live = LiveFrames(capture, min(cap, MAX_FRAMES))
        try:
            stream_config(live.shape, capture.fps, options)
        except SessionError as exc:
            raise VsaeError(str(exc)) from None
        install_event_loop()
        until = f"for {args.duration:g} s" if args.duration is not None else "until the source ends or Ctrl-C"
        print(f"vsae send: live {args.input} at {capture.fps:g} fps, scaled to {size[0]}x{size[1]} -> {host}:{port} "
              f"{until}, ÷{args.scale} every {args.temporal} frame(s), {args.codec} at {args.kbps:g} kbps", file=sys.stderr)

        async def run() -> SendResult:
            loop = asyncio.get_running_loop()
            def stop() -> None:  # Ctrl-C ends the stream cleanly (the receiver gets its bye); a second one quits
                print("vsae send: ending the live stream (Ctrl-C again to quit at once)", file=sys.stderr, flush=True)
                live.request_stop()
                loop.remove_signal_handler(signal.SIGINT)

            try:
                loop.add_signal_handler(signal.SIGINT, stop)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
                pass
            return await send(live, capture.fps, model, options)

        try:
            result = asyncio.run(run())
        except SessionError as exc:
            raise VsaeError(str(exc)) from None
    finally:
        capture.close()
    print(json.dumps(_summary(result, 1)) if args.json else f"vsae send: {_done_line(result, args.kbps)}; "
          f"{_capture_line(result.extra['capture'])}")
    return 0


def _capture_line(capture: dict) -> str:
    return (f"capture {capture['captured']} frames at {capture['capture_fps']} fps (source {capture['source_fps']:g}), "
            f"{capture['dropped']} dropped while streaming")


def model_pace(text: str) -> str | float:
    """--model-pace: 'auto', 'estimate', 'off', or a positive rate in kbps."""
    if text in MODEL_PACES:
        return text
    try:
        return positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(MODEL_PACES)} or a positive kbps, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("send", help="stream a video's low-res frames to a vsae receiver over WebRTC")
    p.add_argument("video", nargs="?", default=None, help="video file or bundled clip name (carphone, bikes); or --input")
    p.add_argument("--input", default=None, metavar="URL",
                   help="a live source instead of a file: anything FFmpeg opens, e.g. /dev/video0 (--input-format v4l2), "
                        "rtsp://..., udp://..., or a lavfi graph such as testsrc2=size=352x288:rate=15 (--input-format lavfi); "
                        "captured on its own thread at its own rate and scaled to the model's frame size")
    p.add_argument("--input-format", default=None, metavar="FMT", help="FFmpeg input format of --input (v4l2, lavfi, x11grab, ...)")
    p.add_argument("--input-option", action="append", default=None, metavar="K=V",
                   help="FFmpeg input option for --input, e.g. framerate=30 or video_size=640x480 (repeatable)")
    p.add_argument("--stamp-capture-time", action="store_true",
                   help="with --input: draw each frame's capture time as a block code in its top-left corner "
                        "(the live view's page reads it to measure capture-to-display latency)")
    p.add_argument("--connect", required=True, action="append", metavar="HOST:PORT",
                   help="the receiver's signaling address, e.g. 127.0.0.1:8765; repeat it to stream to several "
                        "receivers at once (--json then prints a list, one object per receiver)")
    p.add_argument("--model", required=True, help="the video's model bundle (.vsae)")
    p.add_argument("--scale", type=positive, default=DEFAULT_SCALE, help="spatial factor S: send frames ÷S")
    p.add_argument("--temporal", type=positive, default=DEFAULT_TEMPORAL, help="temporal factor T: send every T-th frame")
    p.add_argument("--kbps", type=positive_float, default=DEFAULT_KBPS, help="video bitrate target (kbps)")
    p.add_argument("--start-kbps", type=positive_float, default=None,
                   help="the video's first target, then it follows the link (default: --kbps to a receiver on this "
                        "machine; to any other half of --kbps's cost on the wire, climbing while the receiver reports no "
                        "loss; give --kbps to start at the full rate)")
    p.add_argument("--codec", choices=CODECS, default=DEFAULT_CODEC)
    p.add_argument("--frames", default=None, help="frame selection, e.g. 0:60 or even")
    p.add_argument("--fps", type=positive_float, default=None, help="source frame rate to stream at (default: the video's)")
    p.add_argument("--loop", type=int, default=None, metavar="N",
                   help="stream the clip N times back to back as one stream of N x frames (source indices keep "
                        "counting; the receiver's output is N x frames long; see vsae recv --reference-loop)")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="instead of --loop: repeat the clip in whole passes until the stream lasts at least SECONDS; "
                        "with --input: stream the live source for SECONDS (default: until it ends or Ctrl-C)")
    p.add_argument("--bind", default=None, metavar="HOST",
                   help="this side's address for media (default: the --connect host; set it when the receiver is on another network namespace)")
    p.add_argument("--secret-file", default=None, metavar="FILE",
                   help="shared secret (>= 16 bytes) for a receiver started with the same --secret-file")
    p.add_argument("--connect-timeout", type=positive_float, default=15.0, help="seconds to wait for the receiver")
    p.add_argument("--retries", type=non_negative, default=DEFAULT_RETRIES, metavar="N",
                   help=f"new sessions after a connection lost before the video starts; the model transfer resumes "
                        f"where it stopped (default {DEFAULT_RETRIES})")
    p.add_argument("--wait-for-model", action="store_true",
                   help="start the video only once the receiver has the model (default: at once, the receiver shows "
                        "the bicubic rebuild until the model has arrived; a --guard call always waits)")
    p.add_argument("--model-pace", type=model_pace, default="auto", metavar="auto|estimate|off|KBPS",
                   help="how the model travels during the video: 'estimate' inside what the bandwidth estimate leaves "
                        "the video, 'off' as fast as the data channel takes it, at most KBPS, or 'auto' (default): "
                        "'off' to a receiver on this machine (loopback), 'estimate' to any other")
    p.add_argument("--guard", action="store_true",
                   help="a live call: run the receiver's rebuild here (closed loop) and tell it, per frame and tile, "
                        "whether to show the vsae rebuild, the bicubic baseline or a blend (never worse than bicubic)")
    p.add_argument("--refresh", action="store_true",
                   help="with the guard: keep fine-tuning the model on the call's frames and ship verified updates "
                        "within --model-kbps")
    p.add_argument("--model-kbps", type=positive_float, default=10.0, help="model-update stream budget (kbps, default 10)")
    p.add_argument("--update-form", choices=UPDATE_FORMS, default="sparse-grad",
                   help="how updates are coded (codec/refresh.py; default sparse-grad)")
    p.add_argument("--refresh-steps", type=positive_float, default=50.0,
                   help="fine-tuning steps per second of call at most (default 50; a slow CPU does fewer, reported)")
    p.add_argument("--shapes", default=None, metavar="RESULTS.json",
                   help="adapt the stream's shape (S, T, or the plain codec at full size) to the bandwidth estimate, by "
                        "this rate-quality table: a `vsae bench rd --setting heldout --split half` results.json measured on "
                        "prior footage (the model's shapes on frames after its own, as a call's are; scaled to the call's "
                        "frame rate by bits per frame); --scale and --temporal are then not used")
    p.add_argument("--switch-codecs", type=codec_list, default=(), metavar="CODEC[,CODEC]",
                   help="with --shapes: other codecs the stream may switch to mid-call, in-band at a keyframe, where "
                        "the table predicts them better (e.g. h264 beside --codec vp8; the table must measure them)")
    p.add_argument("--probe", choices=SWITCH_MODES, default="auto",
                   help="probe the link with padding while the estimate is under --kbps, to find a link that widened "
                        "(auto: on unless the receiver is on this machine)")
    p.add_argument("--feedback", choices=SWITCH_MODES, default="auto",
                   help="ask the receiver for transport feedback in RTCP (the queue and rate its video packets arrive at, "
                        "every 0.2 s at most): the estimate then cuts when a queue stands, drains it, and probes "
                        "when the link widens (auto: on unless the receiver is on this machine)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_send)
