"""`vsae bench rd|speed` (a `vsae` CLI plug-in) and `python -m bench rd|speed`."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import rd, speed


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="rate–quality and speed benchmarks")
    kinds = p.add_subparsers(dest="bench", metavar="KIND", required=True)
    r = kinds.add_parser("rd", help="bitrate vs quality against VP8, x264, VP9, AV1 (results.json, rd.png, summary.md)")
    rd.add_arguments(r)
    r.set_defaults(func=rd.run)
    s = kinds.add_parser("speed", help="receiver throughput and per-stage time, fit time per epoch (speed.json)")
    speed.add_arguments(s)
    s.set_defaults(func=speed.run)


def main(argv: Sequence[str] | None = None) -> int:
    from codec.cli import main as vsae_main

    return vsae_main(["bench", *(sys.argv[1:] if argv is None else argv)])
