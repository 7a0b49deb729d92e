"""Streaming benchmark: the real sender and receiver processes over loopback WebRTC, repeated.

Each run is exactly `vsae demo`'s stream (two processes, model shipped over the data channel, the
low-res track at the target bitrate); the receiver's stats are collected and the medians reported:
measured kbps, PSNR vsae vs bicubic, frames in/out/concealed, reconstruction throughput, latency and
the receiver's peak RSS. Writes OUT/stream.json (all runs + medians) and prints a table.

    python -m bench.stream                                  # carphone, ÷4, T=2, VP8 at 20 kbps, 3 runs
    python -m bench.stream --codec h264 --kbps 40 --repeat 5 --out bench-out/h264
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from codec.train import DEFAULT_MINUTES
from codec.video import resolve_video
from receiver.demo import cached_model, run_stream
from protocol.defaults import DEFAULT_CODEC, DEFAULT_KBPS, DEFAULT_SCALE, DEFAULT_TEMPORAL

REPORTED = ("video_kbps", "psnr", "psnr_bicubic", "ssim", "frames_in", "frames_out", "frames_concealed",
            "frames_dropped_backlog", "fps_reconstruct", "fps_pipeline", "latency_ms", "latency_ms_p95", "peak_rss_mb")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.stream", description=__doc__.split("\n\n")[0])
    p.add_argument("--video", default="carphone")
    p.add_argument("--model", default=None, help="model bundle (default: the demo's cached fit)")
    p.add_argument("--scale", type=int, default=DEFAULT_SCALE)
    p.add_argument("--temporal", type=int, default=DEFAULT_TEMPORAL)
    p.add_argument("--kbps", type=float, default=DEFAULT_KBPS)
    p.add_argument("--codec", default=DEFAULT_CODEC, choices=("vp8", "h264"))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="receiver torch threads (default: the receiver's)")
    p.add_argument("--out", default=None, help="folder for stream.json (default: a temporary folder)")
    args = p.parse_args(argv)

    video = resolve_video(args.video)
    model = Path(args.model) if args.model else cached_model(video, DEFAULT_MINUTES)[0]
    out = Path(args.out or tempfile.mkdtemp(prefix="vsae-stream-"))
    extra = ("--threads", str(args.threads)) if args.threads else ()
    runs = []
    for i in range(args.repeat):
        stats = run_stream(video, model, out / f"run{i}", args.scale, args.temporal, args.kbps, args.codec, extra_recv=extra)
        runs.append({k: stats.get(k) for k in REPORTED})
        print(f"run {i}: " + ", ".join(f"{k}={runs[-1][k]}" for k in REPORTED), file=sys.stderr)
    medians = {k: statistics.median(r[k] for r in runs) for k in REPORTED if all(r[k] is not None for r in runs)}
    result = {"video": video.name, "model": str(model), "scale": args.scale, "temporal": args.temporal,
              "kbps_target": args.kbps, "codec": args.codec, "repeat": args.repeat, "median": medians, "runs": runs}
    out.mkdir(parents=True, exist_ok=True)
    (out / "stream.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"| metric | median of {args.repeat} |\n|---|---|")
    for k, v in medians.items():
        print(f"| {k} | {v:g} |")
    print(f"wrote {out / 'stream.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
