"""Pixel codes (encoder hypercolumns), correspondences and mask propagation on a known-answer video."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from codec.errors import VsaeError
from codec.model import model_config
from codec.ops import Codec
from codec.apps.pixelcodes import (
    correspondences,
    feature_size,
    hypercolumns,
    iou,
    mask_overlay,
    mean_iou,
    moving_shape_video,
    propagate_mask,
)
from codec.train import FitOptions, fit

# A small known case and a tiny model fitted to it once per module (a few seconds single-threaded).
FRAMES, SIZE = 24, (64, 96)
TINY_WIDTH = 8
TINY_EPOCHS = 40


@pytest.fixture(scope="module")
def shape_video() -> tuple[torch.Tensor, torch.Tensor]:
    return moving_shape_video(FRAMES, SIZE, seed=0)


def _fit_tiny(video: torch.Tensor) -> Codec:
    options = FitOptions(epochs=TINY_EPOCHS, minutes=None, seed=0, progress=False, train_precision="f32")  # f32 on every CPU: auto picks bf16 where it is native, and this margin was tuned in f32
    result = fit(video, model_config("vsae-s16", width=TINY_WIDTH), options)
    return Codec(result.model, result.normalization)


@pytest.fixture(scope="module")
def shape_codec(shape_video) -> Codec:
    return _fit_tiny(shape_video[0])


def _channels(codec: Codec) -> int:
    return sum(TINY_WIDTH * m for m in codec.model.config.multipliers)


# -- hypercolumns -----------------------------------------------------------------------------------
def test_hypercolumns_shape_unit_norm_and_determinism(shape_codec, shape_video):
    video, _ = shape_video
    feats = hypercolumns(shape_codec, video[:3])
    assert feats.shape == (3, _channels(shape_codec), SIZE[0] // 2, SIZE[1] // 2)
    assert torch.allclose(feats.norm(dim=1), torch.ones(()), atol=1e-5)
    assert torch.equal(feats, hypercolumns(shape_codec, video[:3]))
    # A frame's codes do not depend on the batch it came in.
    assert torch.allclose(hypercolumns(shape_codec, video[1:2])[0], feats[1], atol=1e-5)
    # Codes differ between the object and the background: not a constant map.
    assert feats[0].flatten(1).std(dim=1).mean() > 0.01


@pytest.mark.parametrize("size, stride", [((50, 70), 3), ((37, 53), 2), ((32, 48), 1), ((33, 47), 4)])
def test_hypercolumns_grid_rounds_up(shape_codec, size, stride):
    feats = hypercolumns(shape_codec, torch.rand(1, 3, *size), stride=stride)
    assert feats.shape[-2:] == feature_size(size, stride) == (-(-size[0] // stride), -(-size[1] // stride))


@pytest.mark.parametrize("size", [(51, 69), (48, 96)])
def test_hypercolumn_cells_sit_on_their_block_centres(shape_codec, shape_video, size):
    """At stride 3, cell (i, j) is centred on pixel (3i + 1, 3j + 1): the stride-1 code of that pixel."""
    frame = shape_video[0][7:8, :, : size[0], : size[1]]
    coarse = hypercolumns(shape_codec, frame, stride=3)
    fine = hypercolumns(shape_codec, frame, stride=1)
    assert torch.allclose(coarse, fine[..., 1::3, 1::3], atol=1e-5)


@pytest.mark.parametrize("size, stride", [((90, 118), 1), ((88, 120), 2)])
def test_hypercolumns_crop_matches_explicit_padding(shape_codec, size, stride):
    """A frame that is not a multiple of 16 is padded (replicate, split evenly) inside: its codes must be
    exactly the codes of the explicitly padded 96x128 frame at the frame's own pixels."""
    frame = moving_shape_video(2, (96, 128), seed=3)[0][1:, :, : size[0], : size[1]]
    ph, pw = 96 - size[0], 128 - size[1]
    padded = F.pad(frame, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")
    feats = hypercolumns(shape_codec, frame, stride=stride)
    full = hypercolumns(shape_codec, padded, stride=stride)
    top, left = ph // 2 // stride, pw // 2 // stride
    h, w = feats.shape[-2:]
    assert torch.allclose(feats, full[..., top : top + h, left : left + w], atol=1e-5)
    # ... and not those of the same region shifted by a pixel (the test can tell).
    assert not torch.allclose(feats, full[..., top + 1 : top + 1 + h, left : left + w], atol=1e-3)


def test_hypercolumns_bad_input(shape_codec):
    with pytest.raises(VsaeError, match="expected frames"):
        hypercolumns(shape_codec, torch.rand(3, 32, 32))
    with pytest.raises(VsaeError, match="stride"):
        hypercolumns(shape_codec, torch.rand(1, 3, 32, 32), stride=0)


# -- correspondences --------------------------------------------------------------------------------
def test_correspondences_of_a_frame_with_itself(shape_codec, shape_video):
    video, _ = shape_video
    feats = hypercolumns(shape_codec, video[5:6])
    index, sim = correspondences(feats, feats, chunk=100)
    h, w = feats.shape[-2:]
    assert index.shape == sim.shape == (h, w) and index.dtype == torch.int64
    assert torch.allclose(sim, torch.ones(()), atol=1e-4)
    flat = feats[0].flatten(1)
    own = torch.arange(h * w).view(h, w)
    # Each pixel maps to itself, or to a pixel whose code is identical.
    same = (index == own) | torch.isclose((flat[:, index.flatten()] * flat).sum(0), torch.ones(())).view(h, w)
    assert same.all()
    assert (index == own).float().mean() > 0.9


@pytest.mark.parametrize(
    "shift, bar",
    [
        # A shift by whole 16-px steps keeps every encoder stage on the same sampling grid (measured 0.97) ...
        ((16, 32), 0.9),
        # ... any other shift changes the deep stages' sampling, yet most cells land within one cell (0.90).
        ((8, 12), 0.8),
    ],
)
def test_correspondences_recover_a_shift(shape_codec, shift, bar):
    dy, dx = shift
    big = moving_shape_video(1, (128, 160), seed=1)[0]
    a = big[..., 32:96, 32:128]
    b = big[..., 32 - dy : 96 - dy, 32 - dx : 128 - dx]  # b(y, x) = a(y - dy, x - dx)
    fa, fb = hypercolumns(shape_codec, a), hypercolumns(shape_codec, b)
    index, sim = correspondences(fa, fb)
    h, w = fb.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ey, ex = ys - dy // 2, xs - dx // 2  # where each cell of b should land in a (stride 2)
    # Cells whose receptive fields reach a crop's border see different content there: scored away from
    # both crops' borders (4 cells = 8 px; margin 0 scores ~0.75 either way).
    m = 4
    valid = (ey >= m) & (ex >= m) & (ey < h - m) & (ex < w - m) & (ys >= m) & (xs >= m) & (ys < h - m) & (xs < w - m)
    assert valid.sum() > 300
    found_y, found_x = index // fa.shape[-1], index % fa.shape[-1]
    close = ((found_y - ey).abs() <= 1) & ((found_x - ex).abs() <= 1)
    assert close[valid].float().mean() > bar
    assert sim[valid].mean() > 0.9
    # The identity mapping would score near zero: the test can tell a shift from none.
    assert (((found_y - ys).abs() <= 1) & ((found_x - xs).abs() <= 1))[valid].float().mean() < 0.2


def test_correspondences_bad_input(shape_codec):
    with pytest.raises(VsaeError, match="one frame"):
        correspondences(torch.rand(2, 4, 3, 3), torch.rand(1, 4, 3, 3))
    with pytest.raises(VsaeError, match="depth"):
        correspondences(torch.rand(1, 4, 3, 3), torch.rand(1, 5, 3, 3))


# -- mask propagation -------------------------------------------------------------------------------
def test_propagate_mask_beats_copying_the_first_mask(shape_codec, shape_video):
    video, masks = shape_video
    pred = propagate_mask(shape_codec, video, masks[0])
    assert pred.shape == masks.shape and pred.dtype == torch.int64
    assert torch.equal(pred[0], masks[0])
    assert set(torch.unique(pred).tolist()) <= {0, 1}
    copied = mean_iou(masks[:1].expand_as(masks), masks)
    score = mean_iou(pred, masks)
    assert score > 0.8, score
    assert score > copied + 0.5, (score, copied)
    # The last frame too: the shape is tracked all the way, not only near frame 0.
    assert iou(pred[-1], masks[-1]) > 0.7


def test_propagate_mask_follows_an_object_whose_look_drifts(shape_codec):
    """Frame 0 alone loses an object that changes colour and texture; the previous frame keeps it."""
    video, masks = moving_shape_video(FRAMES, SIZE, seed=0, drift=1.0)
    codec = _fit_tiny(video)
    with_previous = propagate_mask(codec, video, masks[0])
    first_only = propagate_mask(codec, video, masks[0], previous=0)
    assert mean_iou(with_previous, masks) > mean_iou(first_only, masks) + 0.05
    assert iou(with_previous[-1], masks[-1]) > 0.6 > iou(first_only[-1], masks[-1]) + 0.2


def test_propagate_mask_static_video_keeps_several_labels(shape_codec, shape_video):
    """Non-contiguous labels (0, 3, 7) come back as themselves; a still video keeps its mask."""
    video, masks = shape_video
    still = video[:1].repeat(3, 1, 1, 1)
    mask = masks[0].clone()
    xs = torch.arange(SIZE[1]).view(1, -1).expand(SIZE)
    centre = int(xs[mask == 1].float().mean())
    mask[(mask == 1) & (xs < centre)] = 3
    mask[(mask == 1) & (xs >= centre)] = 7
    pred = propagate_mask(shape_codec, still, mask, radius=4)
    assert set(torch.unique(pred).tolist()) <= {0, 3, 7}
    for label in (3, 7):
        assert iou(pred[2], mask, label) > 0.85


@pytest.mark.parametrize(
    "mask, message",
    [
        (torch.zeros(SIZE[0], SIZE[1] + 1, dtype=torch.int64), "does not match the frame size"),
        (torch.ones(SIZE, dtype=torch.float32), "integer labels"),
        (torch.ones(SIZE, dtype=torch.bool), "integer labels"),
        (torch.zeros(SIZE, dtype=torch.int64), "empty"),
        (torch.full(SIZE, -1, dtype=torch.int64), ">= 0"),
        ([[0, 1]], "torch tensor"),
    ],
)
def test_propagate_mask_bad_masks(shape_codec, shape_video, mask, message):
    video, _ = shape_video
    with pytest.raises(VsaeError, match=message):
        propagate_mask(shape_codec, video[:2], mask)


def test_propagate_mask_bad_settings(shape_codec, shape_video):
    video, masks = shape_video
    with pytest.raises(VsaeError, match="expected frames"):
        propagate_mask(shape_codec, video[0], masks[0])
    with pytest.raises(VsaeError, match="k must"):
        propagate_mask(shape_codec, video[:2], masks[0], k=0)
    with pytest.raises(VsaeError, match="previous"):
        propagate_mask(shape_codec, video[:2], masks[0], previous=-1)
    with pytest.raises(VsaeError, match="first_bonus"):
        propagate_mask(shape_codec, video[:2], masks[0], first_bonus=-0.1)
    with pytest.raises(VsaeError, match="temperature"):
        propagate_mask(shape_codec, video[:2], masks[0], temperature=0)


# -- scores, known case, overlay --------------------------------------------------------------------
def test_iou_and_mean_iou_values():
    truth = torch.tensor([[[0, 1, 1, 0]], [[0, 1, 1, 0]], [[0, 1, 1, 0]]])
    pred = torch.tensor([[[0, 1, 1, 0]], [[0, 0, 1, 1]], [[0, 0, 0, 0]]])
    assert iou(pred[1], truth[1]) == pytest.approx(1 / 3)
    assert iou(pred[2], truth[2]) == 0.0
    assert iou(torch.zeros(3), torch.zeros(3)) == 1.0
    # Frame 0 (given) is skipped by default.
    assert mean_iou(pred, truth) == pytest.approx((1 / 3 + 0) / 2)
    assert mean_iou(pred, truth, skip_first=False) == pytest.approx((1 + 1 / 3 + 0) / 3)
    with pytest.raises(VsaeError):
        mean_iou(pred[:1], truth[:1])


def test_moving_shape_video_masks_match_the_pixels():
    video, masks = moving_shape_video(12, (64, 80), seed=2)
    assert video.shape == (12, 3, 64, 80) and masks.shape == (12, 64, 80) and masks.dtype == torch.int64
    assert 0 <= video.min() and video.max() <= 1
    assert set(torch.unique(masks).tolist()) == {0, 1}
    a, b = 0, 11
    # The background is static: outside both shapes the two frames are identical ...
    outside = (masks[a] == 0) & (masks[b] == 0)
    assert torch.equal(video[a][:, outside], video[b][:, outside])
    # ... and where the shape covers only one frame, that frame differs clearly from the other.
    only_a = (masks[a] == 1) & (masks[b] == 0)
    assert only_a.sum() > 50
    assert ((video[a] - video[b]).abs().sum(0)[only_a] > 0.2).float().mean() > 0.95
    # The shape moves, and the video is deterministic from its seed.
    assert not torch.equal(masks[a], masks[b])
    again = moving_shape_video(12, (64, 80), seed=2)
    assert torch.equal(again[0], video) and torch.equal(again[1], masks)
    assert not torch.equal(moving_shape_video(12, (64, 80), seed=3)[0], video)


def test_moving_shape_video_drift_changes_only_the_object():
    video, masks = moving_shape_video(10, (48, 64), seed=0)
    drifted, masks_d = moving_shape_video(10, (48, 64), seed=0, drift=1.0)
    assert torch.equal(masks, masks_d) and torch.equal(video[0], drifted[0])
    assert torch.equal(video[-1][:, masks[-1] == 0], drifted[-1][:, masks[-1] == 0])
    assert (video[-1] - drifted[-1]).abs().sum(0)[masks[-1] == 1].mean() > 0.3


def test_mask_overlay_tints_only_labelled_pixels():
    frame = torch.full((3, 8, 8), 0.5)
    mask = torch.zeros(8, 8, dtype=torch.int64)
    mask[2:4, 2:4] = 1
    mask[5:, 5:] = 2
    out = mask_overlay(frame, mask)
    assert out.shape == frame.shape
    assert torch.equal(out[:, mask == 0], frame[:, mask == 0])
    assert not torch.allclose(out[:, 2, 2], frame[:, 2, 2])
    assert not torch.allclose(out[:, 2, 2], out[:, 6, 6])
    with pytest.raises(VsaeError):
        mask_overlay(frame, mask[:4])
