"""The `vsae` command line. Every command is `main(argv)`-callable, so tests drive it in-process.

The codec's own commands live here; the applications' (`vsae explore`, `vsae edit`, `vsae mask-check`)
come from codec/apps/cli.py. Later layers (sender, receiver, bench) plug theirs in through the
`vsae.commands` entry-point group, each a `register(subparsers)` function, so this module imports
nothing from them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Sequence

import torch

from . import bundle
from .apps.cli import register as register_apps
from .argtypes import positive, positive_float
from .capture import parse_options, record
from .errors import VsaeError
from .evaluate import evaluate
from .metrics import psnr_per_frame, ssim
from .model import DEFAULT_MODEL, MODELS, model_config
from .ops import DEFAULT_ITERATIONS, DEFAULT_TEMPORAL_METHOD, TEMPORAL_METHODS, Codec
from .pipeline import Reconstructor, reconstruct_stream
from .precision import TRAIN_PRECISIONS
from .train import DEFAULT_BATCH, DEFAULT_LR, DEFAULT_MINUTES, DEGRADE_FACTORS, FitOptions, fit, pick_device
from .video import downscale, parse_size, read_video, resolve_video, to_tensor, to_uint8, write_video

ENTRY_POINT_GROUP = "vsae.commands"


def _factors(text: str) -> tuple[int, ...]:
    if text in ("none", "off", ""):
        return (1,)
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected factors like 1,2,4,8 or none, got {text!r}") from None
    if not values or any(v < 1 or v > 64 for v in values):
        raise argparse.ArgumentTypeError(f"degradation factors must be 1..64, got {text!r}")
    return values


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_frame_size(codec: Codec) -> tuple[int, int] | None:
    """The (W, H) a bundle was fitted at, if recorded."""
    size = codec.meta.get("frame_size")
    return (int(size[0]), int(size[1])) if isinstance(size, list) and len(size) == 2 else None


def check_model_size(codec: Codec, frames: torch.Tensor, what: str) -> None:
    want, got = model_frame_size(codec), (frames.shape[-1], frames.shape[-2])
    if want is not None and want != got:
        raise VsaeError(
            f"the model was fitted at {want[0]}x{want[1]} but {what} is {got[0]}x{got[1]}; pass --size {want[0]}x{want[1]}"
        )


# -- fit ------------------------------------------------------------------------------------------
def cmd_fit(args: argparse.Namespace) -> int:
    if (args.video is None) == (args.input is None):
        raise VsaeError("give a video file (or clip name) or --input URL with --seconds, not both")
    if args.input is not None:
        if args.seconds is None:
            raise VsaeError("--input needs --seconds: how much of the live source to record and fit on")
        if args.frames:
            raise VsaeError("--frames selects from a file; with --input give --seconds")
        frames, fps = record(args.input, args.seconds, args.input_format, parse_options(args.input_option),
                             parse_size(args.size))
        print(f"recorded {len(frames)} frames ({len(frames) / fps:.1f} s at {fps:g} fps) of {args.input}", file=sys.stderr)
        path = None
    else:
        if args.seconds is not None or args.input_format or args.input_option:
            raise VsaeError("--seconds, --input-format and --input-option go with --input")
        path = resolve_video(args.video)
        frames, fps = read_video(path, args.frames, parse_size(args.size))
    x = to_tensor(frames)
    config = model_config(args.model, args.width)
    opts = FitOptions(
        epochs=args.epochs,
        minutes=None if args.epochs is not None and args.minutes is None else (args.minutes or DEFAULT_MINUTES),
        lr=args.lr,
        batch=args.batch,
        degrade=args.degrade,
        seed=args.seed,
        device=args.device,
        train_precision=args.train_precision,
        progress=not args.quiet,
        quantize=args.precision if args.qat and args.precision in bundle.QUANT_PRECISIONS else None,
    )
    device = pick_device(args.device)
    print(
        f"fitting {config.stages}-stage (stride {config.stride}) k={config.width} autoencoder on "
        f"{len(frames)} frames {frames.shape[2]}x{frames.shape[1]} of {path.name if path else args.input} ({device})",
        file=sys.stderr,
    )
    result = fit(x, config, opts)
    meta = {
        "source": path.name if path else args.input,
        "source_sha256": _file_sha256(path) if path else None,
        "frame_size": [int(frames.shape[2]), int(frames.shape[1])],
        "frames": len(frames),
        "frame_selection": args.frames or ("all" if path else f"live {args.seconds:g} s"),
        "fps": round(fps, 4),
        "final_psnr": result.final_psnr,
        "fit_seconds": round(result.seconds, 1),
        "epochs": round(result.epochs, 1),
        "steps": result.steps,
        "lr": args.lr,
        "batch": args.batch,
        "degrade": list(args.degrade),
        "seed": args.seed,
        "device": str(device),
        "train_precision": result.train_precision,
        "train_precision_reason": result.precision_reason,
        "model": args.model,
        "qat_steps": result.qat_steps,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    codec = Codec(result.model, result.normalization, torch.device("cpu"), meta)
    size = bundle.save(codec, args.output, args.precision)
    print(
        f"wrote {args.output}: {size} bytes ({args.precision}), {result.model.parameter_count()} parameters, "
        f"{result.epochs:.0f} epochs ({result.steps} steps, {result.train_precision}) in {result.seconds:.0f} s, "
        f"train PSNR {result.final_psnr:.2f} dB"
    )
    return 0


# -- convert --------------------------------------------------------------------------------------
def cmd_convert(args: argparse.Namespace) -> int:
    codec = bundle.load(args.model)
    before = Path(args.model).stat().st_size
    was = codec.storage
    if args.precision in ("f32", "f16") and was in bundle.QUANT_PRECISIONS:
        print(f"vsae convert: note: {args.model} holds {was} weights; storing them as {args.precision} does not bring "
              "back what the rounding lost", file=sys.stderr)
    size = bundle.save(codec, args.output, args.precision)
    print(f"wrote {args.output}: {size} bytes ({args.precision}; was {before} bytes, {was})")
    return 0


# -- info -----------------------------------------------------------------------------------------
def model_info(path: str | Path) -> dict:
    codec = bundle.load(path)
    cfg = codec.model.config
    return {
        "path": str(path),
        "bundle_bytes": Path(path).stat().st_size,
        "parameters": codec.model.parameter_count(),
        "storage": codec.storage,
        "config": {**cfg.to_dict(), "stride": cfg.stride, "latent_channels": cfg.latent_channels},
        "normalization": {"mean": codec.normalization.mean, "std": codec.normalization.std},
        "meta": codec.meta,
    }


def cmd_info(args: argparse.Namespace) -> int:
    info = model_info(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    cfg, meta = info["config"], info["meta"]
    print(f"{info['path']}: {info['bundle_bytes']} bytes ({info['storage']}), {info['parameters']} parameters")
    print(f"  architecture: k={cfg['width']} multipliers={cfg['multipliers']} stride {cfg['stride']}, latent {cfg['latent_channels']} channels")
    for key, value in meta.items():
        print(f"  {key}: {value}")
    return 0


# -- eval -----------------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    codec = bundle.load(args.model, pick_device(args.device))
    frames, _ = read_video(args.video, args.frames, parse_size(args.size))
    x = to_tensor(frames)
    check_model_size(codec, x, "the video")
    result = evaluate(codec, x, args.scale, args.temporal, args.iterations, args.method)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['frames']} frames, scale {args.scale}, temporal {args.temporal}, iterations {args.iterations}")
        for name in result["psnr"]:
            if result["psnr"][name] is not None:
                print(f"  {name:12s} PSNR {result['psnr'][name]:6.2f} dB  SSIM {result['ssim'][name]:.4f}")
    return 0


# -- lowres ---------------------------------------------------------------------------------------
def cmd_lowres(args: argparse.Namespace) -> int:
    frames, fps = read_video(args.video, args.frames, parse_size(args.size))
    low = to_uint8(downscale(to_tensor(frames[:: args.temporal]), args.scale))
    write_video(args.output, low, fps / args.temporal, crf=args.crf)
    print(f"wrote {args.output}: {len(low)} frames {low.shape[2]}x{low.shape[1]} at {fps / args.temporal:.2f} fps")
    return 0


# -- reconstruct ----------------------------------------------------------------------------------
def cmd_reconstruct(args: argparse.Namespace) -> int:
    codec = bundle.load(args.model, pick_device(args.device))
    size_wh = parse_size(args.size) or model_frame_size(codec)
    if size_wh is None:
        raise VsaeError("the model records no frame size; pass --size WxH")
    low, fps = read_video(args.lowres)
    size = (size_wh[1], size_wh[0])
    ref = to_tensor(read_video(args.reference, args.reference_frames, size_wh)[0]) if args.reference else None
    # The stream ends on a key; with a reference, frames after the last key are held so the output
    # aligns frame by frame with the source (up to T-1 frames, never sent).
    total = (len(low) - 1) * args.temporal + 1
    if ref is not None and total < len(ref) <= total + args.temporal - 1:
        total = len(ref)
    rec = Reconstructor(codec, size, args.temporal, args.iterations, args.method)
    received = ((i * args.temporal, to_tensor(f[None])) for i, f in enumerate(low))
    start = time.perf_counter()
    out = torch.stack([f.frame.cpu() for f in reconstruct_stream(rec, received, total)])
    seconds = time.perf_counter() - start
    write_video(args.output, to_uint8(out), fps * args.temporal)
    summary = {"frames_in": len(low), "frames_out": len(out), "fps_reconstruct": round(len(out) / seconds, 2)}
    if ref is not None:
        n = min(len(ref), len(out))
        summary["psnr"] = round(float(psnr_per_frame(out[:n], ref[:n]).mean()), 3)
        summary["ssim"] = round(ssim(out[:n], ref[:n]), 4)
    print(f"wrote {args.output}: {len(out)} frames {size_wh[0]}x{size_wh[1]} at {fps * args.temporal:.2f} fps")
    print(json.dumps(summary))
    return 0


# -- parser ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vsae", description="Video-specific autoencoder codec.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("fit", help="fit an autoencoder to a video and write a model bundle")
    p.add_argument("video", nargs="?", default=None, help="video file, or a bundled clip name (carphone, bikes, bigbuckbunny)")
    p.add_argument("-o", "--output", required=True, help="model bundle to write (.vsae)")
    p.add_argument("--input", default=None, metavar="URL",
                   help="record the prior footage from a live source instead (as vsae send --input: a camera, a stream, lavfi)")
    p.add_argument("--input-format", default=None, metavar="FMT", help="FFmpeg input format of --input (v4l2, lavfi, ...)")
    p.add_argument("--input-option", action="append", default=None, metavar="K=V", help="FFmpeg input option (repeatable)")
    p.add_argument("--seconds", type=positive_float, default=None, help="with --input: seconds to record and fit on")
    p.add_argument("--minutes", type=positive_float, default=None, help=f"wall-clock budget (default {DEFAULT_MINUTES})")
    p.add_argument("--epochs", type=positive, default=None, help="epoch budget instead of minutes")
    p.add_argument("--frames", default=None, help="all, even, odd or a slice A:B[:step] (default all)")
    p.add_argument("--size", default=None, help="resize frames to WxH before fitting")
    p.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(MODELS), help=f"architecture (default {DEFAULT_MODEL})")
    p.add_argument("--width", type=positive, default=None, help="width k of the first layer (default from --model)")
    p.add_argument("--lr", type=positive_float, default=DEFAULT_LR, help=f"Adam learning rate (default {DEFAULT_LR})")
    p.add_argument("--batch", type=positive, default=DEFAULT_BATCH, help=f"batch size (default {DEFAULT_BATCH})")
    p.add_argument("--degrade", type=_factors, default=DEGRADE_FACTORS,
                   help="degraded-input training factors, e.g. 1,2,4,8, or none (default 1,2,4,8)")
    p.add_argument("--precision", choices=bundle.PRECISIONS, default=bundle.DEFAULT_PRECISION,
                   help=f"weight storage in the bundle (default {bundle.DEFAULT_PRECISION}: convolution weights per-channel "
                        "integers, the rest f16)")
    p.add_argument("--no-qat", dest="qat", action="store_false",
                   help="with integer storage, skip the quantization-aware last part of the fit")
    p.add_argument("--train-precision", choices=TRAIN_PRECISIONS, default="auto",
                   help="arithmetic while training: auto (default) times a few steps of bf16 and f32 (CUDA: f16 and f32) "
                        "on this machine and keeps the faster")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("convert", help="store an existing model bundle at another precision (e.g. int8)")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True, help="model bundle to write")
    p.add_argument("--precision", choices=bundle.PRECISIONS, required=True, help="weight storage of the new bundle")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="show a model bundle's config, size and training metadata")
    p.add_argument("model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("eval", help="score rebuilding a video from its low-res / sparse stream")
    p.add_argument("model")
    p.add_argument("video")
    p.add_argument("--frames", default=None, help="all, even, odd or A:B[:step]")
    p.add_argument("--size", default=None, help="resize frames to WxH")
    p.add_argument("--scale", type=positive, default=4, help="spatial factor S (default 4)")
    p.add_argument("--temporal", type=positive, default=1, help="temporal factor T (default 1)")
    p.add_argument("--iterations", type=positive, default=DEFAULT_ITERATIONS, help=f"reprojections n (default {DEFAULT_ITERATIONS})")
    p.add_argument("--method", choices=TEMPORAL_METHODS, default=DEFAULT_TEMPORAL_METHOD, help="temporal rebuild")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("lowres", help="write the low-res, every-T-th-frame stream a sender would transmit")
    p.add_argument("video")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--scale", type=positive, default=4)
    p.add_argument("--temporal", type=positive, default=1)
    p.add_argument("--frames", default=None)
    p.add_argument("--size", default=None)
    p.add_argument("--crf", type=int, default=12, help="x264 quality of the written file (lower is better)")
    p.set_defaults(func=cmd_lowres)

    p = sub.add_parser("reconstruct", help="rebuild hi-res, full-rate video from a low-res file (offline receiver)")
    p.add_argument("model")
    p.add_argument("lowres")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--temporal", type=positive, default=1, help="the file holds every T-th frame")
    p.add_argument("--iterations", type=positive, default=DEFAULT_ITERATIONS)
    p.add_argument("--method", choices=TEMPORAL_METHODS, default=DEFAULT_TEMPORAL_METHOD)
    p.add_argument("--size", default=None, help="output WxH (default: the model's frame size)")
    p.add_argument("--reference", default=None, help="original video: print PSNR/SSIM against it")
    p.add_argument("--reference-frames", default=None, help="frame selection of the reference")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.set_defaults(func=cmd_reconstruct)

    register_apps(sub)

    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()(sub)
        except Exception as exc:  # a broken plug-in must not take the codec commands down with it
            print(f"vsae: warning: command plug-in {ep.name!r} failed to load: {exc}", file=sys.stderr)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except VsaeError as exc:
        print(f"vsae: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vsae: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into e.g. `head`, which closed early: not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
