"""Speed benchmark: receiver throughput and per-stage time, and fit time per epoch, per frame size.

For each size (default 176×144, 352×288, 640×360) the carphone clip is resized to it and sent as the
receiver would get it: ÷S (default 4), every T-th frame, VP8 at a size-scaled bitrate. Measured:
  * per stage, per received frame: decode (VP8, PyAV), upsample (bilinear), reproject ×n, and per
    rebuilt in-between frame: interpolate (each of `--methods`, default the receiver's default);
  * end to end: output frames/s of the receiver's `Reconstructor` (decode included) for n ∈ {1,2,3,5}
    and T ∈ {1,2,4} — real time means ≥ 30 output frames/s;
  * fit: seconds per epoch of 60 frames.
Several temporal methods (`--methods motion,flow`, flow variants as `flow:PRESET[:SOURCE]`, see
bench.temporal) are timed side by side: interleaved repeat by repeat and pass by pass, so they share the
machine's load. Weights are the default model's random initialization: the arithmetic, hence the speed,
does not depend on their values (the flow's does a little, on the frames: they are real). Runs on CPU,
and on CUDA too when present (`--device auto`). Writes OUT/speed.json (per size: shared stages, and
per method its interpolation time and throughput) and OUT/speed.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import av
import torch

from codec.model import DEFAULT_MODEL, AutoEncoder, Normalization, model_config
from codec.ops import DEFAULT_TEMPORAL_METHOD, Codec, upsample
from codec.pipeline import Reconstructor
from codec.train import FitOptions, fit
from codec.video import read_video, resize, to_tensor, to_uint8
from protocol.timing import frame_pts, ticks_per_frame
from sender.encoder import DECODERS, RealtimeEncoder
from sender.session import prepare_low_res

from .rd import target_rates
from .temporal import _environment, methods_arg, parse_method

SIZES = ("176x144", "352x288", "640x360")
ITERATIONS = (1, 2, 3, 5)
TEMPORALS = (1, 2, 4)
REAL_TIME_FPS = 30.0
STREAM_FRAMES = 24  # source frames per end-to-end measurement
E2E_PASSES = 3  # timed passes over them (median)
FIT_FRAMES = 60
LOW_RES_KBPS_AT_176 = 20.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_ms(fn: Callable[[], object], repeat: int, device: torch.device) -> float:
    fn()  # warm-up (allocations, kernels)
    times = []
    for _ in range(repeat):
        _sync(device)
        began = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - began) * 1000)
    return round(statistics.median(times), 3)


def _median_ms_interleaved(fns: dict[str, Callable[[], object]], repeat: int, device: torch.device) -> dict[str, float]:
    """Like _median_ms for several functions, run round-robin so that they share the same load."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            _sync(device)
            began = time.perf_counter()
            fn()
            _sync(device)
            times[k].append((time.perf_counter() - began) * 1000)
    return {k: round(statistics.median(v), 3) for k, v in times.items()}


def _use(codec: Codec, spec: str) -> str:
    """Set the codec up for a method spec (flow options); returns the codec's method name."""
    method, options = parse_method(spec)
    if method == "blend":
        raise ValueError("the receiver has no `blend` method; time motion, residual, latent or flow")
    if options is not None:
        codec.flow = options
    return method


def _encoded_stream(low, indices, fps: float, kbps: float) -> list[av.Packet]:
    h, w = low.shape[1:3]
    encoder = RealtimeEncoder("vp8", w, h, kbps, fps)
    ticks = ticks_per_frame(fps)
    return [encoder.encode(frame, frame_pts(i, ticks), keyframe=j == 0) for j, (frame, i) in enumerate(zip(low, indices))]


def _decode_all(packets: list[av.Packet]) -> tuple[list, float]:
    decoder = av.CodecContext.create(DECODERS["vp8"], "r")
    began = time.perf_counter()
    frames = [f.to_ndarray(format="rgb24") for p in packets for f in decoder.decode(p)]
    return frames, (time.perf_counter() - began) * 1000 / max(1, len(packets))


def measure_size(size: tuple[int, int], device: torch.device, args: argparse.Namespace, source) -> dict:
    h, w = size
    frames = to_uint8(resize(to_tensor(source[:FIT_FRAMES]), (h, w)))
    torch.manual_seed(0)
    model = AutoEncoder(model_config(DEFAULT_MODEL))
    codec = Codec(model, Normalization.of(to_tensor(frames[:8])), device)
    fps = 30.0
    kbps = target_rates(h, w, (LOW_RES_KBPS_AT_176,))[0]
    methods = args.methods or (args.method,)
    row: dict = {"size": f"{w}x{h}", "device": str(device), "scale": args.scale, "low_res_kbps": kbps, "stages_ms": {},
                 "throughput_fps": {}, "methods": {m: {"stages_ms": {}, "throughput_fps": {}} for m in methods}}

    # Per stage.
    indices, low = prepare_low_res(frames[:STREAM_FRAMES], args.scale, 1)
    decoded, decode_ms = _decode_all(_encoded_stream(low, indices, fps, kbps))
    row["stages_ms"]["decode"] = round(decode_ms, 3)
    x = to_tensor(decoded[len(decoded) // 2][None]).to(device)
    row["stages_ms"]["upsample"] = _median_ms(lambda: upsample(x, (h, w)), args.repeat, device)
    up = upsample(x, (h, w))
    for n in args.iterations:
        row["stages_ms"][f"reproject_x{n}"] = _median_ms(lambda: codec.project(up, n), args.repeat, device)
    key_a = codec.key(to_tensor(decoded[0][None]), (h, w))
    key_b = codec.key(to_tensor(decoded[4][None]), (h, w))
    for t in args.temporals:
        if t > 1:
            fns = {m: (lambda m=m: codec.in_between(key_a, key_b, t - 1, _use(codec, m))) for m in methods}
            for m, per in _median_ms_interleaved(fns, max(3, args.repeat // 2), device).items():
                row["methods"][m]["stages_ms"][f"interpolate_t{t}_per_frame"] = round(per / (t - 1), 3)

    # End to end: the receiver's Reconstructor on a real stream, decode included.
    for t in args.temporals:
        indices, low = prepare_low_res(frames[:STREAM_FRAMES], args.scale, t)
        packets = _encoded_stream(low, indices, fps / t, kbps)
        for n in args.iterations:
            decoded, decode_ms = _decode_all(packets)
            received = [(i, to_tensor(f[None])[0]) for i, f in zip(indices, decoded)]
            rates: dict[str, list[float]] = {m: [] for m in methods}
            for _ in range(1 + E2E_PASSES):  # the first pass warms up (allocations, kernels) and is not counted
                for m in methods:  # interleaved pass by pass
                    rec = Reconstructor(codec, (h, w), t, n, _use(codec, m))
                    _sync(device)
                    began = time.perf_counter()
                    out = sum(len(rec.push(i, f)) for i, f in received) + len(rec.flush(indices[-1] + 1))
                    _sync(device)
                    rates[m].append(out / (time.perf_counter() - began + decode_ms * len(packets) / 1000))
            for m in methods:
                row["methods"][m]["throughput_fps"][f"n{n}_t{t}"] = round(statistics.median(rates[m][1:]), 2)
    # The first method's numbers also at the row's top level (the format before --methods).
    row["stages_ms"].update(row["methods"][methods[0]]["stages_ms"])
    row["throughput_fps"] = dict(row["methods"][methods[0]]["throughput_fps"])

    # Fit speed.
    if not args.skip_fit:
        result = fit(to_tensor(frames), model_config(DEFAULT_MODEL), FitOptions(epochs=args.fit_epochs, minutes=None, device=str(device), progress=False))
        row["fit_s_per_epoch"] = round(result.seconds / result.epochs, 3)
        row["fit_frames"] = len(frames)
    return row


def table(rows: list[dict], iterations: Sequence[int], temporals: Sequence[int]) -> str:
    lines = ["| size | device | method | " + " | ".join(f"n={n} T={t}" for n in iterations for t in temporals) + " | fit s/epoch |",
             "|---|---|---|" + "---|" * (len(iterations) * len(temporals) + 1)]
    for r in rows:
        for m, per in r["methods"].items():
            cells = []
            for n in iterations:
                for t in temporals:
                    fps = per["throughput_fps"][f"n{n}_t{t}"]
                    cells.append(f"**{fps:.1f}**" if fps >= REAL_TIME_FPS else f"{fps:.1f}")
            lines.append(f"| {r['size']} | {r['device']} | {m} | " + " | ".join(cells) + f" | {r.get('fit_s_per_epoch', 'n/a')} |")
    lines += ["", f"Output frames/s of the receiver (decode + upsample + reproject ×n + interpolation); bold: real time (≥ {REAL_TIME_FPS:g}).", ""]
    shared = [k for k in dict.fromkeys(k for r in rows for k in r["stages_ms"]) if not k.startswith("interpolate")]
    interp = list(dict.fromkeys(k for r in rows for per in r["methods"].values() for k in per["stages_ms"]))
    lines += ["| size | device | " + " | ".join(shared) + " |", "|---|---|" + "---|" * len(shared)]
    for r in rows:
        lines.append(f"| {r['size']} | {r['device']} | " + " | ".join(f"{r['stages_ms'].get(k, '')}" for k in shared) + " |")
    if interp:
        lines += ["", "| size | device | method | " + " | ".join(interp) + " |", "|---|---|---|" + "---|" * len(interp)]
        for r in rows:
            for m, per in r["methods"].items():
                lines.append(f"| {r['size']} | {r['device']} | {m} | " + " | ".join(f"{per['stages_ms'].get(k, '')}" for k in interp) + " |")
    lines += ["", "Per-stage milliseconds: per received frame, interpolation per rebuilt frame.", ""]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True)
    p.add_argument("--sizes", default=",".join(SIZES))
    p.add_argument("--iterations", type=lambda t: tuple(int(v) for v in t.split(",")), default=ITERATIONS)
    p.add_argument("--temporals", type=lambda t: tuple(int(v) for v in t.split(",")), default=TEMPORALS)
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--method", default=DEFAULT_TEMPORAL_METHOD, help="temporal method (one; see --methods)")
    p.add_argument("--methods", type=methods_arg, default=None,
                   help="several, timed side by side, e.g. motion,flow,flow:fast:received (overrides --method)")
    p.add_argument("--repeat", type=int, default=15, help="repetitions per stage timing (median)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CPU, and CUDA too when present")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--fit-epochs", type=int, default=2)
    p.add_argument("--skip-fit", action="store_true")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] if args.device in ("auto", "cpu") else []
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append(torch.device("cuda"))
    source, _ = read_video("carphone", f"0:{FIT_FRAMES}")
    rows = []
    for device in devices:
        for text in args.sizes.split(","):
            w, h = (int(v) for v in text.lower().split("x"))
            rows.append(measure_size((h, w), device, args, source))
            print(f"{text} {device}: " + ", ".join(f"{k} {v}" for k, v in rows[-1]["throughput_fps"].items()) + " fps", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**_environment(), "cuda": torch.cuda.is_available(),
           "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    (out / "speed.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1) + "\n")
    text = table(rows, args.iterations, args.temporals)
    (out / "speed.md").write_text(text)
    print(text)
    print(f"wrote {out / 'speed.json'}, {out / 'speed.md'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench speed", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))
