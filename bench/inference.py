"""Inference runtime benchmark: the autoencoder's forward g(f(x)) on the CPU through PyTorch eager,
`torch.compile` and ONNX Runtime, at threads 1 and 2, per frame size.

Each runtime runs the same default-model weights on the same frames (batch 1, what a receiver does per
key); frames/s is the median of interleaved timed repeats (eager, compile, onnx, eager, ...), so a busy
machine slows all alike. The max abs difference of each runtime's output against eager is reported beside
it: a faster runtime counts only at equal output. The ONNX model is exported once per size, in memory
(nothing is downloaded). Writes OUT/inference.json and OUT/inference.md.
"""

from __future__ import annotations

import argparse
import copy
import io
import statistics
import sys
import time
import warnings
from typing import Callable, Sequence

import numpy as np
import torch

from codec.model import DEFAULT_MODEL, AutoEncoder, model_config

from .results import write_results

SIZES = ("176x144", "352x288", "640x360")
THREADS = (1, 2)
RUNTIMES = ("eager", "compile", "onnxruntime")


def _eager(model: AutoEncoder) -> Callable[[torch.Tensor], torch.Tensor]:
    """As codec.ops.Codec runs it: channels-last weights and inputs."""
    model = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x.contiguous(memory_format=torch.channels_last))

    return run


def _compiled(model: AutoEncoder) -> Callable[[torch.Tensor], torch.Tensor]:
    compiled = torch.compile(copy.deepcopy(model).to(memory_format=torch.channels_last), dynamic=False)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return compiled(x.contiguous(memory_format=torch.channels_last))

    return run


def _onnx(model: AutoEncoder, example: torch.Tensor, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime as ort

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buffer, input_names=["x"], output_names=["y"], dynamo=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(["y"], {"x": x.numpy()})[0])

    return run


def measure(size: tuple[int, int], threads: int, runtimes: Sequence[str], repeat: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = AutoEncoder(model_config(DEFAULT_MODEL)).eval()
    x = torch.rand(1, 3, *size)
    fns: dict[str, Callable] = {}
    row: dict = {"size": f"{size[1]}x{size[0]}", "threads": threads, "fps": {}, "max_abs_diff": {}, "errors": {}}
    for name in runtimes:
        try:
            fns[name] = {"eager": lambda: _eager(model), "compile": lambda: _compiled(model),
                         "onnxruntime": lambda: _onnx(model, x, threads)}[name]()
            fns[name](x)  # warm-up (compilation, allocations)
        except Exception as exc:  # a runtime missing or failing here is reported, not fatal
            row["errors"][name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            fns.pop(name, None)
    reference = fns["eager"](x)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            began = time.perf_counter()
            fn(x)
            times[name].append(time.perf_counter() - began)
    for name, fn in fns.items():
        row["fps"][name] = round(1 / statistics.median(times[name]), 2)
        row["max_abs_diff"][name] = float(np.abs((fn(x) - reference).numpy()).max())
    return row


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True)
    p.add_argument("--sizes", default=",".join(SIZES))
    p.add_argument("--threads", type=lambda t: tuple(int(v) for v in t.split(",")), default=THREADS)
    p.add_argument("--runtimes", type=lambda t: tuple(t.split(",")), default=RUNTIMES)
    p.add_argument("--repeat", type=int, default=15, help="timed forwards per runtime (median)")


def run(args: argparse.Namespace) -> int:
    rows = []
    for text in args.sizes.split(","):
        w, h = (int(v) for v in text.lower().split("x"))
        for threads in args.threads:
            rows.append(measure((h, w), threads, args.runtimes, args.repeat))
            print(f"{text} threads={threads}: {rows[-1]['fps']} fps, max |diff| {rows[-1]['max_abs_diff']}", file=sys.stderr)
    env = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        env["onnxruntime"] = None
    names = list(dict.fromkeys(n for r in rows for n in r["fps"]))
    lines = ["| size | threads | " + " | ".join(f"{n} fps (max abs diff)" for n in names) + " |", "|---|---|" + "---|" * len(names)]
    for r in rows:
        cells = [f"{r['fps'][n]} ({r['max_abs_diff'][n]:.1e})" if n in r["fps"] else r["errors"].get(n, "n/a") for n in names]
        lines.append(f"| {r['size']} | {r['threads']} | " + " | ".join(cells) + " |")
    write_results(args.out, "inference", {"environment": env, "rows": rows}, "\n".join(lines) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench inference", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))
