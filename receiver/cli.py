"""`vsae recv`: wait for a sender, rebuild its stream, write the video and stats (a `vsae` CLI plug-in)."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
from pathlib import Path

import torch

from codec import bundle
from codec.argtypes import positive, positive_float
from codec.errors import VsaeError
from codec.ops import DEFAULT_ITERATIONS, DEFAULT_TEMPORAL_METHOD, TEMPORAL_METHODS
from codec.video import read_video
from protocol.auth import secret_option
from protocol.peer import install_event_loop, parse_address

from .sampler import SAMPLE_INTERVAL_S
from .session import Receiver, ReceiveOptions
from .view import LiveView

# Torch threads for reconstruction: one core stays free for decoding and the event loop.
RECEIVER_THREADS = max(1, (torch.get_num_threads() or 1) - 1)


def plain_codecs(stats: dict) -> str:
    """The codec(s) of an adaptive stream's plain runs: the config's, or those its shape messages named."""
    named = dict((first, codec) for first, codec in stats.get("shape_codecs") or [])
    codecs = {named[first] for first, _, plain in stats.get("shape_runs") or [] if plain and first in named}
    return " and ".join(sorted(codecs)) if codecs else stats.get("codec", "")


def summary_line(stats: dict) -> str:
    parts = [f"{stats['frames_out']}/{stats['frames_in']} frames ({stats['frames_concealed']} concealed)"]
    if stats.get("video_kbps") is not None:
        parts.append(f"{stats['video_kbps']:.1f} kbps sent")
    if stats.get("psnr") is not None and stats.get("guard"):
        parts.append(f"PSNR shown {stats['psnr']:.2f} dB (guarded; vsae alone {stats['psnr_vsae']:.2f}) vs bicubic "
                     f"{stats['psnr_bicubic']:.2f} dB, guard {stats['guard_kbps']:.2f} kbps")
    elif stats.get("psnr") is not None:
        parts.append(f"PSNR vsae {stats['psnr']:.2f} dB vs bicubic {stats['psnr_bicubic']:.2f} dB")
    if stats.get("frames_plain"):
        # An adaptive stream's plain runs (sender/shapes.py) are shown as decoded: "vsae" and "bicubic" are one picture.
        parts.append(f"{stats['frames_plain']} frames plain {plain_codecs(stats)} at full size (shown as decoded)")
    if stats.get("early_start"):
        if stats.get("time_to_model_ms") is None:
            parts.append(f"the model never arrived: bicubic throughout (first frame after {stats['time_to_first_frame_ms']:.0f} ms)")
        else:
            after = f", then {stats['psnr_after_model']:.2f} dB" if stats.get("psnr_after_model") is not None else ""
            before = f" at {stats['psnr_before_model']:.2f} dB" if stats.get("psnr_before_model") is not None else ""
            parts.append(f"video at once (first frame after {stats['time_to_first_frame_ms']:.0f} ms), the model after "
                         f"{stats['time_to_model_ms']:.0f} ms: {stats['frames_before_model']} frames bicubic{before}{after}")
    if stats.get("guard") and (stats.get("updates_applied") or stats.get("updates_refused")):
        parts.append(f"{stats['updates_applied']} model updates applied, {stats['updates_refused']} refused "
                     f"({stats['model_kbps']:.2f} kbps)")
    if stats.get("fps_reconstruct"):
        parts.append(f"{stats['fps_reconstruct']:.1f} fps reconstruct")
    if stats.get("latency_ms") is not None:
        parts.append(f"latency {stats['latency_ms']:.0f} ms")
    ladder = stats.get("ladder")
    if ladder and (ladder["steps_down"] or ladder["steps_up"]):
        parts.append(f"rebuild ladder: {ladder['steps_down']} down / {ladder['steps_up']} up, ended at {ladder['rung_name']}")
    if stats.get("frames_dropped_backlog"):
        parts.append(f"{stats['frames_dropped_backlog']} dropped from the backlog")
    return ", ".join(parts)


async def _serve(options: ReceiveOptions, timeout: float | None, view: tuple[str, int] | None = None) -> dict:
    live_view = None
    if view is not None:
        live_view = LiveView(*view)
        options.on_output = live_view.publish
    receiver = Receiver(options)
    try:
        if live_view is not None:
            live_view.stats_source = receiver.live_stats
            view_port = await live_view.start()
            print(f"vsae recv: live view at http://{view[0]}:{view_port}/", flush=True)
        port = await receiver.start()
    except ConnectionError as exc:
        if live_view is not None:
            await live_view.stop()
        raise VsaeError(str(exc)) from None
    print(f"vsae recv: listening on {options.host}:{port}", flush=True)
    try:
        return await receiver.wait(timeout)
    except asyncio.TimeoutError:
        detail = f"; {len(receiver.failures)} failed session(s), last: {receiver.failures[-1]}" if receiver.failures else ""
        raise VsaeError(f"no complete session within {timeout:g} s{detail}") from None
    finally:
        if live_view is not None:
            await live_view.stop()


def cmd_recv(args: argparse.Namespace) -> int:
    try:
        host, port = parse_address(args.listen)
    except ValueError as exc:
        raise VsaeError(f"--listen: {exc}") from None
    view = None
    if args.view:
        try:
            view = parse_address(args.view)
        except ValueError as exc:
            raise VsaeError(f"--view: {exc}") from None
        if view[0] != host:
            # ICE gathers on one address per process (protocol.peer.restrict_host_candidates).
            raise VsaeError(f"--view {view[0]} and --listen {host} must be on the same address")
    secret = secret_option(args.secret_file, "vsae recv")
    models = {}
    if args.model:
        try:
            data = Path(args.model).read_bytes()
        except OSError as exc:
            raise VsaeError(f"cannot read model {args.model}: {exc.strerror}") from None
        models[hashlib.sha256(data).hexdigest()] = bundle.loads(data, args.device)
    if args.reference_loop and not args.reference:
        raise VsaeError("--reference-loop needs --reference")
    if args.samples:
        try:  # fail now, not when the first sender has connected
            Path(args.samples).parent.mkdir(parents=True, exist_ok=True)
            open(args.samples, "w").close()
        except OSError as exc:
            raise VsaeError(f"cannot write --samples {args.samples}: {exc.strerror}") from None
    reference = read_video(args.reference, args.reference_frames)[0] if args.reference else None
    torch.set_num_threads(args.threads)
    options = ReceiveOptions(host=host, port=port, output=args.output, stats=args.stats, reference=reference,
                             bicubic_output=args.bicubic_output, iterations=args.iterations, method=args.method,
                             adapt=not args.no_adapt, device=args.device, models=models, secret=secret, reference_loop=args.reference_loop,
                             samples=args.samples, sample_interval=args.sample_interval)
    install_event_loop()
    stats = asyncio.run(_serve(options, args.timeout, view))
    if args.stats:
        Path(args.stats).parent.mkdir(parents=True, exist_ok=True)
        Path(args.stats).write_text(json.dumps(stats, indent=2) + "\n")
    print(f"vsae recv: wrote {args.output}: {summary_line(stats)}", flush=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recv", help="receive a vsae stream over WebRTC and rebuild hi-res, full-rate video")
    p.add_argument("--listen", default="127.0.0.1:8765", metavar="HOST:PORT", help="signaling address (port 0: any free port)")
    p.add_argument("-o", "--output", required=True, help="output video (.mp4)")
    p.add_argument("--stats", default=None, help="write the session's stats as JSON here")
    p.add_argument("--reference", default=None, help="the original video: report PSNR/SSIM of vsae and bicubic")
    p.add_argument("--reference-frames", default=None, help="frame selection of the reference (match the sender's --frames)")
    p.add_argument("--model", default=None, help="a model bundle already here (a sender with the same one skips the transfer)")
    p.add_argument("--secret-file", default=None, metavar="FILE",
                   help="shared secret (>= 16 bytes): stream only from senders started with the same --secret-file")
    p.add_argument("--reference-loop", action="store_true",
                   help="the sender loops the clip (vsae send --loop/--duration): score output frame i against reference frame i mod its length")
    p.add_argument("--samples", default=None, metavar="FILE.jsonl",
                   help="while streaming, write one JSON line per interval: elapsed s, RSS MB, frames out, output fps, "
                        "frames received / concealed / dropped (vsae bench soak reads it)")
    p.add_argument("--sample-interval", type=positive_float, default=SAMPLE_INTERVAL_S, metavar="SECONDS",
                   help=f"seconds between --samples lines (default {SAMPLE_INTERVAL_S:g})")
    p.add_argument("--bicubic-output", default=None, help="also write the bicubic baseline from the same stream")
    p.add_argument("--iterations", type=positive, default=DEFAULT_ITERATIONS, help="reprojection iterations n")
    p.add_argument("--method", choices=TEMPORAL_METHODS, default=DEFAULT_TEMPORAL_METHOD, help="temporal rebuild")
    p.add_argument("--no-adapt", action="store_true",
                   help="keep --method and --iterations however slow this CPU is (default: step down a fixed ladder "
                        "before falling behind, back up with headroom; stats.json 'ladder')")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=positive, default=RECEIVER_THREADS, help="torch threads for reconstruction")
    p.add_argument("--timeout", type=positive_float, default=None, help="give up after this many seconds without a complete session")
    p.add_argument("--view", default=None, metavar="HOST:PORT",
                   help="serve a live view of the call at http://HOST:PORT/ (the rebuilt video beside the bicubic "
                        "baseline, with stats, sent to the browser over WebRTC); HOST must be the --listen host")
    p.set_defaults(func=cmd_recv)
