"""Fitting an autoencoder to the frames of one video (`vsae fit`)."""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from . import quant
from .errors import VsaeError
from .model import AutoEncoder, ModelConfig, Normalization
from .precision import autocast_context, check_precision, choose_precision
from .progress import progress as progress_bar
from .video import downscale

# Training defaults (paper: Adam 2e-4, batch 6; see README for the measurements behind each change).
DEFAULT_LR = 1e-3
DEFAULT_BATCH = 6
DEFAULT_MINUTES = 4.0
# Fraction of the budget at constant lr before the linear decay to zero (paper: 100 of 200 epochs).
CONSTANT_FRACTION = 0.5
# Quantization-aware fine-tuning: the share of the budget (at its end, where the lr decays) trained through
# the storage's rounding when FitOptions.quantize is set.
QAT_FRACTION = 0.1
# Degraded-input training (appendix C): each input is area-downscaled by a factor drawn from here and
# bilinearly upsampled back; 1 keeps the clean frame so plain reconstruction is learned too.
DEGRADE_FACTORS = (1, 2, 4, 8)


@dataclass
class FitOptions:
    """Fit settings. Budgets: epochs and/or wall-clock minutes, whichever ends first (minutes=None: epochs only).

    A budget whose result must not depend on the machine's speed (tests, benchmarks) gives epochs and
    minutes=None.
    """

    epochs: int | None = None
    minutes: float | None = DEFAULT_MINUTES
    lr: float = DEFAULT_LR
    batch: int = DEFAULT_BATCH
    degrade: tuple[int, ...] = DEGRADE_FACTORS
    seed: int = 0
    device: str = "auto"
    # auto: time a few steps of each candidate (codec/precision.py) and train in the faster. bf16 autocast
    # is 1.7x fp32 on a CPU with native bf16 and ~11x slower on one without (README).
    train_precision: str = "auto"
    # Codec-in-the-loop inputs: (P, N, 3, H, W) versions of the N frames as the receiver would get them
    # (through the call's encoder at P rates, upsampled back); each sample draws one with pool_fraction
    # probability instead of a clean area-downscale. None: clean degradation only.
    degraded_pool: torch.Tensor | None = None
    pool_fraction: float = 0.5
    progress: bool = True
    # Integer storage the model will be shipped in (codec.quant.INTEGER_STORAGES; None: float): the last
    # qat_fraction of the budget trains through fake-quantized convolution weights, so the fit ends where
    # rounding costs least.
    quantize: str | None = None
    qat_fraction: float = QAT_FRACTION


@dataclass
class FitResult:
    model: AutoEncoder
    normalization: Normalization
    epochs: float
    steps: int
    seconds: float
    final_psnr: float
    history: list[dict] = field(default_factory=list)
    train_precision: str = "f32"
    # The one line saying why (`auto`: the timings; otherwise "asked for").
    precision_reason: str = ""
    # Wall time of the precision probe, part of `seconds` (0 when the precision was given or already timed).
    probe_seconds: float = 0.0
    # Steps trained through fake-quantized weights (FitOptions.quantize).
    qat_steps: int = 0


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise VsaeError("--device cuda asked for, but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise VsaeError(f"unknown device {name!r}: use auto, cpu or cuda")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def degrade(batch: torch.Tensor, factors: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Per sample: area-downscale by a random factor, bilinearly upsample back (what the receiver sees)."""
    if not factors or factors == (1,):
        return batch
    out = batch.clone()
    picks = torch.randint(len(factors), (batch.shape[0],), generator=generator).tolist()
    for i, pick in enumerate(picks):
        s = factors[pick]
        if s > 1:
            low = downscale(batch[i : i + 1], s)
            out[i : i + 1] = F.interpolate(low, size=batch.shape[-2:], mode="bilinear", align_corners=False)
    return out


def lr_at(progress: float, lr: float) -> float:
    """Constant, then linear decay to zero over the rest of the budget."""
    if progress < CONSTANT_FRACTION:
        return lr
    return lr * max(0.0, 1.0 - progress) / (1.0 - CONSTANT_FRACTION)


def fit(frames: torch.Tensor, config: ModelConfig, options: FitOptions | None = None) -> FitResult:
    """Fit an autoencoder on float frames (N, 3, H, W) in [0, 1]. Budget: epochs and/or minutes of wall clock."""
    opts = options or FitOptions()
    if opts.epochs is None and opts.minutes is None:
        raise VsaeError("give a budget: epochs or minutes")
    if (opts.epochs is not None and opts.epochs <= 0) or (opts.minutes is not None and opts.minutes <= 0):
        raise VsaeError("the fit budget must be positive")
    if opts.quantize is not None and opts.quantize not in quant.INTEGER_STORAGES:
        raise VsaeError(f"quantize must be one of {', '.join(quant.INTEGER_STORAGES)}, not {opts.quantize!r}")
    if not 0 <= opts.qat_fraction <= 1:
        raise VsaeError("qat_fraction must be within 0..1")
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[0] == 0:
        raise VsaeError(f"expected frames (N, 3, H, W), got {tuple(frames.shape)}")
    seed_everything(opts.seed)
    device = pick_device(opts.device)
    generator = torch.Generator().manual_seed(opts.seed)
    norm = Normalization.of(frames)
    model = AutoEncoder(config).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=opts.lr)
    data = frames.to(device)
    n = data.shape[0]
    pool = opts.degraded_pool.to(device) if opts.degraded_pool is not None else None
    if pool is not None and (pool.ndim != 5 or tuple(pool.shape[1:]) != tuple(frames.shape)):
        raise VsaeError(f"degraded_pool must be (P, {', '.join(map(str, frames.shape))}), got {tuple(pool.shape)}")
    batch = min(opts.batch, n)
    steps_per_epoch = max(1, math.ceil(n / batch))
    total_steps = opts.epochs * steps_per_epoch if opts.epochs is not None else None
    budget_s = opts.minutes * 60 if opts.minutes is not None else None
    check_precision(device, opts.train_precision)
    start = time.perf_counter()  # the probe below is part of the wall-clock budget the user gave
    probe_target = data[:batch]
    probe_inputs = norm.apply(degrade(probe_target, tuple(opts.degrade), torch.Generator().manual_seed(opts.seed + 1)))
    choice = choose_precision(
        model, probe_inputs.contiguous(memory_format=torch.channels_last), norm.apply(probe_target), device, opts.train_precision
    )
    probe_seconds = time.perf_counter() - start
    if opts.progress:
        print(f"fit: training in {choice.name}: {choice.reason}", file=sys.stderr, flush=True)
    scaler = torch.amp.GradScaler(enabled=choice.name == "f16")

    by_steps = total_steps is not None
    bar = progress_bar(
        total_steps if by_steps else round(budget_s),
        desc="fit",
        unit="step" if by_steps else "s",
        disable=not opts.progress,
        # A wall-clock budget counts seconds: show them as elapsed/total, not as a rate.
        bar_format=None if by_steps else "{l_bar}{bar}| {n}/{total} s{postfix}",
    )
    # Model space is RGB scaled per channel by 1/std: multiply back to report PSNR in RGB [0, 1].
    std = torch.tensor(norm.std, device=device).view(1, 3, 1, 1)
    step, history, ema_mse, qat_steps = 0, [], None, 0
    quant_plan = quant.storage_plan(model, opts.quantize) if opts.quantize is not None else {}
    order: list[int] = []
    model.train()
    while True:
        elapsed = time.perf_counter() - start
        # With both budgets, whichever runs out first ends the fit (and drives the lr schedule).
        progress = max(
            step / total_steps if total_steps is not None else 0.0,
            elapsed / budget_s if budget_s is not None else 0.0,
        )
        if progress >= 1.0 and step > 0:  # at least one step, even when the precision probe used the budget
            break
        if len(order) < batch:
            order += torch.randperm(n, generator=generator).tolist()
        idx, order = order[:batch], order[batch:]
        target = data[idx]
        degraded = degrade(target, tuple(opts.degrade), generator)
        if pool is not None:
            degraded = degraded.clone() if degraded is target else degraded  # never write into the frames
            take = (torch.rand(len(idx), generator=generator) < opts.pool_fraction).tolist()
            versions = torch.randint(pool.shape[0], (len(idx),), generator=generator).tolist()
            for j, (use, version) in enumerate(zip(take, versions)):
                if use:
                    degraded[j] = pool[version, idx[j]]
        inputs = norm.apply(degraded)
        target_n = norm.apply(target)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(progress, opts.lr)
        with autocast_context(device, choice.name):
            x_in = inputs.contiguous(memory_format=torch.channels_last)
            if quant_plan and progress >= 1.0 - opts.qat_fraction:
                fake = {n: quant.fake_quantize(p, *quant_plan[n]) for n, p in model.named_parameters() if n in quant_plan}
                output = torch.func.functional_call(model, fake, (x_in,), strict=False)
                qat_steps += 1
            else:
                output = model(x_in)
        loss = F.mse_loss(output.float(), target_n)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        step += 1
        mse = ((output.detach().float() - target_n) * std).pow(2).mean().item()
        ema_mse = mse if ema_mse is None else 0.95 * ema_mse + 0.05 * mse
        psnr = -10 * math.log10(max(ema_mse, 1e-12))
        if step % 20 == 0:
            history.append({"step": step, "seconds": round(time.perf_counter() - start, 2), "psnr": round(psnr, 3)})
        # Every step (a slow step can take seconds): refresh=False lets the bar's own rate limit decide when to redraw.
        bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{psnr:.2f}", epoch=f"{step / steps_per_epoch:.1f}", refresh=False)
        if by_steps:
            bar.update(1)
        else:
            bar.update(min(round(time.perf_counter() - start), bar.total) - bar.n)
    bar.close()
    model.eval()
    # Model memory format back to default so saved/loaded models behave the same.
    model = model.to(memory_format=torch.contiguous_format)
    seconds = time.perf_counter() - start
    return FitResult(model, norm, step / steps_per_epoch, step, seconds, round(psnr, 3), history, choice.name, choice.reason,
                     probe_seconds, qat_steps)
