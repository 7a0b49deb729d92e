"""The receiver's rebuild, as one streaming object used by `vsae reconstruct`, `vsae eval` and the receiver.

Feed received frames (low-res or full-size) with their source index, in increasing order; get back
hi-res frames at the full source rate, each exactly once, in order. Missing frames between two keys
are rebuilt by temporal interpolation; a gap longer than the temporal factor (a lost frame) is
concealed by latent interpolation when the gap is long (see CONCEAL_MOTION_MAX_STEPS) and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from .ops import DEFAULT_ITERATIONS, DEFAULT_TEMPORAL_METHOD, Codec, Key, upsample

# Frames lost in transit are concealed by interpolation across the gap. `motion` builds a 1/m-pixel grid for
# an in-between at k/m (m = gap + 1): its time and memory grow with m squared (176x144, one thread: 0.1 s at
# m=2, 0.2 s at 8, 3.3 s and ~1 GB at 32) and across a long gap (an outage) it finds no motion within its
# radius anyway. A concealed gap longer than this many steps is rebuilt by latent interpolation (the paper's
# eq. 8, CONCEALMENT_METHOD): one decode per frame, so a receiver that fell behind or came back from an
# outage catches up instead of stalling further.
CONCEAL_MOTION_MAX_STEPS = 8
CONCEALMENT_METHOD = "latent"


@dataclass
class OutputFrame:
    index: int
    frame: torch.Tensor  # (3, H, W) in [0, 1]
    concealed: bool  # rebuilt across a gap larger than the temporal factor (frame loss)
    key: bool  # a received frame (reprojected), not an in-between
    model_version: int = 0  # the model (after live updates, codec/refresh.py) this frame was rebuilt with


class Reconstructor:
    """Streaming receiver-side reconstruction at a fixed output size (H, W)."""

    def __init__(
        self,
        codec: Codec,
        size: tuple[int, int],
        temporal: int = 1,
        iterations: int = DEFAULT_ITERATIONS,
        method: str = DEFAULT_TEMPORAL_METHOD,
    ):
        if temporal < 1:
            raise ValueError("temporal factor must be >= 1")
        self.codec, self.size, self.temporal = codec, tuple(size), temporal
        self.iterations, self.method = iterations, method
        self._last: tuple[int, Key] | None = None
        self.next_index = 0  # the next source index to output
        self.concealed = 0
        self.model_version = 0
        self._switch: tuple | None = None  # (from index, callable that swaps the weights, version after it)

    def switch_model_at(self, index: int, apply, version: int | None = None) -> None:
        """Swap the model's weights (by calling `apply()`) so that frames >= `index` use the new ones and
        frames before it the old: sender and receiver call this with the same index. `index` should be a
        key's; if that key is lost, the switch happens at the next key received. The frames after it carry
        `version` (default: one more than now) as their `model_version`."""
        self._switch = (index, apply, version)

    @property
    def switch_pending(self) -> bool:
        return self._switch is not None

    def restart_at(self, index: int) -> None:
        """Start a new run of keys at `index`: the frames before it were shown from elsewhere (an adaptive stream's
        plain run), so nothing before it is rebuilt or interpolated across."""
        self._last = None
        self.next_index = index

    def set_mode(self, method: str, iterations: int) -> None:
        """Rebuild the frames from the next push on with this in-between method and reprojection count
        (a receiver that adapts to its CPU; the keys already made stay as they are)."""
        self.method, self.iterations = method, iterations

    def push(self, index: int, frame: torch.Tensor) -> list[OutputFrame]:
        """Add a received frame (3, h, w) or (1, 3, h, w) with its source index; returns frames now final.

        Frames arriving late (index already output) are ignored and return nothing.
        """
        if index < self.next_index:
            return []
        if frame.ndim == 3:
            frame = frame.unsqueeze(0)
        key = self.codec.key(frame, self.size, self.iterations)
        switching = self._switch is not None and index >= self._switch[0]
        out: list[OutputFrame] = []
        if self._last is None:
            # Frames before the first received one cannot be interpolated: hold the first key.
            for i in range(self.next_index, index):
                out.append(OutputFrame(i, key.frame[0], True, False, self.model_version))
        else:
            last_index, last_key = self._last
            count = index - last_index - 1
            lost = count > self.temporal - 1
            long_gap = lost and count + 1 > CONCEAL_MOTION_MAX_STEPS
            between = self.codec.in_between(last_key, key, count, CONCEALMENT_METHOD if long_gap else self.method)
            for j in range(count):
                out.append(OutputFrame(last_index + 1 + j, between[j], lost, False, self.model_version))
        if switching:
            # The frames before the switch were rebuilt with the old weights (above); the key and all
            # after it with the new ones.
            _, apply, version = self._switch
            apply()
            self._switch = None
            self.model_version = self.model_version + 1 if version is None else version
            key = self.codec.key(frame, self.size, self.iterations)
        out.append(OutputFrame(index, key.frame[0], False, True, self.model_version))
        self.concealed += sum(f.concealed for f in out)
        self._last = (index, key)
        self.next_index = index + 1
        return out

    def flush(self, total: int | None = None) -> list[OutputFrame]:
        """End of stream: hold the last key for any frames up to `total` (exclusive) never received."""
        out: list[OutputFrame] = []
        if self._last is not None and total is not None:
            held = self._last[1].frame[0]
            # Up to T-1 trailing frames are expected (the stream ended between keys); more were lost.
            for i in range(self.next_index, total):
                out.append(OutputFrame(i, held, i - self._last[0] > self.temporal - 1, False, self.model_version))
            self.concealed += sum(f.concealed for f in out)
            self.next_index = max(self.next_index, total)
        return out


class BaselineReconstructor:
    """What a plain receiver shows from the same low-res stream: bicubic upsampling, linear blends between
    keys (and across gaps), the first key held before it and the last after it. Same interface as
    `Reconstructor`, so the two run side by side on the same received frames."""

    def __init__(self, size: tuple[int, int], temporal: int = 1):
        self.size, self.temporal = tuple(size), temporal
        self._last: tuple[int, torch.Tensor] | None = None
        self.next_index = 0

    def push(self, index: int, frame: torch.Tensor) -> list[OutputFrame]:
        if index < self.next_index:
            return []
        if frame.ndim == 3:
            frame = frame.unsqueeze(0)
        key = upsample(frame.float(), self.size, mode="bicubic")[0]
        out: list[OutputFrame] = []
        if self._last is None:
            out += [OutputFrame(i, key, True, False) for i in range(self.next_index, index)]
        else:
            last_index, last = self._last
            gap = index - last_index
            for i in range(last_index + 1, index):
                t = (i - last_index) / gap
                out.append(OutputFrame(i, torch.lerp(last, key, t), gap > self.temporal, False))
        out.append(OutputFrame(index, key, False, True))
        self._last, self.next_index = (index, key), index + 1
        return out

    def flush(self, total: int | None = None) -> list[OutputFrame]:
        out: list[OutputFrame] = []
        if self._last is not None and total is not None:
            out = [OutputFrame(i, self._last[1], i - self._last[0] > self.temporal - 1, False) for i in range(self.next_index, total)]
            self.next_index = max(self.next_index, total)
        return out


def reconstruct_stream(
    reconstructor: Reconstructor, received: Iterable[tuple[int, torch.Tensor]], total: int | None = None
) -> Iterator[OutputFrame]:
    """Run a whole received stream through a Reconstructor."""
    for index, frame in received:
        yield from reconstructor.push(index, frame)
    yield from reconstructor.flush(total)
