"""Quality measures on RGB frames in [0, 1] (reported on the [0, 255] scale, as usual for PSNR)."""

from __future__ import annotations

import torch
from pytorch_msssim import ssim as _ssim


def psnr_per_frame(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each frame pair (N, 3, H, W), both quantized to 8 bits first as a viewer would see them."""
    a8 = a.clamp(0, 1).mul(255).round()
    b8 = b.clamp(0, 1).mul(255).round()
    mse = (a8 - b8).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(255.0**2 / mse.clamp_min(1e-10))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over frames of per-frame PSNR (dB)."""
    return float(psnr_per_frame(a, b).mean())


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM (Gaussian window 11, sigma 1.5) over frames, on 8-bit-quantized RGB."""
    a8 = a.clamp(0, 1).mul(255).round()
    b8 = b.clamp(0, 1).mul(255).round()
    win = 11 if min(a.shape[-2:]) >= 11 else (min(a.shape[-2:]) // 2) * 2 - 1
    return float(_ssim(a8, b8, data_range=255.0, size_average=True, win_size=max(win, 3)))

