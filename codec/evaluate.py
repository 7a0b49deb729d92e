"""`vsae eval`: how well a model rebuilds a clip from the stream the sender would transmit."""

from __future__ import annotations

import torch

from .errors import VsaeError
from .metrics import psnr_per_frame, ssim
from .ops import DEFAULT_ITERATIONS, DEFAULT_TEMPORAL_METHOD, Codec, upsample
from .pipeline import Reconstructor
from .video import downscale

METHODS = ("autoencoder", "bicubic", "vsae", "pixel_blend", "repeat")


def key_indices(count: int, temporal: int) -> tuple[list[int], int]:
    """Every T-th frame from 0; the clip is cut after its last key so every rebuilt frame has two keys."""
    used = ((count - 1) // temporal) * temporal + 1
    return list(range(0, used, temporal)), used


def blend_keys(keys: torch.Tensor, temporal: int, hold: bool = False) -> torch.Tensor:
    """Full-rate frames from keys (K, 3, H, W): linear pixel blend between neighbours, or sample-and-hold."""
    out = []
    for i in range(len(keys) - 1):
        for j in range(temporal):
            a = 0.0 if hold else j / temporal
            out.append((1 - a) * keys[i] + a * keys[i + 1])
    out.append(keys[-1])
    return torch.stack(out)


def evaluate(
    codec: Codec,
    frames: torch.Tensor,
    scale: int = 4,
    temporal: int = 1,
    iterations: int = DEFAULT_ITERATIONS,
    method: str = DEFAULT_TEMPORAL_METHOD,
) -> dict:
    """PSNR/SSIM of each rebuild method against the original frames (N, 3, H, W) in [0, 1].

    The stream is every `temporal`-th frame, area-downscaled by `scale`. Scores average over the frames
    a receiver has to rebuild: every frame when scale > 1, the skipped frames when scale == 1.
    `autoencoder` is g(f(x)) on every full-res frame. Methods that do not apply are None.
    """
    if scale < 1 or temporal < 1 or iterations < 1:
        raise VsaeError("scale, temporal and iterations must be >= 1")
    if temporal > 1 and frames.shape[0] < temporal + 1:
        raise VsaeError(f"temporal factor {temporal} needs at least {temporal + 1} frames, got {frames.shape[0]}")
    size = tuple(frames.shape[-2:])
    keys, used = key_indices(frames.shape[0], temporal)
    target = frames[:used]
    measured = list(range(used)) if scale > 1 else [i for i in range(used) if i % temporal]

    rebuilt: dict[str, torch.Tensor | None] = dict.fromkeys(METHODS)
    rebuilt["autoencoder"] = codec.project(frames, 1).frames.cpu()
    low = downscale(frames[keys], scale)
    received = upsample(low, size, "bicubic") if scale > 1 else frames[keys]
    if scale > 1:
        rebuilt["bicubic"] = blend_keys(received, temporal)
    if temporal > 1:
        rebuilt["pixel_blend"] = blend_keys(received, temporal)
        rebuilt["repeat"] = blend_keys(received, temporal, hold=True)
    if scale > 1 or temporal > 1:
        rec = Reconstructor(codec, size, temporal, iterations, method)
        out = [f.frame for i, k in zip(keys, low) for f in rec.push(i, k)]
        rebuilt["vsae"] = torch.stack(out).cpu()

    scores: dict = {"psnr": {}, "ssim": {}}
    for name, video in rebuilt.items():
        if video is None:
            scores["psnr"][name] = scores["ssim"][name] = None
            continue
        ref = frames if name == "autoencoder" else target[measured]
        video = video if name == "autoencoder" else video[measured]
        scores["psnr"][name] = round(float(psnr_per_frame(video, ref).mean()), 3)
        scores["ssim"][name] = round(ssim(video, ref), 4)
    return {"frames": int(frames.shape[0]), "scale": scale, "temporal": temporal, "iterations": iterations, **scores}
