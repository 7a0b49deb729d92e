"""Training precision chosen by measurement: time a few real training steps of each candidate, keep the faster.

Why measure instead of reading CPU flags: bf16 autocast is 1.7x faster than fp32 on a CPU with native
bf16 (AVX512_BF16 / AMX), and ~11x *slower* on one without (AVX2 only: PyTorch emulates it; 5.0-5.3 s
against 0.44 s per step, default model, batch 6, 176x144). Flags say what exists; a timed step says what
is fast with this PyTorch build, this model and this frame size.
"""

from __future__ import annotations

import copy
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .errors import VsaeError

TRAIN_PRECISIONS = ("auto", "bf16", "f16", "f32")
# What `auto` times on each device type. fp16 autocast on CPU is slower than both; bf16 on CUDA is an
# option for a later measurement (fp16 + GradScaler has been the CUDA default since the first fit).
AUTO_CANDIDATES = {"cpu": ("bf16", "f32"), "cuda": ("f16", "f32")}
# One untimed step each (allocator, oneDNN kernel selection), then up to this many timed steps, interleaved.
PROBE_WARMUP_STEPS = 1
PROBE_TIMED_STEPS = 3
# Stop timing early once one candidate is this many times slower than the other after a timed step each:
# an emulated bf16 step can take 5 s, and a clear loser needs no more samples.
PROBE_CLEAR_RATIO = 2.0
# The same on the untimed warm-up steps, with a wider margin for their one-time costs (emulated bf16 on
# AVX2: ~9x f32 already on the first step, measured; native bf16: 0.5x).
WARMUP_CLEAR_RATIO = 4.0
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16}

# Choices made in this process, by (device type, model config, batch shape): a test suite or a bench
# fits many times at one shape and needs to time it once.
_choices: dict[tuple, "PrecisionChoice"] = {}


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a fit trains in, and why (`reason` is the one line `vsae fit` prints)."""

    name: str
    reason: str
    seconds_per_step: dict[str, float] = field(default_factory=dict)


def autocast_context(device: torch.device, precision: str):
    """The autocast context for one training forward in `precision` (f32: none)."""
    if precision == "f32":
        return nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def check_precision(device: torch.device, precision: str) -> None:
    if precision not in TRAIN_PRECISIONS:
        raise VsaeError(f"unknown training precision {precision!r}: use {', '.join(TRAIN_PRECISIONS)}")
    if precision == "f16" and device.type == "cpu":
        raise VsaeError("--train-precision f16 needs a CUDA device; on the CPU use bf16 or f32 (or auto)")


def time_training_steps(step: Callable[[], None], device: torch.device) -> float:
    """Seconds one call of `step` took (CUDA synchronised)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def choose_precision(
    model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, device: torch.device, requested: str = "auto"
) -> PrecisionChoice:
    """`requested` itself unless it is `auto`; then time real training steps (forward, loss, backward, Adam)
    of a throwaway copy of `model` on this batch in each candidate precision and keep the faster."""
    check_precision(device, requested)
    if requested != "auto":
        return PrecisionChoice(requested, f"{requested} (asked for)")
    config = getattr(model, "config", None)
    key = (device.type, repr(config), tuple(inputs.shape))
    if key in _choices:
        return _choices[key]
    candidates = AUTO_CANDIDATES[device.type]
    rng_state = torch.get_rng_state()
    steps = {name: _probe_step(model, inputs, targets, device, name) for name in candidates}
    warmup = {name: sum(time_training_steps(steps[name], device) for _ in range(PROBE_WARMUP_STEPS)) for name in candidates}
    decided_on_warmup = max(warmup.values()) > WARMUP_CLEAR_RATIO * min(warmup.values())
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    if decided_on_warmup:
        samples = {name: [seconds / PROBE_WARMUP_STEPS] for name, seconds in warmup.items()}
    for _ in range(0 if decided_on_warmup else PROBE_TIMED_STEPS):
        for name in candidates:
            samples[name].append(time_training_steps(steps[name], device))
        medians = {name: statistics.median(s) for name, s in samples.items()}
        if max(medians.values()) > PROBE_CLEAR_RATIO * min(medians.values()):
            break
    torch.set_rng_state(rng_state)  # the probe must not change what the fit draws
    medians = {name: statistics.median(s) for name, s in samples.items()}
    best = min(candidates, key=lambda name: medians[name])
    other = " vs ".join(f"{name} {medians[name]:.3f}" for name in candidates if name != best)
    how = "warm-up steps, a clear gap" if decided_on_warmup else f"median of {len(samples[best])} timed steps"
    reason = f"auto: {best} {medians[best]:.3f} s/step vs {other} s/step ({how}, on this {device.type})"
    # Unrounded: a tiny model steps in well under a millisecond, and rounded times can tie.
    choice = PrecisionChoice(best, reason, dict(medians))
    _choices[key] = choice
    return choice


def _probe_step(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, device: torch.device, precision: str):
    probe = copy.deepcopy(model).train()
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(enabled=precision == "f16")

    def step() -> None:
        with autocast_context(device, precision):
            output = probe(inputs)
        loss = F.mse_loss(output.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step
