"""Model/training sweep behind the codec defaults (README, "Choosing the defaults").

One run = fit on the even frames of a clip under a wall-clock budget, then score the odd (held-out)
frames: autoencoder, x4 and x8 super-resolution at several reprojection counts, x2 temporal rebuild
(keys = even frames, rebuilt = odd frames), and the fp16 bundle's loss. Appends one JSON line per run.

    python -m bench.model_sweep --tag s16 --out sweep.jsonl                      # the default recipe
    python -m bench.model_sweep --tag paper --multipliers 1,2,4,8,8,12 --lr 2e-4 --degrade 1
    python -m bench.model_sweep --clip bikes --size 320x136 --tag bikes-s16

Run one at a time on an otherwise idle machine: the budget is wall clock, so a second CPU-heavy
process changes the result (with both cores contended, torch's thread barriers slow steps ~100x).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from codec import bundle
from codec.evaluate import evaluate
from codec.model import ModelConfig
from codec.ops import TEMPORAL_METHODS, Codec
from codec.train import FitOptions, fit
from codec.precision import TRAIN_PRECISIONS
from codec.video import parse_size, read_video, to_tensor

SCALES = {4: (1, 2, 3, 5), 8: (1, 2, 3)}


def run(args: argparse.Namespace) -> dict:
    size = parse_size(args.size)
    train = to_tensor(read_video(args.clip, "even", size)[0])
    held = to_tensor(read_video(args.clip, "odd", size)[0])
    full = to_tensor(read_video(args.clip, None, size)[0])
    config = ModelConfig(args.width, tuple(int(m) for m in args.multipliers.split(",")))
    degrade = tuple(int(f) for f in args.degrade.split(","))
    result = fit(train, config, FitOptions(minutes=args.minutes, lr=args.lr, degrade=degrade, train_precision=args.train_precision,
                                           batch=args.batch, seed=args.seed, progress=False))
    codec = Codec(result.model, result.normalization, meta={"frame_size": [held.shape[-1], held.shape[-2]]})
    row: dict = {"tag": args.tag, "clip": args.clip, "size": args.size, "width": args.width,
                 "multipliers": args.multipliers, "lr": args.lr, "degrade": args.degrade, "train_precision": result.train_precision,
                 "params": result.model.parameter_count(), "fit_s": round(result.seconds, 1), "steps": result.steps,
                 "epochs": round(result.epochs, 1)}
    start = time.perf_counter()
    codec.project(held, 1)
    row["ms_per_frame"] = round((time.perf_counter() - start) / len(held) * 1000, 2)
    for scale, iterations in SCALES.items():
        for n in iterations:
            scores = evaluate(codec, held, scale, 1, n)["psnr"]
            row["ae"], row[f"x{scale}_bicubic"], row[f"x{scale}_n{n}"] = scores["autoencoder"], scores["bicubic"], scores["vsae"]
    for method in TEMPORAL_METHODS:
        scores = evaluate(codec, full, 1, 2, 1, method)["psnr"]
        row["t2_blend"], row[f"t2_{method}"] = scores["pixel_blend"], scores["vsae"]
    with tempfile.TemporaryDirectory() as tmp:
        row["bundle_f16"] = bundle.save(codec, Path(tmp) / "m.vsae")
        row["bundle_f32"] = bundle.save(codec, Path(tmp) / "m32.vsae", "f32")
        half = evaluate(bundle.load(Path(tmp) / "m.vsae"), held, 4, 1, 1)["psnr"]
        row["ae_f16"], row["x4_n1_f16"] = half["autoencoder"], half["vsae"]
    return row


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.model_sweep", description=__doc__.splitlines()[0])
    p.add_argument("--clip", default="carphone")
    p.add_argument("--size", default=None, help="WxH (bikes: 320x136)")
    p.add_argument("--multipliers", default="1,2,4,8", help="encoder widths / k; stride = 2**len")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--minutes", type=float, default=4.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--degrade", default="1,2,4,8", help="degraded-input factors; 1 = plain training")
    p.add_argument("--batch", type=int, default=6)
    p.add_argument("--train-precision", choices=TRAIN_PRECISIONS, default="auto", help="training arithmetic (default auto: timed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="run")
    p.add_argument("--out", default=None, help="append the JSON line to this file too")
    args = p.parse_args(argv)
    row = run(args)
    print(json.dumps(row))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
