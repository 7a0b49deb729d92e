"""Training precision benchmark: fit steps/s with `auto` against each forced precision, side by side.

The default model fits carphone (first 60 frames, 176x144, batch 6) for a fixed step budget in each mode,
interleaved (auto, f32, bf16, auto, f32, bf16, ...) so a busy machine slows every mode alike; medians.
`auto` pays for its probe once per process (later fits at the same shape reuse the choice), so its first
fit is reported with and without the probe. Writes OUT/precision.json and OUT/precision.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path
from typing import Sequence

import torch

from codec.model import DEFAULT_MODEL, model_config
from codec.train import DEFAULT_BATCH, FitOptions, fit, pick_device
from codec.video import read_video, to_tensor

from .results import write_results

FIT_FRAMES = 60
# CPU flags that decide whether bf16 is native (reported beside the numbers, not used to choose).
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_description() -> dict:
    flags: set[str] = set()
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"model": model, "flags": {f: f in flags for f in REPORTED_FLAGS},
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=100, help="training steps per fit (default 100)")
    p.add_argument("--repeat", type=int, default=3, help="fits per mode (median; default 3)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    frames = to_tensor(read_video("carphone", f"0:{FIT_FRAMES}")[0])
    steps_per_epoch = -(-FIT_FRAMES // DEFAULT_BATCH)
    epochs = max(1, round(args.steps / steps_per_epoch))
    modes = ["auto", "f32", "f16" if device.type == "cuda" else "bf16"]
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for rep in range(args.repeat):
        for mode in modes:
            r = fit(frames, model_config(DEFAULT_MODEL), FitOptions(epochs=epochs, minutes=None, device=str(device),
                                                                     train_precision=mode, progress=False))
            runs[mode].append({"steps": r.steps, "seconds": round(r.seconds, 3), "probe_seconds": round(r.probe_seconds, 3),
                               "chosen": r.train_precision, "reason": r.precision_reason})
            print(f"{mode} #{rep + 1}: {r.steps} steps in {r.seconds:.1f} s ({r.train_precision})", file=sys.stderr)
    summary = {}
    for mode, rows in runs.items():
        summary[mode] = {
            "steps_per_s": round(statistics.median(r["steps"] / r["seconds"] for r in rows), 3),
            "steps_per_s_without_probe": round(statistics.median(r["steps"] / (r["seconds"] - r["probe_seconds"]) for r in rows), 3),
            "chosen": sorted({r["chosen"] for r in rows}),
        }
    fastest = max(summary[m]["steps_per_s"] for m in modes if m != "auto")
    summary["auto"]["vs_fastest_forced"] = round(summary["auto"]["steps_per_s"] / fastest, 3)
    result = {"environment": {"cpu": cpu_description(), "device": str(device), "torch": torch.__version__,
                              "model": DEFAULT_MODEL, "frames": FIT_FRAMES, "batch": DEFAULT_BATCH, "steps": epochs * steps_per_epoch},
              "summary": summary, "runs": runs}
    cpu = result["environment"]["cpu"]
    lines = [f"CPU: {cpu['model']}; " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu["flags"].items())
             + f"; torch {torch.__version__}, capability {cpu['torch_cpu_capability']}, {cpu['threads']} threads",
             "", "| mode | trains in | steps/s (median) | steps/s without the probe | vs fastest forced |", "|---|---|---|---|---|"]
    for mode in modes:
        s = summary[mode]
        lines.append(f"| {mode} | {', '.join(s['chosen'])} | {s['steps_per_s']} | {s['steps_per_s_without_probe']} | "
                     f"{s.get('vs_fastest_forced', '')} |")
    write_results(args.out, "precision", result, "\n".join(lines) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench precision", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))
