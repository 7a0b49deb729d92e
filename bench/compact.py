"""Compact models: bundle bytes against quality for each width k and weight storage, side by side.

For each width, one fit (deterministic epoch budget) on the training frames, stored at every precision
asked for (post-training quantization of the same weights), plus, for the (width, precision) pairs in
--qat, a second fit whose last part trains through that storage's rounding (codec/train.py QAT_FRACTION).
Each bundle is loaded back through the real loader and scored on the held-out frames: autoencoder,
x4 and x8 super-resolution (one reprojection), beside bicubic. Writes OUT/compact.json, compact.md and
compact.png (bytes vs x4 PSNR).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from codec import bundle
from codec.evaluate import evaluate
from codec.model import DEFAULT_MODEL, model_config
from codec.ops import Codec
from codec.train import QAT_FRACTION, FitOptions, fit
from codec.video import parse_size, read_video, to_tensor

from .precision import cpu_description
from .results import write_results

SCALES = (4, 8)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("clip", help="video file or bundled clip name")
    p.add_argument("--out", required=True)
    p.add_argument("--size", default=None, help="resize frames to WxH")
    p.add_argument("--train-frames", default="even", help="frames fitted (default even)")
    p.add_argument("--eval-frames", default="odd", help="held-out frames scored (default odd)")
    p.add_argument("--epochs", type=int, required=True, help="fit budget per width (epochs: deterministic)")
    p.add_argument("--widths", default="32,24,16", help="widths k to fit (default 32,24,16; empty: only the --qat fits)")
    p.add_argument("--precisions", default="f16,int8,int6,int5,int4,mixed",
                   help="storages of each fit (default f16,int8,int6,int5,int4,mixed)")
    p.add_argument("--qat", default="", help="extra quantization-aware fits, K:PRECISION,... (e.g. 32:int4,24:int6)")
    p.add_argument("--qat-fraction", type=float, default=QAT_FRACTION,
                   help=f"share of a QAT fit trained through the rounding (default {QAT_FRACTION})")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steady on a shared machine)")
    p.add_argument("--seed", type=int, default=0)


def _score(codec: Codec, held: torch.Tensor) -> dict:
    row: dict = {}
    for scale in SCALES:
        psnr = evaluate(codec, held, scale, 1, 1)["psnr"]
        row["ae"] = round(psnr["autoencoder"], 3)
        row[f"x{scale}"], row[f"x{scale}_bicubic"] = round(psnr["vsae"], 3), round(psnr["bicubic"], 3)
    return row


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    size = parse_size(args.size)
    train = to_tensor(read_video(args.clip, args.train_frames, size)[0])
    held = to_tensor(read_video(args.clip, args.eval_frames, size)[0])
    precisions = [p for p in args.precisions.split(",") if p]
    qat = [(int(k), p) for k, p in (pair.split(":") for pair in args.qat.split(",") if pair)]
    for p in precisions + [p for _, p in qat]:
        bundle.check_precision(p)
    widths = [int(w) for w in args.widths.split(",") if w]
    fits = [(w, None) for w in widths] + qat
    rows = []
    for width, qat_precision in fits:
        started = time.perf_counter()
        result = fit(train, model_config(DEFAULT_MODEL, width),
                     FitOptions(epochs=args.epochs, minutes=None, seed=args.seed, progress=False, quantize=qat_precision,
                                qat_fraction=args.qat_fraction))
        fit_s = time.perf_counter() - started
        codec = Codec(result.model, result.normalization, meta={"frame_size": [train.shape[-1], train.shape[-2]]})
        for precision in [qat_precision] if qat_precision else precisions:
            data = bundle.dumps(codec, precision)
            loaded = bundle.loads(data)  # scored through the real loader
            row = {"width": width, "precision": precision, "qat": bool(qat_precision),
                   "qat_fraction": args.qat_fraction if qat_precision else 0, "bundle_bytes": len(data),
                   "params": result.model.parameter_count(), "steps": result.steps, "qat_steps": result.qat_steps,
                   "train_precision": result.train_precision, "fit_s": round(fit_s, 1), **_score(loaded, held)}
            rows.append(row)
            print(f"k={width} {precision}{' qat' if qat_precision else ''}: {len(data):,} bytes, AE {row['ae']:.2f}, "
                  f"x4 {row['x4']:.2f}, x8 {row['x8']:.2f} dB", file=sys.stderr, flush=True)
    base = next((r for r in rows if widths and r["width"] == widths[0] and r["precision"] == "f16" and not r["qat"]), None)
    for r in rows:
        if base is not None:
            r["x4_vs_base"] = round(r["x4"] - base["x4"], 3)
    result = {"environment": {"cpu": cpu_description(), "torch": torch.__version__}, "clip": args.clip, "size": args.size,
              "train_frames": args.train_frames, "eval_frames": args.eval_frames, "epochs": args.epochs,
              "base": f"k={widths[0]} f16" if widths else None, "rows": rows}
    lines = [f"{args.clip}{' ' + args.size if args.size else ''}: fit on {args.train_frames} frames ({args.epochs} epochs "
             f"each), scored on {args.eval_frames}; bicubic x4 {rows[0]['x4_bicubic']:.2f}, x8 {rows[0]['x8_bicubic']:.2f} dB",
             "", "| k | storage | QAT | bundle bytes | params | AE | x4 | x8 | x4 vs base | fit s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['width']} | {r['precision']} | {'yes' if r['qat'] else ''} | {r['bundle_bytes']:,} | "
                     f"{r['params'] / 1e6:.2f} M | {r['ae']:.2f} | {r['x4']:.2f} | {r['x8']:.2f} | "
                     f"{r.get('x4_vs_base', 0):+.2f} | {r['fit_s']} |")
    plot = _plot(rows, Path(args.out) / "compact.png", args.clip)
    write_results(args.out, "compact", result, "\n".join(lines) + "\n", plot)
    return 0


def _plot(rows: list[dict], path: Path, clip: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for width in sorted({r["width"] for r in rows}):
        for qat in (False, True):
            pts = sorted((r["bundle_bytes"], r["x4"], r["precision"]) for r in rows if r["width"] == width and r["qat"] == qat)
            if not pts:
                continue
            ax.plot([p[0] / 1e6 for p in pts], [p[1] for p in pts], "s--" if qat else "o-", label=f"k={width}{' QAT' if qat else ''}")
            for x, y, name in pts:
                ax.annotate(name, (x / 1e6, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    ax.axhline(rows[0]["x4_bicubic"], color="grey", lw=0.8, ls="--", label="bicubic x4")
    ax.set_xscale("log")
    ax.set_xlabel("bundle (MB, log)")
    ax.set_ylabel("x4 PSNR, held-out frames (dB)")
    ax.set_title(f"{clip}: quality per byte shipped")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench compact", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))
