"""Rate–quality benchmark: vsae against the codecs WebRTC actually uses, at the same measured bitrate.

For each clip and setting, on the same evaluation frames:
  * classic, full resolution: VP8, x264, VP9, SVT-AV1 with realtime settings (the sender's encoder);
  * `<codec>-lowres-bicubic`: the low-res stream vsae sends, upsampled bicubically (blended in between);
  * `vsae-<codec>-s<S>-t<T>`: that stream through the receiver's `Reconstructor` (one code path with
    `vsae recv`), and `vsae-envelope`, the best of them at each rate.
Bitrate = encoded bytes × 8 × fps / source frames covered. BD-rate (piecewise cubic) and the model's
break-even call length of the vsae envelope against each classic codec. Writes, under OUT,
`<clip>-<setting>/{results.json, rd.png, summary.md}` and the combined `results.json`, `rd.png`,
`summary.md`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from codec import bundle
from codec.cache import cached_fit
from codec.argtypes import positive
from codec.errors import VsaeError
from codec.metrics import psnr_per_frame, ssim
from codec.ops import DEFAULT_ITERATIONS, DEFAULT_TEMPORAL_METHOD
from codec.pipeline import BaselineReconstructor, Reconstructor, reconstruct_stream
from codec.train import DEFAULT_MINUTES
from codec.video import parse_size, read_video, resolve_video, to_tensor
from sender.session import prepare_low_res

from .bdrate import Point, break_even_s, bd_rate, envelope
from .codecs import available, transcode

# Method names per codec (x264 is the H.264 encoder WebRTC stacks use).
CODEC_NAMES = {"vp8": "vp8", "h264": "x264", "vp9": "vp9", "av1": "av1"}
CLASSIC = ("vp8", "h264", "vp9", "av1")
VSAE_CODECS = ("vp8", "h264")  # what a WebRTC track can carry
SCALES = (2, 4, 8)
TEMPORALS = (1, 2, 4)
# Target rates at 176×144, log-spaced; scaled by (pixels / 176·144)^0.75 for other sizes.
BASE_RATES_KBPS = (5, 10, 20, 40, 80, 160, 300)
BASE_PIXELS = 176 * 144
SETTINGS = ("heldout", "insample")


def target_rates(height: int, width: int, base: Sequence[float] = BASE_RATES_KBPS) -> list[float]:
    factor = (height * width / BASE_PIXELS) ** 0.75
    return [round(r * factor, 1) for r in base]


def split(count: int, setting: str, how: str = "even") -> tuple[str, slice]:
    """(frames the model is fitted on, frames evaluated). heldout, split `even`: fit the even frames, evaluate
    the odd ones (new frames of content the model has seen, the paper's setting); split `half`: fit the
    first half, evaluate the second (a call's model made from its first minutes, on what comes later).
    insample: fit and evaluate everything (video on demand)."""
    if setting == "insample":
        return "all", slice(0, count)
    if how == "half":
        half = count // 2
        return f"0:{half}", slice(half, count)
    return "even", slice(1, count, 2)


def psnr_y(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR of BT.601 luma (8-bit quantized RGB first), per frame."""
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    ya = (a.clamp(0, 1).mul(255).round() * weights).sum(1)
    yb = (b.clamp(0, 1).mul(255).round() * weights).sum(1)
    mse = (ya - yb).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(255.0**2 / mse.clamp_min(1e-10))


def quality(decoded: torch.Tensor, reference: torch.Tensor) -> dict:
    return {
        "psnr": round(float(psnr_per_frame(decoded, reference).mean()), 3),
        "psnr_y": round(float(psnr_y(decoded, reference).mean()), 3),
        "ssim": round(ssim(decoded, reference), 4),
    }


def run_clip(video: Path, setting: str, args: argparse.Namespace, progress: bool = True) -> dict:
    size = parse_size(args.size)
    frames, fps = read_video(video, None, size)
    if args.max_frames:
        frames = frames[: args.max_frames]
    fit_frames, evaluated = split(len(frames), setting, args.split)
    if not range(len(frames))[evaluated]:
        raise VsaeError(f"{video}: {len(frames)} frame(s) leave none to evaluate in the {setting} setting "
                        f"(split {args.split}); use a longer clip or --setting insample")
    if evaluated.step == 2:
        fps /= 2  # the evaluated clip is every other frame
    if args.model:
        model_path = Path(args.model)
    else:
        # A cut clip names its fit frames as a slice of the whole video (and so gets its own cache entry).
        cut = len(frames)
        spec = {"even": f"0:{cut}:2", "all": f"0:{cut}"}.get(fit_frames, fit_frames) if args.max_frames else fit_frames
        model_path, _ = cached_fit(video, spec, args.fit_minutes, args.size, progress=progress)
    model = bundle.load(model_path)
    model_bytes = model_path.stat().st_size
    clip = frames[evaluated]
    n, h, w = clip.shape[:3]
    reference = to_tensor(clip)
    rates = [float(r) for r in args.rates.split(",")] if args.rates else target_rates(h, w)
    methods: list[dict] = []
    notes: list[str] = []
    codecs = list(args.codecs)  # parsed by codec_names
    jobs = [("classic", c, 1, 1) for c in codecs] + [
        ("vsae", c, s, t) for c in codecs if c in VSAE_CODECS for s in args.scales for t in args.temporals
    ]
    skipped = {c: available(c) for c in codecs}
    for c, why in skipped.items():
        if why:
            notes.append(f"{CODEC_NAMES[c]} skipped: {why}")
    jobs = [j for j in jobs if not skipped[j[1]]]
    bar = tqdm(total=len(jobs) * len(rates), desc=f"{video.stem} {setting}", unit="run", disable=not progress)
    bicubic: dict[str, list[dict]] = {}
    for kind, c, s, t in jobs:
        name = CODEC_NAMES[c]
        if kind == "classic":
            points = []
            for rate in rates:
                coded = transcode(clip, c, rate, fps)
                points.append({"target_kbps": rate, "kbps": round(coded.bytes * 8 * fps / n / 1000, 3),
                               **quality(to_tensor(coded.frames), reference)})
                bar.update()
            methods.append({"name": name, "codec": name, "scale": 1, "temporal": 1, "points": points})
            continue
        indices, low = prepare_low_res(clip, s, t)
        points, base_points = [], []
        for rate in rates:
            coded = transcode(low, c, rate, fps, indices)
            kbps = round(coded.bytes * 8 * fps / n / 1000, 3)
            received = list(zip(indices, to_tensor(coded.frames)))
            rebuilt = Reconstructor(model, (h, w), t, args.iterations, args.method)
            out = torch.stack([f.frame for f in reconstruct_stream(rebuilt, received, n)])
            base = torch.stack([f.frame for f in reconstruct_stream(BaselineReconstructor((h, w), t), received, n)])
            points.append({"target_kbps": rate, "kbps": kbps, **quality(out, reference)})
            base_points.append({"target_kbps": rate, "kbps": kbps, "scale": s, "temporal": t, **quality(base, reference)})
            bar.update()
        methods.append({"name": f"vsae-{name}-s{s}-t{t}", "codec": name, "scale": s, "temporal": t, "points": points})
        bicubic.setdefault(name, []).extend(base_points)
    bar.close()
    for name, points in bicubic.items():
        methods.append({"name": f"{name}-lowres-bicubic", "codec": name, "scale": None, "temporal": None,
                        "points": _envelope_points(points)})
    vsae_points = [dict(p, method=m["name"]) for m in methods if m["name"].startswith("vsae-") for p in m["points"]]
    if vsae_points:
        methods.append({"name": "vsae-envelope", "codec": None, "scale": None, "temporal": None,
                        "points": _envelope_points(vsae_points)})
    result = {
        "clip": video.stem, "setting": setting, "split": args.split if setting == "heldout" else None,
        # A given model's fit frames are not known here (it may have seen the evaluated ones): "given".
        "frames": n, "fit_frames": "given" if args.model else fit_frames, "size": [w, h], "fps": fps,
        "model_bytes": model_bytes, "model": str(model_path), "fit_minutes": args.fit_minutes,
        "iterations": args.iterations, "method": args.method, "rates_kbps": rates,
        "methods": methods, "bd_rate": {}, "bd_rate_notes": {}, "break_even_s": {}, "notes": notes,
    }
    if vsae_points:
        test = _curve(methods[-1])
        for m in methods:
            if m["scale"] == 1:
                value, why = bd_rate(_curve(m), test)
                result["bd_rate"][m["codec"]] = None if math.isnan(value) else round(value, 2)
                if why:
                    result["bd_rate_notes"][m["codec"]] = why
                seconds, why = break_even_s(_curve(m), test, model_bytes)
                result["break_even_s"][m["codec"]] = None if math.isnan(seconds) else (round(seconds, 1) if math.isfinite(seconds) else "never")
                if why:
                    result["bd_rate_notes"].setdefault(m["codec"], why)
    return result


def _curve(method: dict) -> list[Point]:
    return [(p["kbps"], p["psnr"]) for p in method["points"]]


def _envelope_points(points: list[dict]) -> list[dict]:
    keep = set(envelope([(p["kbps"], p["psnr"]) for p in points]))
    seen, out = set(), []
    for p in sorted(points, key=lambda p: p["kbps"]):
        key = (p["kbps"], p["psnr"])
        if key in keep and key not in seen:
            seen.add(key)
            out.append(p)
    return out


# -- outputs ------------------------------------------------------------------------------------------
def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 5), squeeze=False)
    for ax, result in zip(axes[0], results):
        for m in result["methods"]:
            rates, psnrs = [p["kbps"] for p in m["points"]], [p["psnr"] for p in m["points"]]
            if m["scale"] == 1:
                ax.plot(rates, psnrs, "--o", ms=3, label=m["name"])
            elif m["name"].endswith("lowres-bicubic"):
                ax.plot(rates, psnrs, ":", lw=1.5, label=m["name"])
            elif m["name"] == "vsae-envelope":
                ax.plot(rates, psnrs, "-", color="black", lw=2.5, label="vsae (envelope)")
            else:
                ax.plot(rates, psnrs, "-", lw=0.6, alpha=0.35, color="tab:red")
        ax.set_xscale("log")
        ax.set_xlabel("bitrate (kbps, measured)")
        ax.set_ylabel("PSNR RGB (dB)")
        bd = ", ".join(f"{k} {v:+.0f}%" for k, v in result["bd_rate"].items() if v is not None)
        ax.set_title(f"{result['clip']} ({result['setting']}{' ' + result['split'] if result.get('split') else ''}, {result['frames']} frames)\nBD-rate vsae vs {bd}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary(result: dict) -> str:
    lines = [f"## {result['clip']} — {result['setting']}{' (' + result['split'] + ' split)' if result.get('split') else ''} ({result['frames']} frames {result['size'][0]}×{result['size'][1]}, "
             + ("model given" if result["fit_frames"] == "given" else f"model fitted on frames {result['fit_frames']}")
             + f", bundle {result['model_bytes']:,} B)", ""]
    rates = result["rates_kbps"]
    envelopes: list[str] = []
    lines.append("| method | " + " | ".join(f"{r:g} kbps target" for r in rates) + " |")
    lines.append("|---|" + "---|" * len(rates))
    for m in result["methods"]:
        if m["name"].startswith("vsae-") and m["name"] != "vsae-envelope" and not _on_envelope(m, result):
            continue
        if m["name"] == "vsae-envelope" or m["name"].endswith("lowres-bicubic"):
            envelopes.append(f"* {m['name']}: " + "; ".join(f"{p['kbps']:.1f} kbps {p['psnr']:.2f} dB ({_config(p)})" for p in m["points"]))
            continue
        by_target = {p["target_kbps"]: p for p in m["points"]}
        cells = [f"{by_target[r]['kbps']:.1f} / {by_target[r]['psnr']:.2f}" if r in by_target else "" for r in rates]
        lines.append(f"| {m['name']} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: measured kbps / PSNR RGB dB. vsae configs shown are those on the envelope. Envelopes:", "", *envelopes, ""]
    lines.append("| vs | BD-rate of vsae-envelope | break-even call length | note |")
    lines.append("|---|---|---|---|")
    for codec, value in result["bd_rate"].items():
        even = result["break_even_s"].get(codec)
        lines.append(f"| {codec} | {'n/a' if value is None else f'{value:+.1f} %'} | "
                     f"{'n/a' if even is None else even if isinstance(even, str) else f'{even:,.0f} s'} | {result['bd_rate_notes'].get(codec, '')} |")
    lines += [""] + [f"* {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"


def _config(point: dict) -> str:
    if "method" in point:
        return point["method"].removeprefix("vsae-")
    return f"s{point['scale']} t{point['temporal']}"


def _on_envelope(method: dict, result: dict) -> bool:
    env = next((m for m in result["methods"] if m["name"] == "vsae-envelope"), None)
    return env is not None and any(p.get("method") == method["name"] for p in env["points"])


def codec_names(text: str) -> list[str]:
    """An argparse type: the codecs to measure, comma-separated (`x264`, as the results name it, for h264)."""
    names = [{"x264": "h264"}.get(c.strip().lower(), c.strip().lower()) for c in text.split(",") if c.strip()]
    unknown = [c for c in names if c not in CODEC_NAMES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected codecs from {', '.join(CODEC_NAMES)}, comma-separated, "
                                         f"got {text!r}")
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("videos", nargs="+", help="video files or bundled clip names (carphone, bikes)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--setting", choices=(*SETTINGS, "both"), default="heldout")
    p.add_argument("--split", choices=("even", "half"), default="even",
                   help="heldout split: fit even frames, evaluate odd (default), or fit the first half, evaluate the second")
    p.add_argument("--size", default=None, help="resize the clips to WxH first (e.g. 320x136 for bikes)")
    p.add_argument("--rates", default=None, help="target kbps list, e.g. 10,20,40 (default: 5–300 scaled to the size)")
    p.add_argument("--codecs", type=codec_names, default=",".join(CLASSIC),
                   help="classic codecs (vp8,h264,vp9,av1; x264 names h264); vsae uses vp8 and h264 of them")
    p.add_argument("--scales", type=lambda t: tuple(int(v) for v in t.split(",")), default=SCALES)
    p.add_argument("--temporals", type=lambda t: tuple(int(v) for v in t.split(",")), default=TEMPORALS)
    p.add_argument("--fit-minutes", type=float, default=DEFAULT_MINUTES, help="fit budget (models are cached per clip, split and budget)")
    p.add_argument("--model", default=None, help="use this model for every clip instead of fitting")
    p.add_argument("--max-frames", type=positive, default=None, help="cut the clips (smoke runs)")
    p.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS)
    p.add_argument("--method", default=DEFAULT_TEMPORAL_METHOD)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = SETTINGS if args.setting == "both" else (args.setting,)
    results = []
    for video in args.videos:
        path = resolve_video(video)
        for setting in settings:
            began = time.monotonic()
            result = run_clip(path, setting, args)
            result["seconds"] = round(time.monotonic() - began, 1)
            folder = out / (f"{path.stem}-{setting}" + (f"-{args.split}" if setting == "heldout" else ""))
            folder.mkdir(exist_ok=True)
            (folder / "results.json").write_text(json.dumps(result, indent=1) + "\n")
            plot([result], folder / "rd.png")
            (folder / "summary.md").write_text(summary(result))
            results.append(result)
            bd = ", ".join(f"{k} {v:+.1f}%" if v is not None else f"{k} n/a" for k, v in result["bd_rate"].items())
            print(f"{path.stem} {setting}: BD-rate vsae vs {bd} ({result['seconds']:.0f} s)", file=sys.stderr)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, out / "rd.png")
    (out / "summary.md").write_text("\n".join(summary(r) for r in results))
    print(f"wrote {out / 'results.json'}, {out / 'rd.png'}, {out / 'summary.md'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench rd", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))
