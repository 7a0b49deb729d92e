"""Pixel codes (hypercolumns of the encoder), pixel correspondences and mask propagation (paper sec. 5, Fig. 10).

One model, no second network: a pixel's code is the column of features every encoder stage of the fitted
autoencoder holds above it, each stage bilinearly resampled onto one common grid. Codes of two frames are
matched by cosine similarity; labels given on the first frame travel to the rest of the video by
top-k nearest-neighbour voting (standard video label propagation), with the first frame (ground truth) and
the most recent predicted frames as references.

Feature grid: at `stride` s a frame of H x W pixels has codes on a ceil(H / s) x ceil(W / s) grid; cell
(i, j) is centred on pixel (i * s + (s - 1) / 2, j * s + (s - 1) / 2) of the frame (the centre of the s x s
block it covers; on the last row/column, past H or W when s does not divide them, where the replicate
padding supplies values). Labels come back to full resolution through the same geometry (`_to_pixels`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import VsaeError
from ..ops import Codec

# Codes on a grid of 1/FEATURE_STRIDE of the frame: correspondences are a matmul over all pixel pairs, so
# halving the grid cuts their cost 16x; labels are upsampled back with bilinear vote maps (sharp enough).
FEATURE_STRIDE = 2
# Frames per encoder pass (bounds memory, as codec.ops.BATCH).
FEATURE_BATCH = 8
# Target pixels per similarity block in the matmuls: a block is CHUNK x (reference pixels) floats.
CORRESPONDENCE_CHUNK = 1024
# Label propagation. Defaults measured on `moving_shape_video` (48 frames, 96x128, seed 0), a width-32 model
# fitted 1 minute (single thread) on that video, mean IoU over frames 1..47 for drift=0 | drift=1 (the
# object keeps | changes its look); copying the frame-0 mask to every frame scores 0.080 | 0.080.
# `python -m codec.apps.pixelcodes` reruns the main rows (about 4 minutes).
#   defaults (frame 0 + 1 previous, k 10, T 0.05, bonus 0.1, no radius)   0.960 | 0.929
#   frame 0 only                                                          0.962 | 0.725 (last frame: 0.00)
#   no bonus                                                              0.930 | 0.859
#   bonus 0.05 / 0.15 / 0.2 / 0.3             0.950 | 0.889 / 0.963 | 0.938 / 0.963 | 0.901 / 0.963 | 0.743
#   2 previous frames                                                     0.961 | 0.931
#   k 5 / k 20                                                            0.960 | 0.888 / 0.957 | 0.928
#   T 0.02 / T 0.1                                                        0.960 | 0.881 / 0.959 | 0.928
#   radius 4 / 12 on the previous frames                                  0.960 | 0.932 / 0.960 | 0.929
# neighbours voting for each pixel ...
TOP_K = 10
# ... weighted by softmax(similarity / temperature) (cosine similarities of ReLU codes lie in [0, 1]; a low
# temperature lets the few best matches win without discarding the rest) ...
VOTE_TEMPERATURE = 0.05
# ... drawn from the first frame (its labels are the truth: keeps the propagation anchored) plus this many
# most recent predicted frames (follow gradual change; frame 0 alone loses an object whose look drifts) ...
PREVIOUS_FRAMES = 1
# ... optionally only within this many feature cells (Euclidean) of the pixel in those previous frames.
# None (whole frame): a radius bought nothing measurable (table above), since a pixel's best matches in
# the previous frame are near it anyway, and costs the distance masks. It never applies to frame 0, which
# the object may have moved far from: a radius of 12 there too scored 0.889 vs 0.930 (drift 0, an early
# version without bonus and with hard-label feedback), 0.34 with frame 0 alone.
SEARCH_RADIUS: int | None = None
# Frame 0's similarities are raised by this before ranking and weighting: its labels are the truth, the
# previous frames' are predictions that carry their own errors forward (a cell mislabelled once matches
# itself in the next frame of a static background with similarity ~1 and would stay wrong). A previous-
# frame match must be this much more similar to outvote an equal frame-0 one, which it is where the
# object's look has drifted from frame 0. At T 0.05, 0.1 gives an equally similar frame-0 match e^2 = 7.4x
# the weight. 0.1 rather than the marginally better 0.15 of the table: 0.2 already starts to lose the
# drifting object, and on the test suite's width-8 case (24 frames, 64x96) 0.1 was best
# (0.893 | 0.850 vs 0.891 | 0.844 at 0.15, 0.815 | 0.751 at 0).
FIRST_FRAME_BONUS = 0.1
# Labels beyond this are refused: the vote maps hold one channel per label.
MAX_LABELS = 64
# Overlay colours (RGB in [0, 1]) for labels 1, 2, ...; label 0 (background) stays untinted.
PALETTE = (
    (1.0, 0.2, 0.2), (0.2, 0.5, 1.0), (0.2, 0.9, 0.3), (1.0, 0.85, 0.1),
    (0.8, 0.3, 1.0), (0.1, 0.9, 0.9), (1.0, 0.5, 0.0), (1.0, 0.4, 0.8),
)
OVERLAY_ALPHA = 0.5


# -- pixel codes ------------------------------------------------------------------------------------
def feature_size(size: tuple[int, int], stride: int = FEATURE_STRIDE) -> tuple[int, int]:
    """Feature grid (h, w) = (ceil(H / stride), ceil(W / stride)) of a frame of size (H, W)."""
    return math.ceil(size[0] / stride), math.ceil(size[1] / stride)


def _grid(padded: tuple[int, int], size: tuple[int, int], stride: int, device: torch.device) -> torch.Tensor:
    """grid_sample coordinates (1, h, w, 2) of the feature cells' centres, in padded-frame coordinates.

    With align_corners=False, normalised -1..1 spans the padded frame's outer pixel edges whatever the
    resolution of the map being sampled, so one grid serves every stage (each stage covers the whole padded
    frame at its own stride) and sampling is exactly bilinear upsampling followed by the crop.
    """
    (hp, wp), (hh, ww) = padded, size
    h, w = feature_size(size, stride)
    top, left = (hp - hh) // 2, (wp - ww) // 2  # the offsets AutoEncoder.pad put the frame at
    ys = top + torch.arange(h, device=device, dtype=torch.float32) * stride + (stride - 1) / 2
    xs = left + torch.arange(w, device=device, dtype=torch.float32) * stride + (stride - 1) / 2
    gy = (2 * (ys + 0.5) / hp - 1).view(h, 1).expand(h, w)
    gx = (2 * (xs + 0.5) / wp - 1).view(1, w).expand(h, w)
    return torch.stack([gx, gy], dim=-1).unsqueeze(0)


@torch.inference_mode()
def hypercolumns(codec: Codec, frames: torch.Tensor, stride: int = FEATURE_STRIDE) -> torch.Tensor:
    """Pixel codes f_i(x) of frames (N, 3, H, W) in [0, 1]: (N, C, ceil(H / stride), ceil(W / stride)).

    C is the sum of the encoder stages' widths. Each stage's features (after its ReLU) are bilinearly
    resampled to the cell centres (module docstring), L2-normalised per pixel, concatenated, and the whole
    column L2-normalised again: per stage first because the deep stages have many more channels (the last
    8x the first's) and would otherwise dominate every match, although the shallow ones carry the
    colour/edge detail that localises a pixel (mask propagation, table in the module constants: 0.960 |
    0.929 vs 0.955 | 0.916 with one normalisation of the raw concatenation); overall so that a dot
    product is the cosine similarity. A stage that is all zero at a pixel (dead ReLUs) contributes zero.
    """
    _check_frames(frames)
    if type(stride) is not int or stride < 1:
        raise VsaeError(f"feature stride must be a positive integer, got {stride!r}")
    model = codec.model
    out = []
    for chunk in frames.split(FEATURE_BATCH):
        x = codec.normalization.apply(chunk.to(codec.device, torch.float32))
        x, size = model.pad(x)
        grid = _grid(tuple(x.shape[-2:]), size, stride, x.device).expand(x.shape[0], -1, -1, -1)
        h, stages = x.contiguous(memory_format=torch.channels_last), []
        for block in model.encoder:
            h = block(h)
            s = F.grid_sample(h.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
            stages.append(F.normalize(s, dim=1))
        out.append(F.normalize(torch.cat(stages, dim=1), dim=1))
    return torch.cat(out).contiguous()


# -- correspondences --------------------------------------------------------------------------------
def _flat(feat: torch.Tensor, name: str) -> torch.Tensor:
    """(1, C, h, w) -> (h * w, C)."""
    if feat.ndim != 4 or feat.shape[0] != 1:
        raise VsaeError(f"{name} must be one frame's codes (1, C, h, w), got {tuple(feat.shape)}")
    return feat[0].flatten(1).t()


@torch.inference_mode()
def correspondences(
    feat_a: torch.Tensor, feat_b: torch.Tensor, chunk: int = CORRESPONDENCE_CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest neighbour in A of every pixel of B, by cosine similarity of (unit-norm) pixel codes.

    feat_a, feat_b: (1, C, h, w) from `hypercolumns` (sizes may differ). Returns (index, similarity), both
    (h_b, w_b): index into A's flattened h_a * w_a grid (row-major: y = index // w_a, x = index % w_a)
    and the cosine similarity of that match. Ties go to the lowest index. B is processed `chunk` pixels at a
    time, so memory is chunk x h_a x w_a floats whatever the frame size.
    """
    a, b = _flat(feat_a, "feat_a"), _flat(feat_b, "feat_b")
    if a.shape[1] != b.shape[1]:
        raise VsaeError(f"codes of different depth: {a.shape[1]} vs {b.shape[1]} channels")
    a_t = a.t().contiguous()
    sims, idxs = [], []
    for block in b.split(max(1, chunk)):
        s, i = (block @ a_t).max(dim=1)
        sims.append(s)
        idxs.append(i)
    shape = feat_b.shape[-2:]
    return torch.cat(idxs).view(shape), torch.cat(sims).view(shape)


# -- mask propagation -------------------------------------------------------------------------------
def _to_grid(onehot: torch.Tensor, stride: int) -> torch.Tensor:
    """Per-cell label fractions (L, h, w) of full-res one-hot maps (L, H, W) (area average of each cell)."""
    hh, ww = onehot.shape[-2:]
    h, w = feature_size((hh, ww), stride)
    x = F.pad(onehot.unsqueeze(0), (0, w * stride - ww, 0, h * stride - hh), mode="replicate")
    return F.avg_pool2d(x, stride)[0]


def _to_pixels(votes: torch.Tensor, size: tuple[int, int], stride: int) -> torch.Tensor:
    """Vote maps on the feature grid (L, h, w) -> bilinear (L, H, W) with the cells' geometry.

    Upsampling h -> h * stride with align_corners=False puts cell i's value exactly at pixel
    i * stride + (stride - 1) / 2, where its code was sampled; the crop drops the overhang past H, W.
    """
    if stride == 1:
        return votes
    h, w = votes.shape[-2:]
    up = F.interpolate(votes.unsqueeze(0), size=(h * stride, w * stride), mode="bilinear", align_corners=False)
    return up[0, :, : size[0], : size[1]]


def _coords(h: int, w: int, device: torch.device) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([ys.flatten(), xs.flatten()], dim=1).float()


@torch.inference_mode()
def _vote(
    target: torch.Tensor,
    refs: list[torch.Tensor],
    ref_labels: list[torch.Tensor],
    local: list[bool],
    k: int,
    temperature: float,
    radius: int | None,
    first_bonus: float,
    chunk: int = CORRESPONDENCE_CHUNK,
) -> torch.Tensor:
    """Label vote maps (L, h, w) for target codes (1, C, h, w) from reference codes and label fractions.

    References flagged `local` are searched only within `radius` cells (Euclidean) of each target cell;
    the first reference's similarities are raised by `first_bonus` (when there are others).
    """
    h, w = target.shape[-2:]
    t = _flat(target, "target")
    r = torch.cat([_flat(f, "reference") for f in refs]).t().contiguous()  # (C, n_refs * h * w)
    labels = torch.cat([lab.flatten(1).t() for lab in ref_labels])  # (n_refs * h * w, L)
    k = min(k, r.shape[1])
    restrict = radius is not None and any(local)
    if restrict:
        pos = _coords(h, w, t.device)
        ref_pos = pos.repeat(len(refs), 1)
        is_local = torch.tensor(local, device=t.device).repeat_interleave(h * w)
    out = []
    for start in range(0, t.shape[0], chunk):
        sim = t[start : start + chunk] @ r
        if restrict:
            far = (torch.cdist(pos[start : start + chunk], ref_pos) > radius) & is_local
            sim.masked_fill_(far, float("-inf"))
        if first_bonus and len(refs) > 1:
            sim[:, : h * w] += first_bonus
        top, idx = sim.topk(k, dim=1)
        # -inf (out of radius, when fewer than k cells lie within it) gets zero weight.
        weight = torch.softmax(top / temperature, dim=1)
        out.append((weight.unsqueeze(-1) * labels[idx]).sum(1))
    return torch.cat(out).t().reshape(-1, h, w)


def _check_frames(frames: torch.Tensor) -> None:
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[0] == 0:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise VsaeError(f"expected frames (N, 3, H, W), got {shape}")
    if not frames.is_floating_point():
        raise VsaeError(f"frames must be float RGB in [0, 1], got dtype {frames.dtype}")


def _check_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The label values present in a valid mask (sorted, including 0); raises VsaeError otherwise."""
    if not isinstance(mask, torch.Tensor):
        raise VsaeError(f"mask must be a torch tensor of integer labels, got {type(mask).__name__}")
    if mask.dtype == torch.bool or mask.is_floating_point() or mask.is_complex():
        raise VsaeError(f"mask must hold integer labels (0 = background, 1..L objects), got dtype {mask.dtype}")
    if tuple(mask.shape) != tuple(size):
        raise VsaeError(f"mask shape {tuple(mask.shape)} does not match the frame size {tuple(size)} (H, W)")
    if int(mask.min()) < 0:
        raise VsaeError("mask labels must be >= 0 (0 = background)")
    values = torch.unique(mask)
    if int(values.max()) == 0:
        raise VsaeError("mask is empty: no pixel carries an object label (1..L) to propagate")
    if len(values) - 1 > MAX_LABELS:
        raise VsaeError(f"mask has {len(values) - 1} object labels; at most {MAX_LABELS} are supported")
    if 0 not in values.tolist():
        values = torch.cat([values.new_zeros(1), values])
    return values


@torch.inference_mode()
def propagate_mask(
    codec: Codec,
    frames: torch.Tensor,
    mask: torch.Tensor,
    stride: int = FEATURE_STRIDE,
    k: int = TOP_K,
    previous: int = PREVIOUS_FRAMES,
    radius: int | None = SEARCH_RADIUS,
    temperature: float = VOTE_TEMPERATURE,
    first_bonus: float = FIRST_FRAME_BONUS,
    progress: bool = False,
) -> torch.Tensor:
    """Labels of every frame from the labels of frame 0, through the autoencoder's own pixel codes.

    frames: (N, 3, H, W) float in [0, 1]; mask: (H, W) integer labels of frames[0] (0 = background, any
    other values = objects). Returns (N, H, W) int64 with the mask's label values; frame 0 is the mask.

    Each pixel of frame t takes a similarity-weighted (softmax(sim / temperature)) vote of its k most
    similar cells (cosine similarity of pixel codes) among the references: frame 0 with its given labels,
    which keeps the propagation anchored, plus the `previous` most recent frames with their predicted
    labels (soft vote fractions), which follow gradual change. With `radius` (feature cells), a pixel
    only looks at previous-frame cells that near its own position (frame 0 is always searched whole).
    Labels enter as per-cell label fractions and leave as bilinearly upsampled vote maps, argmax per pixel
    (smoother edges than nearest-neighbour labels). Measurements behind the defaults: module constants.
    Cost per frame: one encoder pass plus a (h*w) x ((1 + previous) * h*w) matmul over C channels.
    """
    _check_frames(frames)
    n, _, hh, ww = frames.shape
    values = _check_mask(mask, (hh, ww))
    mask = mask.to(torch.int64)
    values = values.to(torch.int64)
    if type(k) is not int or k < 1:
        raise VsaeError(f"k must be a positive integer, got {k!r}")
    if type(previous) is not int or previous < 0:
        raise VsaeError(f"previous must be a non-negative integer, got {previous!r}")
    if radius is not None and (not isinstance(radius, (int, float)) or radius < 0):
        raise VsaeError(f"radius must be None or >= 0, got {radius!r}")
    if not temperature > 0:
        raise VsaeError(f"temperature must be > 0, got {temperature!r}")
    if not first_bonus >= 0:
        raise VsaeError(f"first_bonus must be >= 0, got {first_bonus!r}")
    device = codec.device
    # Label values -> channels 0..L (values need not be contiguous).
    channels = torch.bucketize(mask.to(device), values.to(device))
    onehot = F.one_hot(channels, len(values)).permute(2, 0, 1).float()
    first_labels = _to_grid(onehot, stride)
    out = torch.empty((n, hh, ww), dtype=torch.int64)
    out[0] = mask.cpu()
    first = hypercolumns(codec, frames[:1], stride)
    recent: list[tuple[torch.Tensor, torch.Tensor]] = []  # (codes, label fractions) of predicted frames
    lookup = values.to(device)
    bar = tqdm(total=n - 1, desc="propagating mask", unit="frame", disable=not progress)
    for start in range(1, n, FEATURE_BATCH):
        feats = hypercolumns(codec, frames[start : start + FEATURE_BATCH], stride)
        for i in range(feats.shape[0]):
            target = feats[i : i + 1]
            refs = [first] + [f for f, _ in recent]
            labels = [first_labels] + [lab for _, lab in recent]
            local = [False] + [True] * len(recent)
            votes = _vote(target, refs, labels, local, k, temperature, radius, first_bonus)
            pred = _to_pixels(votes, (hh, ww), stride).argmax(0)
            out[start + i] = lookup[pred].cpu()
            if previous:
                # Predicted labels re-enter as the soft vote fractions, not hard labels: an uncertain cell
                # then carries little weight into the next frame instead of confirming its own error
                # (mean IoU 0.960 | 0.929 vs 0.958 | 0.877 with hard labels, table above).
                fractions = votes / votes.sum(0, keepdim=True).clamp_min(1e-12)
                recent = (recent + [(target, fractions)])[-previous:]
            bar.update()
    bar.close()
    return out


# -- scoring ----------------------------------------------------------------------------------------
def iou(pred: torch.Tensor, truth: torch.Tensor, label: int = 1) -> float:
    """Intersection over union of the pixels labelled `label` in pred and truth (any equal shapes).

    Both empty counts as perfect agreement (1.0).
    """
    if pred.shape != truth.shape:
        raise VsaeError(f"prediction shape {tuple(pred.shape)} differs from truth {tuple(truth.shape)}")
    p, t = pred == label, truth == label
    union = int((p | t).sum())
    return 1.0 if union == 0 else int((p & t).sum()) / union


def mean_iou(preds: torch.Tensor, truths: torch.Tensor, skip_first: bool = True) -> float:
    """Mean IoU over frames (N, H, W) and over the object labels (non-zero values) of `truths`.

    Frame 0 is skipped by default: propagation is given its mask, so counting it would only inflate
    the score. Per frame, each object label's IoU is averaged; the result is the mean over frames.
    """
    if preds.shape != truths.shape or preds.ndim != 3:
        shapes = f"{tuple(preds.shape)} and {tuple(truths.shape)}"
        raise VsaeError(f"expected predictions and truths of one shape (N, H, W), got {shapes}")
    first = 1 if skip_first else 0
    if preds.shape[0] <= first:
        raise VsaeError("no frames to score (frame 0 is skipped)")
    labels = [v for v in torch.unique(truths).tolist() if v != 0]
    if not labels:
        raise VsaeError("truths hold no object labels to score")
    scores = [sum(iou(preds[i], truths[i], v) for v in labels) / len(labels) for i in range(first, preds.shape[0])]
    return sum(scores) / len(scores)


# -- known-answer video -----------------------------------------------------------------------------
# The object's checker colours (RGB): orange / dark orange, drifting towards violet / dark violet.
OBJECT_LIGHT = torch.tensor([0.95, 0.55, 0.10])
OBJECT_DARK = torch.tensor([0.70, 0.35, 0.10])
OBJECT_LIGHT_LATE = torch.tensor([0.75, 0.45, 0.95])
OBJECT_DARK_LATE = torch.tensor([0.45, 0.20, 0.60])


def _smooth_noise(gen: torch.Generator, channels: int, size: tuple[int, int], cell: int) -> torch.Tensor:
    """Smooth random field in [0, 1]: uniform noise on a coarse grid, bicubically upsampled."""
    h, w = size
    coarse = torch.rand(1, channels, h // cell + 2, w // cell + 2, generator=gen)
    up = F.interpolate(coarse, size=(h + 2 * cell, w + 2 * cell), mode="bicubic", align_corners=False)
    return up[0, :, cell : cell + h, cell : cell + w].clamp(0, 1)


def moving_shape_video(
    frames: int = 48, size: tuple[int, int] = (96, 128), seed: int = 0, drift: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A known-answer case: (video (N, 3, H, W) float in [0, 1], masks (N, H, W) int64, 1 = shape).

    Static background: smooth random colour noise in muted blue-green tones with stripes at a random angle.
    Object: an ellipse in warm orange with its own fine checker texture (moving with it), gliding on a
    smooth Lissajous path across the frame (at the defaults about 2.7 px per frame on average, at most 4)
    while its size breathes by +-10%. `drift` (0..1) makes the object's look change gradually: by the last
    frame its colours have moved `drift` of the way from orange to violet and its checker has turned
    drift * 60 degrees (0: the object looks the same in every frame; frame 0 is the same either way).
    The mask is exactly the pixels whose centre lies inside the ellipse, which are exactly the pixels
    painted with the object (hard edge, no anti-aliasing). Deterministic from seed.
    """
    if frames < 1 or min(size) < 16 or not 0 <= drift <= 1:
        got = f"{frames}, {size}, {drift}"
        raise VsaeError(f"moving_shape_video needs frames >= 1, H, W >= 16 and drift in 0..1, got {got}")
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    ys = torch.arange(h, dtype=torch.float32).view(h, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, w)
    # Background: blue-green noise (red channel low) plus stripes at a random angle and period.
    noise = _smooth_noise(gen, 3, size, cell=max(4, min(size) // 8))
    tint = torch.tensor([0.15, 0.45, 0.5]).view(3, 1, 1)
    angle = float(torch.rand(1, generator=gen)) * math.pi
    period = 9.0 + 6.0 * float(torch.rand(1, generator=gen))
    stripes = 0.5 + 0.5 * torch.sin(2 * math.pi * (xs * math.cos(angle) + ys * math.sin(angle)) / period)
    background = (tint + 0.3 * (noise - 0.5) + 0.12 * (stripes - 0.5)).clamp(0, 1)
    # Object path: Lissajous curve within the frame, random phases.
    phase = torch.rand(3, generator=gen) * 2 * math.pi
    ry0, rx0 = 0.17 * h, 0.15 * w
    video = torch.empty(frames, 3, h, w)
    masks = torch.zeros(frames, h, w, dtype=torch.int64)
    for t in range(frames):
        u = t / max(frames - 1, 1)
        cy = h / 2 + 0.25 * h * math.sin(2 * math.pi * u + float(phase[0]))
        cx = w / 2 + 0.28 * w * math.sin(math.pi * u + float(phase[1]))
        scale = 1.0 + 0.1 * math.sin(2 * math.pi * u + float(phase[2]))
        ry, rx = ry0 * scale, rx0 * scale
        dy, dx = ys - cy, xs - cx
        inside = (dy / ry) ** 2 + (dx / rx) ** 2 <= 1.0
        # Object texture: checker of 4-px squares in the object's own (turning) frame, light / dark.
        turn = math.radians(60) * drift * u
        ty, tx = dy * math.cos(turn) - dx * math.sin(turn), dy * math.sin(turn) + dx * math.cos(turn)
        checker = ((torch.floor(ty / 4) + torch.floor(tx / 4)) % 2).expand(h, w)
        light = torch.lerp(OBJECT_LIGHT, OBJECT_LIGHT_LATE, drift * u).view(3, 1, 1)
        dark = torch.lerp(OBJECT_DARK, OBJECT_DARK_LATE, drift * u).view(3, 1, 1)
        obj = torch.lerp(light, dark, checker)
        video[t] = torch.where(inside, obj, background)
        masks[t] = inside.to(torch.int64)
    return video, masks


# -- visualisation ----------------------------------------------------------------------------------
def mask_overlay(frame: torch.Tensor, mask: torch.Tensor, alpha: float = OVERLAY_ALPHA) -> torch.Tensor:
    """frame (3, H, W) in [0, 1] tinted with each object label's colour (PALETTE, cycling); 0 untouched."""
    if frame.ndim != 3 or frame.shape[0] != 3 or tuple(mask.shape) != tuple(frame.shape[-2:]):
        shapes = f"{tuple(frame.shape)} and {tuple(mask.shape)}"
        raise VsaeError(f"expected frame (3, H, W) and mask (H, W), got {shapes}")
    out = frame.float().clone()
    palette = torch.tensor(PALETTE, dtype=out.dtype, device=out.device)
    for value in torch.unique(mask).tolist():
        if value == 0:
            continue
        where = (mask == value).to(out.device)
        colour = palette[(int(value) - 1) % len(palette)].view(3, 1, 1)
        out = torch.where(where, (1 - alpha) * out + alpha * colour, out)
    return out.clamp_(0, 1)


# -- measurement ------------------------------------------------------------------------------------
def _measure(minutes: float = 1.0, drifts: tuple[float, ...] = (0.0, 1.0)) -> None:
    """Rerun the main rows of the table above: fit a width-32 model per case, print mean IoU (frames 1..)."""
    import time

    from ..model import model_config
    from ..train import FitOptions, fit

    torch.set_num_threads(1)  # as measured: one thread, so a busy second core does not stall the fit
    variants = {
        "defaults": {},
        "frame 0 only": {"previous": 0},
        "no bonus": {"first_bonus": 0.0},
        "radius 4": {"radius": 4},
    }
    for drift in drifts:
        video, masks = moving_shape_video(48, (96, 128), seed=0, drift=drift)
        start = time.perf_counter()
        result = fit(video, model_config("vsae-s16"), FitOptions(minutes=minutes, seed=0, progress=False))
        codec = Codec(result.model, result.normalization)
        copied = mean_iou(masks[:1].expand_as(masks), masks)
        print(f"drift {drift}: fit {time.perf_counter() - start:.0f} s, {result.epochs:.0f} epochs, "
              f"PSNR {result.final_psnr:.2f} dB; copy frame 0: {copied:.3f}", flush=True)
        for name, kwargs in variants.items():
            start = time.perf_counter()
            pred = propagate_mask(codec, video, masks[0], **kwargs)
            print(f"  {name:14s} mean IoU {mean_iou(pred, masks):.3f}, last frame {iou(pred[-1], masks[-1]):.3f} "
                  f"({time.perf_counter() - start:.1f} s)", flush=True)


if __name__ == "__main__":
    _measure()
