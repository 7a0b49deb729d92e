"""`vsae bench rd|speed|temporal|live|inference|precision|compact|faults|load|soak|liveview` (a `vsae` CLI plug-in) and `python -m bench ...` likewise."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import compact, faults, inference, live, liveview, load, precision, rd, soak, speed, temporal


# (kind, module with add_arguments/run, help): the order `vsae bench --help` lists them in.
KINDS = (
    ("rd", rd, "bitrate vs quality against VP8, x264, VP9, AV1 (results.json, rd.png, summary.md)"),
    ("speed", speed, "receiver throughput and per-stage time, fit time per epoch (speed.json)"),
    ("temporal", temporal, "the in-between alone: quality of each temporal method on true, reprojected "
                           "or ÷S keys (temporal-*.json), or --speed: ms per in-between (interp-speed.json)"),
    ("live", live, "a call of frames the model never saw: bicubic, static vsae, guarded, guard + live "
                   "refresh per update form and model budget (live.json, live.md, live.png)"),
    ("inference", inference, "the autoencoder's forward through eager, torch.compile and ONNX Runtime, "
                             "threads 1 and 2 (inference.json, inference.md)"),
    ("precision", precision, "fit steps/s with --train-precision auto vs forced f32 and bf16 (precision.json, precision.md)"),
    ("compact", compact, "bundle bytes vs quality per width k and weight storage (f16, int8, int6, int4, QAT) "
                         "(compact.json, compact.md, compact.png)"),
    ("faults", faults, "stream across real network faults between network namespaces (root; faults.md)"),
    ("load", load, "several receivers at once from one sender: throughput vs cores (load.json, load.md, load.png)"),
    ("soak", soak, "stream a looped clip for long (default 30 min): receiver RSS and output fps "
                   "every 10 s, verdict on growth and stalls (soak.json, soak.png, soak.md)"),
    ("liveview", liveview, "a live lavfi call watched in headless Chromium: capture fps, dropped frames, "
                           "capture-to-display latency read off the page (liveview.json, liveview.md, liveview.png)"),
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="rate–quality and speed benchmarks")
    kinds = p.add_subparsers(dest="bench", metavar="KIND", required=True)
    for name, module, text in KINDS:
        k = kinds.add_parser(name, help=text)
        module.add_arguments(k)
        k.set_defaults(func=module.run)


def main(argv: Sequence[str] | None = None) -> int:
    from codec.cli import main as vsae_main

    return vsae_main(["bench", *(sys.argv[1:] if argv is None else argv)])
