"""Integer weight storage, one implementation for model bundles (codec/bundle.py) and live model updates
(codec/refresh.py): affine quantization per channel or per tensor, bit-packing, and the checks a
loader runs on untrusted scales, zero-points and packed values.

x ≈ (q - zero) * scale, q in [QMIN[bits], QMAX[bits]]. Per channel: one (scale, zero) per index of `axis`.
Symmetric (zero = 0, q in [-QMAX, QMAX]) suits deltas centred on zero; asymmetric suits weights whose range
is lopsided. Values of 8, 6 and 5 bits are stored one per byte (zstd on top squeezes the unused levels); 4-bit
values two per byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

BITS = (8, 6, 5, 4)
QMIN = {b: -(1 << (b - 1)) for b in BITS}
QMAX = {b: (1 << (b - 1)) - 1 for b in BITS}
# A scale above this (or a non-finite one) is refused: trained weights and their deltas stay within a few
# units, so a huge scale is a corrupt or hostile file, and it would blow weights up to non-finite values.
MAX_SCALE = 1e3


class QuantError(ValueError):
    """Quantized data that does not check out (scale, zero-point, packed values, sizes)."""


@dataclass
class Quantized:
    bits: int
    axis: int | None  # the channel axis, None: one (scale, zero) for the whole tensor
    scale: np.ndarray  # float32, one per channel
    zero: np.ndarray  # int8, one per channel
    values: np.ndarray  # int8, the tensor's shape


def quantize(array: np.ndarray, bits: int = 8, axis: int | None = 0, symmetric: bool = False) -> Quantized:
    """Round `array` to `bits`-bit integers with one scale (and zero-point) per index of `axis`."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, not {bits}")
    x = np.asarray(array, dtype=np.float32)
    moved = x.reshape(1, -1) if axis is None else np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
    qmin, qmax = QMIN[bits], QMAX[bits]
    if moved.shape[1] == 0:
        lo = hi = np.zeros(moved.shape[0], np.float32)
    else:
        lo, hi = np.minimum(moved.min(axis=1), 0), np.maximum(moved.max(axis=1), 0)
    if symmetric:
        peak = np.maximum(-lo, hi)
        scale = np.where(peak > 0, peak / qmax, 1.0).astype(np.float32)
        zero = np.zeros_like(scale, dtype=np.int8)
        q = np.clip(np.rint(moved / scale[:, None]), -qmax, qmax)
    else:
        span = hi - lo
        scale = np.where(span > 0, span / (qmax - qmin), 1.0).astype(np.float32)
        zero = np.clip(np.rint(qmin - lo / scale), qmin, qmax).astype(np.int8)
        q = np.clip(np.rint(moved / scale[:, None]) + zero[:, None], qmin, qmax)
    q = q.astype(np.int8)
    values = q.reshape(x.shape) if axis is None else np.moveaxis(q.reshape(np.moveaxis(x, axis, 0).shape), 0, axis)
    return Quantized(bits, axis, scale, zero, np.ascontiguousarray(values))


def dequantize(q: Quantized) -> np.ndarray:
    """float32 values (q - zero) * scale, in the tensor's shape: the one arithmetic every end runs."""
    v = q.values.astype(np.float32)
    if q.axis is None:
        return (v - np.float32(q.zero[0])) * np.float32(q.scale[0])
    shape = [1] * v.ndim
    shape[q.axis] = -1
    return (v - q.zero.astype(np.float32).reshape(shape)) * q.scale.reshape(shape)


def fake_quantize(weight: torch.Tensor, bits: int, axis: int | None = 0) -> torch.Tensor:
    """Torch: the weight as its quantized version forwards it, with the gradient passing straight through
    (quantization-aware fine-tuning). Same rounding as `quantize`, asymmetric."""
    w = weight.float()
    dims = [d for d in range(w.ndim) if d != axis] if axis is not None else list(range(w.ndim))
    lo = w.detach().amin(dim=dims, keepdim=True).clamp(max=0)
    hi = w.detach().amax(dim=dims, keepdim=True).clamp(min=0)
    qmin, qmax = QMIN[bits], QMAX[bits]
    scale = torch.where(hi > lo, (hi - lo) / (qmax - qmin), torch.ones_like(hi))
    zero = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax)
    rounded = (torch.clamp(torch.round(w / scale) + zero, qmin, qmax) - zero) * scale
    return (w + (rounded - w).detach()).to(weight.dtype)


def quantized_weights(model: torch.nn.Module) -> dict[str, int]:
    """The weights integer storage quantizes, each with its output-channel axis: every convolution's
    (a transposed convolution keeps its output channels on axis 1). The rest (BatchNorm, biases) is small."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            out[f"{name}.weight"] = 1 if isinstance(module, torch.nn.ConvTranspose2d) else 0
    return out


# Integer storages of a model (codec/bundle.py, `vsae fit --precision`): every convolution weight at one bit
# width, or `mixed`: measured per-layer sensitivity (carphone, post-training int4 of one layer at a time, x4
# PSNR): each encoder layer but the first costs 0.05-0.25 dB, each decoder layer 0.8-1.7 dB, the RGB
# projection 2.3 dB. So the encoder (after its first layer) takes 4 bits, the decoder's largest layer 6 and
# the small rest 8: 0.9 MB for the default model against 1.6 MB all int8.
UNIFORM_STORAGES = {"int8": 8, "int6": 6, "int5": 5, "int4": 4}
INTEGER_STORAGES = (*UNIFORM_STORAGES, "mixed")
MIXED_ENCODER_BITS, MIXED_LARGEST_DECODER_BITS, MIXED_REST_BITS = 4, 6, 8


def storage_plan(model: torch.nn.Module, storage: str) -> dict[str, tuple[int, int]]:
    """(bits, output-channel axis) of every weight an integer `storage` quantizes."""
    axes = quantized_weights(model)
    if storage in UNIFORM_STORAGES:
        return {name: (UNIFORM_STORAGES[storage], axis) for name, axis in axes.items()}
    if storage != "mixed":
        raise ValueError(f"unknown integer storage {storage!r}: use {', '.join(INTEGER_STORAGES)}")
    params = dict(model.named_parameters())
    encoder = [n for n in axes if n.startswith("encoder.")]
    decoder = [n for n in axes if n.startswith("decoder.")]
    largest_decoder = max(decoder, key=lambda n: params[n].numel()) if decoder else None
    plan = {}
    for name, axis in axes.items():
        if name in encoder[1:]:
            bits = MIXED_ENCODER_BITS
        elif name == largest_decoder:
            bits = MIXED_LARGEST_DECODER_BITS
        else:
            bits = MIXED_REST_BITS
        plan[name] = (bits, axis)
    return plan


def packed_size(count: int, bits: int) -> int:
    return (count + 1) // 2 if bits == 4 else count


def pack(values: np.ndarray, bits: int) -> bytes:
    """int8 values in range -> bytes: one per byte, or two 4-bit values per byte (low nibble first)."""
    flat = np.ascontiguousarray(values, dtype=np.int8).ravel()
    if bits != 4:
        return flat.tobytes()
    nibbles = (flat.astype(np.int16) - QMIN[4]).astype(np.uint8)  # 0..15
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8).tobytes()


def unpack(data: bytes, bits: int, shape: tuple[int, ...]) -> np.ndarray:
    """Packed bytes -> int8 values of `shape`, refusing a wrong length or values outside the bit range."""
    count = math.prod(shape)
    if not isinstance(data, bytes) or len(data) != packed_size(count, bits):
        raise QuantError(f"packed data is {len(data) if isinstance(data, bytes) else '?'} bytes, {packed_size(count, bits)} expected")
    if bits == 4:
        raw = np.frombuffer(data, np.uint8)
        nibbles = np.empty(raw.size * 2, np.uint8)
        nibbles[0::2], nibbles[1::2] = raw & 0x0F, raw >> 4
        if count % 2 and nibbles[-1] != 0:
            raise QuantError("packed data has a non-zero pad nibble")
        values = (nibbles[:count].astype(np.int16) + QMIN[4]).astype(np.int8)
    else:
        values = np.frombuffer(data, np.int8)
        if values.size and (values.min() < QMIN[bits] or values.max() > QMAX[bits]):
            raise QuantError(f"packed values leave the {bits}-bit range")
    return values.reshape(shape)


def check_parameters(scale: np.ndarray, zero: np.ndarray, bits: int, channels: int) -> None:
    """Refuse scales and zero-points a quantizer cannot have made (count, finiteness, range)."""
    if bits not in BITS:
        raise QuantError(f"unsupported bit width {bits!r}")
    if scale.shape != (channels,) or zero.shape != (channels,):
        raise QuantError(f"{scale.size} scales and {zero.size} zero-points for {channels} channels")
    if not np.isfinite(scale).all() or (scale <= 0).any() or (scale > MAX_SCALE).any():
        raise QuantError("a scale is not a finite positive number within bounds")
    if (zero < QMIN[bits]).any() or (zero > QMAX[bits]).any():
        raise QuantError(f"a zero-point leaves the {bits}-bit range")
