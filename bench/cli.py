"""`vsae bench rd|speed|temporal|live|inference|precision|faults|load|soak` (a `vsae` CLI plug-in) and `python -m bench ...` likewise."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import faults, inference, live, load, precision, rd, soak, speed, temporal


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="rate–quality and speed benchmarks")
    kinds = p.add_subparsers(dest="bench", metavar="KIND", required=True)
    r = kinds.add_parser("rd", help="bitrate vs quality against VP8, x264, VP9, AV1 (results.json, rd.png, summary.md)")
    rd.add_arguments(r)
    r.set_defaults(func=rd.run)
    s = kinds.add_parser("speed", help="receiver throughput and per-stage time, fit time per epoch (speed.json)")
    speed.add_arguments(s)
    s.set_defaults(func=speed.run)
    t = kinds.add_parser("temporal", help="the in-between alone: quality of each temporal method on true, reprojected "
                                          "or ÷S keys (temporal-*.json), or --speed: ms per in-between (interp-speed.json)")
    temporal.add_arguments(t)
    t.set_defaults(func=temporal.run)
    li = kinds.add_parser("live", help="a call of frames the model never saw: bicubic, static vsae, guarded, guard + live "
                                       "refresh per update form and model budget (live.json, live.md, live.png)")
    live.add_arguments(li)
    li.set_defaults(func=live.run)
    inf = kinds.add_parser("inference", help="the autoencoder's forward through eager, torch.compile and ONNX Runtime, "
                                             "threads 1 and 2 (inference.json, inference.md)")
    inference.add_arguments(inf)
    inf.set_defaults(func=inference.run)
    pr = kinds.add_parser("precision", help="fit steps/s with --train-precision auto vs forced f32 and bf16 (precision.json, precision.md)")
    precision.add_arguments(pr)
    pr.set_defaults(func=precision.run)
    f = kinds.add_parser("faults", help="stream across real network faults between network namespaces (root; faults.md)")
    faults.add_arguments(f)
    f.set_defaults(func=faults.run)
    lo = kinds.add_parser("load", help="several receivers at once from one sender: throughput vs cores (load.json, load.md, load.png)")
    load.add_arguments(lo)
    lo.set_defaults(func=load.run)
    k = kinds.add_parser("soak", help="stream a looped clip for long (default 30 min): receiver RSS and output fps "
                                      "every 10 s, verdict on growth and stalls (soak.json, soak.png, soak.md)")
    soak.add_arguments(k)
    k.set_defaults(func=soak.run)


def main(argv: Sequence[str] | None = None) -> int:
    from codec.cli import main as vsae_main

    return vsae_main(["bench", *(sys.argv[1:] if argv is None else argv)])
