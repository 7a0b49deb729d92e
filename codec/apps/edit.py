"""Editing a video through its autoencoder (paper section 5, appendix B): resampling in time, looping
video textures, stitching, stretching and extrapolating frames, and object removal.

The spatial edits all rest on one property: reprojection x -> g(f(x)), repeated, pulls an image that is
off the video's manifold (a naive collage, a stretched or padded frame, a pasted patch) back onto it,
so seams and discontinuities come out continuous. The temporal edits reuse the codec's interpolation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import VsaeError
from ..metrics import psnr_per_frame, ssim
from ..ops import DEFAULT_TEMPORAL_METHOD, MOTION_MAX_STEPS, TEMPORAL_METHODS, Codec
from .explore import LatentCodes

# Reprojections for the spatial edits: the paper uses a few; progress figures show 1..EDIT_ITERATIONS.
EDIT_ITERATIONS = 5
# Video textures: a loop must span at least this many frames (shorter "loops" are near-stills) ...
MIN_LOOP_FRAMES = 20
# ... and the jump back is bridged by this many interpolated frames by default.
BRIDGE_FRAMES = 3
# Interpolation used for slow motion and loop bridges (the codec's own; `latent` is the paper's eq. 8).
EDIT_TEMPORAL_METHOD = DEFAULT_TEMPORAL_METHOD
# Object removal searches source patches on a grid of this many positions per box side.
PATCH_SEARCH_STEPS = 4
# Output size cap for stretching / extrapolation: bounds memory on a CPU.
MAX_EDIT_PIXELS = 4096 * 4096


# -- time: slow motion and resampling -----------------------------------------------------------------
def resample(codec: Codec, frames: torch.Tensor, factor: float, method: str = EDIT_TEMPORAL_METHOD) -> torch.Tensor:
    """Play the video `factor` times slower (factor > 1) or faster (< 1) at the same frame rate.

    Output frame j shows source time j / factor: source frames where that is a whole number, otherwise
    the codec's interpolation between the two neighbouring frames. With `motion` the position is
    rounded to the nearest 1/MOTION_MAX_STEPS of the frame interval (that method's grid).
    """
    if method not in TEMPORAL_METHODS:
        raise VsaeError(f"unknown method {method!r}; choose from {', '.join(TEMPORAL_METHODS)}")
    if not 1 / 64 <= factor <= 64:
        raise VsaeError(f"resampling factor must be within 1/64..64, got {factor}")
    n = frames.shape[0]
    if n < 2:
        raise VsaeError("resampling needs at least 2 frames")
    size = tuple(frames.shape[-2:])
    total = int((n - 1) * factor + 1e-9) + 1
    steps = MOTION_MAX_STEPS if method == "motion" else 1 << 20
    # Output positions grouped by the source interval [base, base + 1) they fall in.
    groups: dict[int, list[float]] = {}
    for j in range(total):
        t = j / factor
        base = min(int(t), n - 2)
        groups.setdefault(base, []).append(round((t - base) * steps) / steps)
    out: list[torch.Tensor] = []
    cached: tuple[int, object] | None = None  # the last key frame made (interval ends are shared)
    for base, alphas in groups.items():
        if all(a in (0.0, 1.0) for a in alphas):
            out.extend(frames[base + int(a)] for a in alphas)
            continue
        key_a = cached[1] if cached and cached[0] == base else codec.key(frames[base : base + 1], size)
        key_b = codec.key(frames[base + 1 : base + 2], size)
        cached = (base + 1, key_b)
        rebuilt = codec.between(key_a, key_b, torch.tensor(alphas), method).cpu()
        out.extend(frames[base + int(a)] if a in (0.0, 1.0) else rebuilt[i] for i, a in enumerate(alphas))
    return torch.stack(out).cpu()


# -- time: video textures -----------------------------------------------------------------------------
@dataclass
class Loop:
    """Play frames start..end, then jump back to start (bridged by interpolated frames)."""

    start: int
    end: int
    similarity: float  # cosine similarity of the latents of `end` and `start`

    def to_json(self) -> dict:
        return {"start": self.start, "end": self.end, "frames": self.end - self.start + 1, "similarity": round(self.similarity, 5)}


def loop_candidates(codes: LatentCodes, min_length: int = MIN_LOOP_FRAMES, top: int = 5) -> list[Loop]:
    """The `top` (start, end) pairs with the most similar latents (cosine), end - start + 1 >= min_length,
    keeping only the best pair among near-duplicates (pairs within a few frames of a better one)."""
    n = len(codes)
    if n < min_length:
        raise VsaeError(f"a loop of at least {min_length} frames needs that many frames, got {n}")
    flat = F.normalize(codes.grid.flatten(1).float(), dim=1)
    sim = (flat @ flat.T).cpu()
    start, end = torch.triu_indices(n, n, offset=min_length - 1)
    scores = sim[start, end]
    loops: list[Loop] = []
    for i in scores.argsort(descending=True).tolist():
        s, e = int(start[i]), int(end[i])
        if any(abs(s - lp.start) < min_length // 2 and abs(e - lp.end) < min_length // 2 for lp in loops):
            continue
        loops.append(Loop(s, e, float(scores[i])))
        if len(loops) == top:
            break
    return loops


@dataclass
class Texture:
    frames: torch.Tensor  # (M, 3, H, W): the looping video
    loop: Loop
    bridge: int  # interpolated frames inserted between `end` and `start`
    transition: dict = field(default_factory=dict)  # Table 2 numbers


def video_texture(
    codec: Codec,
    frames: torch.Tensor,
    loop: Loop,
    length: int,
    bridge: int = BRIDGE_FRAMES,
    method: str = EDIT_TEMPORAL_METHOD,
) -> Texture:
    """A `length`-frame video looping frames loop.start..loop.end, closing each loop with `bridge`
    frames interpolated from `end` to `start` (paper Figs. 6-7), and the transition measured (Table 2)."""
    if not 0 <= loop.start < loop.end < frames.shape[0]:
        raise VsaeError(f"loop {loop.start}..{loop.end} outside the video's {frames.shape[0]} frames")
    if length < 1 or bridge < 0:
        raise VsaeError("texture length must be >= 1 and bridge >= 0")
    size = tuple(frames.shape[-2:])
    key_end = codec.key(frames[loop.end : loop.end + 1], size)
    key_start = codec.key(frames[loop.start : loop.start + 1], size)
    between = codec.in_between(key_end, key_start, bridge, method).cpu()
    cycle = torch.cat([frames[loop.start : loop.end + 1].cpu(), between])
    repeats = -(-length // cycle.shape[0])
    out = cycle.repeat(repeats, 1, 1, 1)[:length]
    half = codec.between(key_end, key_start, torch.tensor([0.5]), method).cpu()
    return Texture(out, loop, bridge, transition_distance(frames, loop, between, half, method))


def transition_distance(frames: torch.Tensor, loop: Loop, between: torch.Tensor, half: torch.Tensor, method: str) -> dict:
    """Table 2 of the paper, with PSNR/SSIM in place of LPIPS (LPIPS needs downloaded weights).

    direct: the loop's jump as is, x_end -> x_start. interpolated (the paper's measure): a frame
    interpolated halfway between x_end and x_start (`half`), compared with x_start. worst_step: the largest
    frame-to-frame change along our bridged transition. typical_step: the median change between
    consecutive frames of the source video, for scale.
    """
    frames = frames.cpu()
    x_end, x_start = frames[loop.end : loop.end + 1], frames[loop.start : loop.start + 1]
    path = torch.cat([x_end, between.cpu(), x_start])
    steps = psnr_per_frame(path[1:], path[:-1])
    source_steps = psnr_per_frame(frames[1:], frames[:-1])
    return {
        "direct": {"psnr": round(float(psnr_per_frame(x_end, x_start)), 3), "ssim": round(ssim(x_end, x_start), 4)},
        "interpolated": {"psnr": round(float(psnr_per_frame(half, x_start)), 3), "ssim": round(ssim(half, x_start), 4)},
        "worst_step_psnr": round(float(steps.min()), 3),
        "typical_step_psnr": round(float(source_steps.median()), 3),
        "method": method,
    }


# -- space: stitching, stretching, extrapolation ------------------------------------------------------
@dataclass
class SpatialEdit:
    """A naive edit and its reprojections: `steps[i]` is the result after i + 1 round trips."""

    naive: torch.Tensor  # (3, H, W) what goes into the autoencoder
    steps: list[torch.Tensor]  # (3, H, W) each

    @property
    def output(self) -> torch.Tensor:
        return self.steps[-1]


def reproject_steps(codec: Codec, image: torch.Tensor, iterations: int = EDIT_ITERATIONS) -> SpatialEdit:
    """Reproject an image (3, H, W) `iterations` times, keeping every step (for progress figures)."""
    if iterations < 1:
        raise VsaeError("iterations must be >= 1")
    if image.shape[-2] * image.shape[-1] > MAX_EDIT_PIXELS:
        raise VsaeError(f"edit canvas {image.shape[-1]}x{image.shape[-2]} is too large (max {MAX_EDIT_PIXELS} pixels)")
    steps, x = [], image[None].to(codec.device)
    for _ in range(iterations):
        x = codec.project(x, 1).frames
        steps.append(x[0].cpu())
    return SpatialEdit(image.cpu(), steps)


def stitch(codec: Codec, frames: torch.Tensor, iterations: int = EDIT_ITERATIONS) -> SpatialEdit:
    """Concatenate frames (K, 3, H, W) side by side and reproject: a seamless panorama (paper Fig. 9, 17)."""
    if frames.ndim != 4 or frames.shape[0] < 2:
        raise VsaeError("stitching needs at least 2 frames")
    return reproject_steps(codec, torch.cat(list(frames), dim=-1), iterations)


def stretch(codec: Codec, frame: torch.Tensor, factor: float, iterations: int = EDIT_ITERATIONS) -> SpatialEdit:
    """Stretch a frame (3, H, W) `factor` times wider (bilinear) and reproject (paper Fig. 19)."""
    if not 1 <= factor <= 16:
        raise VsaeError(f"stretch factor must be within 1..16, got {factor}")
    h, w = frame.shape[-2:]
    wide = F.interpolate(frame[None].float(), size=(h, round(w * factor)), mode="bilinear", align_corners=False)[0]
    return reproject_steps(codec, wide.clamp(0, 1), iterations)


def extrapolate(
    codec: Codec, frame: torch.Tensor, size: tuple[int, int], mode: str = "reflect", iterations: int = EDIT_ITERATIONS
) -> SpatialEdit:
    """Pad a frame (3, H, W) to `size` (H', W') around its centre, mirrored (`reflect`) or with zeros
    (`zeros`), and reproject: the model extends the scene past the frame's edges (paper Fig. 20)."""
    h, w = frame.shape[-2:]
    big_h, big_w = size
    if big_h < h or big_w < w:
        raise VsaeError(f"extrapolation size {big_w}x{big_h} is smaller than the frame {w}x{h}")
    if mode not in ("reflect", "zeros"):
        raise VsaeError(f"padding mode must be reflect or zeros, got {mode!r}")
    top, left = (big_h - h) // 2, (big_w - w) // 2
    pads = (left, big_w - w - left, top, big_h - h - top)
    x = frame[None].float()
    if mode == "zeros":
        padded = F.pad(x, pads)
    else:
        # Reflection cannot exceed the frame's own size in one go: pad repeatedly (mirror of a mirror).
        padded = x
        while padded.shape[-2:] != (big_h, big_w):
            ph, pw = padded.shape[-2:]
            step = [min(p, dim - 1) for p, dim in zip(pads, (pw, pw, ph, ph))]
            padded = F.pad(padded, tuple(step), mode="reflect")
            pads = tuple(p - s for p, s in zip(pads, step))
    return reproject_steps(codec, padded[0], iterations)


# -- space: object removal ----------------------------------------------------------------------------
@dataclass
class Removal:
    edit: SpatialEdit  # naive = the frame with the box filled by a copied patch
    box: tuple[int, int, int, int]  # x, y, w, h of the removed object
    source: tuple[int, int]  # x, y of the patch copied into the box
    composite: torch.Tensor  # the original frame with only the box (plus a margin) taken from the output
    seam: dict  # discontinuity along the box border: naive fill vs reprojected


def remove_object(
    codec: Codec, frame: torch.Tensor, box: tuple[int, int, int, int], iterations: int = EDIT_ITERATIONS
) -> Removal:
    """Remove what is inside `box` (x, y, w, h): fill it with the patch from elsewhere in the frame whose
    edges best continue the box's surroundings, then reproject so the seams close (paper Fig. 8)."""
    x, y, w, h = box
    H, W = frame.shape[-2:]
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > W or y + h > H:
        raise VsaeError(f"box {x},{y},{w},{h} does not fit in the {W}x{H} frame")
    frame = frame.cpu().float()
    source = _best_patch(frame, box)
    if source is None:
        raise VsaeError(f"box {x},{y},{w},{h} leaves no same-size patch clear of it to copy from; use a smaller box")
    sx, sy = source
    filled = frame.clone()
    filled[:, y : y + h, x : x + w] = frame[:, sy : sy + h, sx : sx + w]
    edit = reproject_steps(codec, filled, iterations)
    # Composite: outside the box the original is already right; take the box plus a margin from the output.
    margin = max(2, min(w, h) // 8)
    composite = frame.clone()
    y0, y1, x0, x1 = max(0, y - margin), min(H, y + h + margin), max(0, x - margin), min(W, x + w + margin)
    composite[:, y0:y1, x0:x1] = edit.output[:, y0:y1, x0:x1]
    seam = {"naive": round(border_discontinuity(filled, box), 3), "reprojected": round(border_discontinuity(edit.output, box), 3),
            "composite": round(border_discontinuity(composite, box), 3), "original": round(border_discontinuity(frame, box), 3)}
    return Removal(edit, (x, y, w, h), source, composite, seam)


def _best_patch(frame: torch.Tensor, box: tuple[int, int, int, int]) -> tuple[int, int] | None:
    """The same-size patch, anywhere in the frame clear of the box, whose own border lines best continue
    the lines just outside the box (mean absolute difference over the box's in-frame sides): the
    patch that, pasted in, leaves the smallest seams. Candidates lie on a grid of PATCH_SEARCH_STEPS
    positions per box side."""
    x, y, w, h = box
    H, W = frame.shape[-2:]
    outside = []  # (line of the patch, the frame's line just outside the box on that side)
    if y > 0:
        outside.append((lambda p: p[:, 0, :], frame[:, y - 1, x : x + w]))
    if y + h < H:
        outside.append((lambda p: p[:, -1, :], frame[:, y + h, x : x + w]))
    if x > 0:
        outside.append((lambda p: p[:, :, 0], frame[:, y : y + h, x - 1]))
    if x + w < W:
        outside.append((lambda p: p[:, :, -1], frame[:, y : y + h, x + w]))
    step = max(1, min(w, h) // PATCH_SEARCH_STEPS)
    best, best_cost = None, float("inf")
    for sy in range(0, H - h + 1, step):
        for sx in range(0, W - w + 1, step):
            if sx < x + w and x < sx + w and sy < y + h and y < sy + h:
                continue  # overlaps the object
            patch = frame[:, sy : sy + h, sx : sx + w]
            cost = sum(float((line(patch) - ring).abs().mean()) for line, ring in outside)
            if cost < best_cost:
                best, best_cost = (sx, sy), cost
    return best


def border_discontinuity(image: torch.Tensor, box: tuple[int, int, int, int]) -> float:
    """Mean absolute step (0..255) across the box's border, on its inside sides that lie within the frame:
    how visible the seam of a pasted patch is."""
    x, y, w, h = box
    H, W = image.shape[-2:]
    img = image.float() * 255
    steps = []
    if y > 0:
        steps.append((img[:, y, x : x + w] - img[:, y - 1, x : x + w]).abs().flatten())
    if y + h < H:
        steps.append((img[:, y + h - 1, x : x + w] - img[:, y + h, x : x + w]).abs().flatten())
    if x > 0:
        steps.append((img[:, y : y + h, x] - img[:, y : y + h, x - 1]).abs().flatten())
    if x + w < W:
        steps.append((img[:, y : y + h, x + w - 1] - img[:, y : y + h, x + w]).abs().flatten())
    return float(torch.cat(steps).mean()) if steps else 0.0


def seam_discontinuity(image: torch.Tensor, columns: list[int]) -> float:
    """Mean absolute step (0..255) across the given column boundaries (between column c - 1 and c): how
    visible a stitch's seams are (compare the naive stitch with its reprojection)."""
    img = image.float() * 255
    steps = [(img[:, :, c] - img[:, :, c - 1]).abs().mean() for c in columns]
    return float(torch.stack(steps).mean())
