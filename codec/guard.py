"""The never-worse guard: the sender, which has the original frames, tells the receiver per frame (and for
a few tiles) which rebuild to show — the vsae rebuild, the plain baseline (bicubic keys, blended
in-betweens), or a blend of the two with a signalled weight.

The receiver computes both rebuilds anyway (the baseline costs almost nothing), so a mode is all that
travels: one byte per frame, plus up to MAX_TILE_EXCEPTIONS tiles whose best mode differs from the
frame's, two or three bytes each. The sender chooses each frame's mode by the squared error against the
original, so a guarded frame is never further from it than the baseline (up to the 8-bit rounding of
what is shown).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import torch

from .errors import VsaeError

# The vsae rebuild's weight in each mode: 1 = vsae, 0 = baseline, between = a blend of the two.
MODE_WEIGHTS = (1.0, 0.0, 0.25, 0.5, 0.75)
VSAE, BASELINE = 0, 1
# Tiles: a grid aligned to the model's stride (16 for the default model): 2 strides a side.
TILE_PX = 32
# Tiles signalled per frame beyond its mode: each costs 2-3 bytes; the largest gains first.
MAX_TILE_EXCEPTIONS = 4
# A tile exception must cut the frame's squared error by at least this much (in 8-bit units squared per
# pixel of the tile) to be worth its bytes.
MIN_TILE_GAIN = 4.0
# Header byte: low 3 bits the frame mode, high bits the number of tile exceptions that follow.
MODE_BITS = 3


@dataclass(frozen=True)
class FrameModes:
    """One frame's guard decision: its mode, and (tile index, mode) exceptions."""

    mode: int
    tiles: tuple[tuple[int, int], ...] = ()

    def to_bytes(self, tile_count: int) -> bytes:
        wide = tile_count > 255
        out = bytearray([self.mode | (len(self.tiles) << MODE_BITS)])
        for tile, mode in self.tiles:
            out += struct.pack(">HB" if wide else ">BB", tile, mode)
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes, tile_count: int) -> tuple["FrameModes", int]:
        """Parse one frame's modes from the front of `data`; returns them and the bytes used. Validates
        every field (a malformed map is refused, never applied)."""
        if not data:
            raise VsaeError("guard modes: empty")
        head = data[0]
        mode, count = head & ((1 << MODE_BITS) - 1), head >> MODE_BITS
        wide = tile_count > 255
        size = 1 + count * (3 if wide else 2)
        if mode >= len(MODE_WEIGHTS) or count > MAX_TILE_EXCEPTIONS or len(data) < size:
            raise VsaeError("guard modes: malformed")
        tiles = []
        for k in range(count):
            tile, tile_mode = struct.unpack_from(">HB" if wide else ">BB", data, 1 + k * (3 if wide else 2))
            if tile >= tile_count or tile_mode >= len(MODE_WEIGHTS):
                raise VsaeError("guard modes: tile out of range")
            tiles.append((tile, tile_mode))
        return cls(mode, tuple(tiles)), size


def tile_grid(size: tuple[int, int], tile: int = TILE_PX) -> tuple[int, int]:
    """(rows, columns) of the tile grid over a frame of size (H, W)."""
    return math.ceil(size[0] / tile), math.ceil(size[1] / tile)


def _candidates(vsae: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """(M, 3, H, W): every mode's picture."""
    weights = torch.tensor(MODE_WEIGHTS, dtype=vsae.dtype, device=vsae.device).view(-1, 1, 1, 1)
    return (weights * vsae + (1 - weights) * baseline).clamp_(0, 1)


def _tile_errors(candidates: torch.Tensor, original: torch.Tensor, tile: int) -> torch.Tensor:
    """(M, rows, cols): squared error (8-bit units) of each mode in each tile, summed over the tile."""
    err = (candidates - original).mul_(255).pow_(2).sum(1, keepdim=True)  # (M, 1, H, W)
    h, w = err.shape[-2:]
    rows, cols = tile_grid((h, w), tile)
    err = torch.nn.functional.pad(err, (0, cols * tile - w, 0, rows * tile - h))
    return err.view(err.shape[0], rows, tile, cols, tile).sum((2, 4))


def choose_modes(vsae: torch.Tensor, baseline: torch.Tensor, original: torch.Tensor, max_tiles: int = MAX_TILE_EXCEPTIONS,
                 tile: int = TILE_PX) -> FrameModes:
    """The sender's choice for one frame (each (3, H, W) in [0, 1]): the mode with the least squared error
    over the frame, then up to `max_tiles` tiles where another mode gains the most."""
    candidates = _candidates(vsae, baseline)
    errors = _tile_errors(candidates, original, tile)  # (M, rows, cols)
    mode = int(errors.sum((1, 2)).argmin())
    if max_tiles <= 0:
        return FrameModes(mode)
    flat = errors.flatten(1)  # (M, tiles)
    best_err, best_mode = flat.min(0)
    gain = flat[mode] - best_err
    pixels = tile * tile
    order = torch.argsort(gain, descending=True)[:max_tiles]
    tiles = tuple(sorted((int(t), int(best_mode[t])) for t in order if gain[t] > MIN_TILE_GAIN * pixels))
    return FrameModes(mode, tiles)


def apply_modes(vsae: torch.Tensor, baseline: torch.Tensor, modes: FrameModes, tile: int = TILE_PX) -> torch.Tensor:
    """What the receiver shows for one frame under `modes` (the same arithmetic as the sender's choice)."""
    weight = MODE_WEIGHTS[modes.mode]
    out = (weight * vsae + (1 - weight) * baseline).clamp_(0, 1)
    if modes.tiles:
        h, w = vsae.shape[-2:]
        cols = tile_grid((h, w), tile)[1]
        for index, mode in modes.tiles:
            r, c = divmod(index, cols)
            ys, xs = slice(r * tile, (r + 1) * tile), slice(c * tile, (c + 1) * tile)
            tw = MODE_WEIGHTS[mode]
            out[..., ys, xs] = (tw * vsae[..., ys, xs] + (1 - tw) * baseline[..., ys, xs]).clamp_(0, 1)
    return out
