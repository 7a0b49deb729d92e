"""Classic codecs for the benchmarks: encode frames at a target bitrate with the sender's own realtime
encoder, decode them back, and count the bytes. Frames smaller than an encoder takes are edge-padded,
and cropped again after decoding."""

from __future__ import annotations

import os
from dataclasses import dataclass

import av
import numpy as np

from protocol.timing import frame_pts, ticks_per_frame
from sender.encoder import CODECS, DECODERS, MIN_SIDE, RealtimeEncoder

# SVT-AV1 logs its whole configuration to stderr for every encoder; keep errors only.
os.environ.setdefault("SVT_LOG", "1")


@dataclass
class Transcoded:
    frames: np.ndarray  # decoded uint8 (N, H, W, 3), same size as the input
    bytes: int  # encoded bytes, all frames


def available(codec: str) -> str | None:
    """None when the installed FFmpeg has the codec's encoder and decoder, else the reason it is skipped."""
    for name, mode in ((CODECS[codec], "w"), (DECODERS[codec], "r")):
        try:
            av.CodecContext.create(name, mode)
        except Exception as exc:  # PyAV raises several types for a missing codec
            return f"{name} not in this PyAV/FFmpeg build ({exc.__class__.__name__})"
    return None


def padded_size(height: int, width: int, codec: str) -> tuple[int, int]:
    side = MIN_SIDE[codec]
    return max(side, height + height % 2), max(side, width + width % 2)


def transcode(frames: np.ndarray, codec: str, kbps: float, fps: float, indices: list[int] | None = None) -> Transcoded:
    """Encode uint8 frames (N, H, W, 3) at `kbps` and decode them. `indices` are the frames' source indices
    (every T-th frame of a `fps` clip), so rate control sees their real spacing in time."""
    n, h, w = frames.shape[:3]
    indices = list(range(n)) if indices is None else indices
    ph, pw = padded_size(h, w, codec)
    ticks = ticks_per_frame(fps)
    step = indices[1] - indices[0] if len(indices) > 1 else 1
    # Offline: no link's queue to fit a keyframe through, so libvpx sizes its keyframes as it likes.
    encoder = RealtimeEncoder(codec, pw, ph, kbps, fps / step, keyframe_max_s=None)
    decoder = av.CodecContext.create(DECODERS[codec], "r")
    decoded = []
    packets = []
    for frame, index in zip(frames, indices):
        if (ph, pw) != (h, w):
            frame = np.pad(frame, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
        packets.append(encoder.encode(frame, frame_pts(index, ticks), keyframe=not packets))
    packets += encoder.flush()
    for packet in packets:
        if packet.size:
            decoded += [f.to_ndarray(format="rgb24")[:h, :w] for f in decoder.decode(packet)]
    decoded += [f.to_ndarray(format="rgb24")[:h, :w] for f in decoder.decode(None)]
    if len(decoded) != n:
        raise RuntimeError(f"{codec} at {kbps:g} kbps: {len(decoded)} frames decoded of {n}")
    return Transcoded(np.stack(decoded), sum(p.size for p in packets))
