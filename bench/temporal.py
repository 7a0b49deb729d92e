"""In-between benchmark: quality and speed of the temporal methods alone, side by side.

Quality (`vsae bench temporal VIDEO --model M`): key frames every T-th frame, made three ways —
  * `true`: the original frames, received full size (the in-between alone, nothing else in the way);
  * `reprojected`: g(f(x)) of the original frames, received full size (keys from the manifold);
  * `xS` (e.g. `x4`): the receiver's keys from the ÷S stream (area-downscaled, not VP8-coded);
then every method rebuilds the T-1 frames between each pair; PSNR/SSIM against the original frames,
on the in-betweens only. Methods: `blend` (pixel blend), the codec's temporal methods (`motion`,
`residual`, `latent`) and `flow` variants `flow[:PRESET[:SOURCE]]` (see parse_method). Methods run
interleaved pair by pair, so their wall times (also reported) share the machine's load.

Speed (`vsae bench temporal --speed`): ms per rebuilt in-between for each method, size and torch/OpenCV
thread count, all interleaved round-robin (method, then threads, then repeat), medians reported.

Results are JSON (OUT/temporal-*.json, OUT/interp-speed.json) with a markdown table beside each; plots
are drawn from the JSON alone (`vsae bench temporal --plot DIR`: DIR/temporal.png, DIR/interp-speed.png).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

import cv2
import torch

from codec import bundle
from codec.cli import check_model_size
from codec.metrics import psnr_per_frame, ssim
from codec.model import DEFAULT_MODEL, AutoEncoder, Normalization, model_config
from codec.ops import FLOW_PRESETS, FLOW_SOURCES, TEMPORAL_METHODS, Codec, FlowOptions, Key
from codec.video import downscale, parse_size, read_video, resize, to_tensor

KEY_MODES = ("true", "reprojected", "x4")
DEFAULT_METHODS = ("blend", "motion", "flow:ultrafast", "flow:fast", "flow:medium")


def parse_method(text: str) -> tuple[str, FlowOptions | None]:
    """'blend', a codec temporal method, or 'flow[:PRESET[:SOURCE]]' -> (method, flow options or None)."""
    name, *rest = text.split(":")
    if name == "blend" and not rest:
        return name, None
    if name not in TEMPORAL_METHODS or (rest and name != "flow") or len(rest) > 2:
        raise ValueError(f"bad method {text!r}: blend, {', '.join(TEMPORAL_METHODS)} or flow:PRESET[:SOURCE] "
                         f"(presets {', '.join(FLOW_PRESETS)}; sources {', '.join(FLOW_SOURCES)})")
    if name != "flow":
        return name, None
    defaults = FlowOptions()
    return name, FlowOptions(rest[0] if rest else defaults.preset, rest[1] if len(rest) > 1 else defaults.source)


def methods_arg(text: str) -> tuple[str, ...]:
    specs = tuple(t.strip() for t in text.split(",") if t.strip())
    for s in specs:
        try:
            parse_method(s)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return specs


def between(codec: Codec, spec: str, key_a: Key, key_b: Key, count: int) -> torch.Tensor:
    """The `count` in-betweens of one method spec (codec.flow is set for `flow` specs)."""
    method, options = parse_method(spec)
    if method == "blend":
        t = torch.arange(1, count + 1, dtype=torch.float32, device=key_a.frame.device).view(-1, 1, 1, 1) / (count + 1)
        return torch.lerp(key_a.frame, key_b.frame, t)
    if options is not None:
        codec.flow = options
    return codec.in_between(key_a, key_b, count, method)


def make_keys(codec: Codec, frames: torch.Tensor, mode: str) -> list[Key]:
    """Key frames for every frame in `frames` (K, 3, H, W), received as `mode` says (see KEY_MODES)."""
    size = tuple(frames.shape[-2:])
    if mode == "true":
        return [codec.key(f[None], size) for f in frames]
    if mode == "reprojected":
        return [codec.key(codec.project(f[None]).frames, size) for f in frames]
    if mode.startswith("x") and mode[1:].isdigit():
        return [codec.key(downscale(f[None], int(mode[1:])), size) for f in frames]
    raise ValueError(f"bad key mode {mode!r}: true, reprojected or xS")


def quality(codec: Codec, frames: torch.Tensor, temporal: int, mode: str, methods: Sequence[str]) -> dict:
    """PSNR/SSIM of each method's in-betweens against the original frames, and its wall time per frame."""
    used = ((frames.shape[0] - 1) // temporal) * temporal + 1
    keys = make_keys(codec, frames[:used:temporal], mode)
    psnrs: dict[str, list[float]] = {m: [] for m in methods}
    ssims: dict[str, list[float]] = {m: [] for m in methods}
    seconds = dict.fromkeys(methods, 0.0)
    for i in range(len(keys) - 1):
        truth = frames[i * temporal + 1 : (i + 1) * temporal]
        for m in methods:  # interleaved: every method on this pair before the next pair
            began = time.perf_counter()
            out = between(codec, m, keys[i], keys[i + 1], temporal - 1).cpu()
            seconds[m] += time.perf_counter() - began
            psnrs[m] += psnr_per_frame(out, truth).tolist()
            ssims[m] += [ssim(out, truth)] * len(truth)
    n = len(psnrs[methods[0]])
    return {"temporal": temporal, "keys": mode, "in_betweens": n,
            "psnr": {m: round(statistics.fmean(v), 3) for m, v in psnrs.items()},
            "ssim": {m: round(statistics.fmean(v), 4) for m, v in ssims.items()},
            "ms_per_frame": {m: round(1000 * s / n, 2) for m, s in seconds.items()}}


def quality_table(result: dict) -> str:
    methods = list(result["rows"][0]["psnr"])
    lines = [f"{result['clip']} {result['size']} ({result['frames']} frames), model {result['model']}", "",
             "| keys | T | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for r in result["rows"]:
        best = max(r["psnr"].values())
        cells = [f"**{v:.2f}**" if v == best else f"{v:.2f}" for v in r["psnr"].values()]
        lines.append(f"| {r['keys']} | {r['temporal']} | " + " | ".join(cells) + " |")
    lines += ["", "PSNR (dB) of the in-betweens against the original frames; bold: best in the row.", "",
              "| keys | T | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for r in result["rows"]:
        lines.append(f"| {r['keys']} | {r['temporal']} | " + " | ".join(f"{v:.1f}" for v in r["ms_per_frame"].values()) + " |")
    lines += ["", "Wall ms per in-between in this run (interleaved with the other methods; a shared machine).", ""]
    return "\n".join(lines)


def run_quality(args: argparse.Namespace) -> int:
    size = parse_size(args.size)
    frames = to_tensor(read_video(args.video, args.frames, size)[0])
    codec = bundle.load(args.model)
    check_model_size(codec, frames, "the video")
    rows = []
    for mode in args.keys:
        for t in args.temporals:
            rows.append(quality(codec, frames, t, mode, args.methods))
            print(f"{mode} T={t}: " + ", ".join(f"{m} {v}" for m, v in rows[-1]["psnr"].items()), file=sys.stderr)
    clip = Path(str(args.video)).stem
    wh = f"{frames.shape[-1]}x{frames.shape[-2]}"
    result = {"clip": clip, "size": wh, "frames": int(frames.shape[0]), "frame_selection": args.frames,
              "model": str(args.model), "model_meta": {k: codec.meta.get(k) for k in ("source", "frame_selection", "epochs", "fit_seconds", "final_psnr")},
              "environment": _environment(), "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"temporal-{clip}-{wh}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    text = quality_table(result)
    stem.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {stem}.json, {stem}.md")
    return 0


# -- speed ------------------------------------------------------------------------------------------
def run_speed(args: argparse.Namespace) -> int:
    """ms per in-between: methods x threads interleaved round-robin at each size (medians of --repeat)."""
    source = to_tensor(read_video("carphone", "0:8")[0])
    rows = []
    for text in args.sizes.split(","):
        w, h = (int(v) for v in text.lower().split("x"))
        frames = resize(source, (h, w))
        torch.manual_seed(0)
        codec = Codec(AutoEncoder(model_config(DEFAULT_MODEL)), Normalization.of(frames))
        mode = args.speed_keys
        key_a, key_b = make_keys(codec, frames[[0, 4]], mode)
        times: dict = {m: {n: {t: [] for t in args.temporals} for n in args.threads} for m in args.methods}
        for r in range(1 + args.repeat):  # round 0 warms up every combination and is not counted
            for m in args.methods:
                for n in args.threads:
                    torch.set_num_threads(n)
                    for t in args.temporals:
                        began = time.perf_counter()
                        between(codec, m, key_a, key_b, t - 1)
                        if r:
                            times[m][n][t].append((time.perf_counter() - began) * 1000 / (t - 1))
        row = {"size": text, "keys": mode, "ms_per_frame": {m: {f"threads{n}_t{t}": round(statistics.median(v), 2)
                                                                 for n, per in by.items() for t, v in per.items()}
                                                             for m, by in times.items()}}
        rows.append(row)
        print(f"{text}: " + "; ".join(f"{m} {v}" for m, v in row["ms_per_frame"].items()), file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"environment": _environment(), "repeat": args.repeat, "rows": rows}
    (out / "interp-speed.json").write_text(json.dumps(result, indent=1) + "\n")
    cols = [f"threads{n}_t{t}" for n in args.threads for t in args.temporals]
    lines = ["| size | method | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for row in rows:
        for m, v in row["ms_per_frame"].items():
            lines.append(f"| {row['size']} | {m} | " + " | ".join(f"{v[c]:.1f}" for c in cols) + " |")
    lines += ["", f"ms per rebuilt in-between (median of {args.repeat}, methods and thread counts interleaved; "
                  f"keys `{args.speed_keys}`; a shared machine).", ""]
    (out / "interp-speed.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


# -- plots (from the JSON files only) ---------------------------------------------------------------
def plot(folder: str | Path) -> list[Path]:
    """PSNR gain over the blend per method (one panel per clip and size), and ms per in-between per method
    (one panel per thread count), from the JSON files in `folder`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder, written = Path(folder), []
    results = [json.loads(p.read_text()) for p in sorted(folder.glob("temporal-*.json"))]
    if results:
        fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4), squeeze=False)
        for ax, res in zip(axes[0], results):
            labels = [f"{r['keys']} T{r['temporal']}" for r in res["rows"]]
            methods = [m for m in res["rows"][0]["psnr"] if m != "blend"]
            width = 0.8 / max(1, len(methods))
            for j, m in enumerate(methods):
                gains = [r["psnr"][m] - r["psnr"]["blend"] for r in res["rows"]]
                ax.bar([i + j * width for i in range(len(labels))], gains, width, label=m)
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels, rotation=45, ha="right", fontsize=7)
            ax.set_title(f"{res['clip']} {res['size']}", fontsize=9)
            ax.set_ylabel("dB over the pixel blend")
            ax.axhline(0, color="k", lw=0.5)
        axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        written.append(folder / "temporal.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    speed_json = folder / "interp-speed.json"
    if speed_json.exists():
        rows = json.loads(speed_json.read_text())["rows"]
        cols = list(next(iter(rows[0]["ms_per_frame"].values())))
        fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 4), squeeze=False)
        for ax, col in zip(axes[0], cols):
            methods = list(rows[0]["ms_per_frame"])
            for m in methods:
                ax.plot([r["size"] for r in rows], [r["ms_per_frame"][m][col] for r in rows], marker="o", label=m)
            ax.set_yscale("log")
            ax.set_title(col, fontsize=9)
            ax.set_ylabel("ms per in-between")
        axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        written.append(folder / "interp-speed.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def _environment() -> dict:
    """Library versions, threads and the CPU (model name, the SIMD flags that matter, cores)."""
    import os
    import platform

    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return {"torch": torch.__version__, "opencv": cv2.__version__, "threads": torch.get_num_threads(),
            "cpu": cpu, "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_tile"}),
            "cores": os.cpu_count(), "python": platform.python_version()}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", nargs="?", default="carphone", help="clip for the quality run (file or bundled name)")
    p.add_argument("--model", help="fitted model bundle for the clip at this size (quality run)")
    p.add_argument("--out", required=True)
    p.add_argument("--size", default=None, help="resize frames to WxH (quality run)")
    p.add_argument("--frames", default=None, help="all, even, odd or A:B[:step] (quality run)")
    p.add_argument("--temporals", type=_ints, default=(2, 4))
    p.add_argument("--keys", type=lambda t: tuple(t.split(",")), default=KEY_MODES, help="true, reprojected, xS")
    p.add_argument("--methods", type=methods_arg, default=DEFAULT_METHODS,
                   help="comma list: blend, latent, residual, motion, flow[:ultrafast|fast|medium[:keys|received]]")
    p.add_argument("--speed", action="store_true", help="time the methods (ms per in-between) instead")
    p.add_argument("--plot", metavar="DIR", help="only draw DIR/temporal.png and DIR/interp-speed.png from the JSON in DIR")
    p.add_argument("--sizes", default="176x144,352x288,640x360", help="speed run sizes")
    p.add_argument("--threads", type=_ints, default=(1, 2), help="speed run: torch (and OpenCV) thread counts")
    p.add_argument("--repeat", type=int, default=7, help="speed run: timed rounds (median)")
    p.add_argument("--speed-keys", default="x4", help="speed run: how the two keys are received (default x4, the receiver's)")


def run(args: argparse.Namespace) -> int:
    if args.plot:
        for path in plot(args.plot):
            print(f"wrote {path}")
        return 0
    if args.speed:
        return run_speed(args)
    if not args.model:
        print("vsae: error: the quality run needs --model", file=sys.stderr)
        return 2
    return run_quality(args)
