"""Bjøntegaard delta rate, rate–quality envelopes and the model's break-even call length."""

from __future__ import annotations

import math

import numpy as np
from scipy.interpolate import PchipInterpolator

Point = tuple[float, float]  # (kbps, psnr)


def envelope(points: list[Point]) -> list[Point]:
    """The upper envelope (Pareto front): points no cheaper-or-equal point beats, by increasing rate."""
    front: list[Point] = []
    for rate, quality in sorted(points, key=lambda p: (p[0], -p[1])):
        if rate > 0 and math.isfinite(quality) and (not front or quality > front[-1][1]):
            front.append((rate, quality))
    return front


def _log_rate_of_quality(points: list[Point]) -> tuple[PchipInterpolator, float, float]:
    front = envelope(points)
    quality = np.array([q for _, q in front])
    log_rate = np.log10([r for r, _ in front])
    return PchipInterpolator(quality, log_rate), float(quality[0]), float(quality[-1])


def bd_rate(anchor: list[Point], test: list[Point]) -> tuple[float, str | None]:
    """Average rate difference (%) of `test` against `anchor` at equal PSNR, over the PSNR range both cover
    (piecewise-cubic in log-rate, as in Bjøntegaard's method); negative = test needs fewer bits.
    Returns (nan, reason) when there is no common range."""
    if len(envelope(anchor)) < 2 or len(envelope(test)) < 2:
        return math.nan, "fewer than two rate points on a curve's envelope"
    fa, lo_a, hi_a = _log_rate_of_quality(anchor)
    ft, lo_t, hi_t = _log_rate_of_quality(test)
    lo, hi = max(lo_a, lo_t), min(hi_a, hi_t)
    if hi - lo < 1e-6:
        return math.nan, f"no common PSNR range (anchor {lo_a:.2f}–{hi_a:.2f} dB, test {lo_t:.2f}–{hi_t:.2f} dB)"
    mean_diff = (ft.integrate(lo, hi) - fa.integrate(lo, hi)) / (hi - lo)
    return float((10**mean_diff - 1) * 100), None


def break_even_s(anchor: list[Point], test: list[Point], model_bytes: int) -> tuple[float, str | None]:
    """Call length after which shipping the model has paid for itself: model bits over the bitrate `test`
    saves against `anchor` at equal PSNR, taken at the middle of the common PSNR range."""
    if len(envelope(anchor)) < 2 or len(envelope(test)) < 2:
        return math.nan, "fewer than two rate points on a curve's envelope"
    fa, lo_a, hi_a = _log_rate_of_quality(anchor)
    ft, lo_t, hi_t = _log_rate_of_quality(test)
    lo, hi = max(lo_a, lo_t), min(hi_a, hi_t)
    if hi < lo:
        return math.nan, "no common PSNR range"
    mid = (lo + hi) / 2
    saved_kbps = 10 ** float(fa(mid)) - 10 ** float(ft(mid))
    if saved_kbps <= 0:
        return math.inf, f"no bitrate saved at {mid:.2f} dB"
    return model_bytes * 8 / (saved_kbps * 1000), None
