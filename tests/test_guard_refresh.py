"""The never-worse guard (codec/guard.py) and live model updates (codec/refresh.py, Reconstructor switches)."""

from __future__ import annotations

import copy
import hashlib
import math

import msgpack
import pytest
import torch
import zstandard

from codec.errors import VsaeError
from codec.guard import BASELINE, MODE_WEIGHTS, VSAE, FrameModes, apply_modes, choose_modes, tile_grid
from codec.ops import Codec
from codec.pipeline import Reconstructor
from codec.refresh import (
    MIN_UPDATE_GAIN_DB,
    UPDATE_MAGIC,
    Refresher,
    UpdateError,
    make_update,
    read_update,
    restamp,
    update_gain_db,
    weights_digest,
)
from codec.video import downscale


def mse(a, b):
    return float((a - b).pow(2).mean())


# -- guard --------------------------------------------------------------------------------------------
def test_guard_picks_the_better_rebuild_per_frame_and_per_tile():
    torch.manual_seed(0)
    original = torch.rand(3, 64, 128)
    good_left = original.clone()
    good_left[..., 64:] = torch.rand(3, 64, 64)  # "vsae": right on the left half, noise on the right
    good_right = original.clone()
    good_right[..., :64] = torch.rand(3, 64, 64)  # "baseline": the other way round
    good_right[..., 64:96] = torch.rand(3, 64, 32)  # ... and worse overall
    frame_only = choose_modes(good_left, good_right, original, max_tiles=0)
    errors = [mse((w * good_left + (1 - w) * good_right).clamp(0, 1), original) for w in MODE_WEIGHTS]
    assert frame_only.mode == errors.index(min(errors)) and frame_only.tiles == ()
    assert errors[frame_only.mode] < errors[VSAE] < errors[BASELINE]
    tiled = choose_modes(good_left, good_right, original, max_tiles=4)
    cols = tile_grid((64, 128))[1]
    # The tiles where the baseline is exact (column 3, rows 0-1) are switched to it, where vsae is exact to vsae.
    assert {r * cols + 3 for r in range(2)} <= {t for t, m in tiled.tiles if m == BASELINE}
    assert all(m == VSAE for t, m in tiled.tiles if t % cols < 2)
    shown = apply_modes(good_left, good_right, tiled)
    assert mse(shown, original) < mse(apply_modes(good_left, good_right, frame_only), original) < mse(good_right, original)


@pytest.mark.parametrize("seed", range(5))
def test_guard_is_never_worse_than_either_rebuild(seed):
    g = torch.Generator().manual_seed(seed)
    original = torch.rand(3, 48, 80, generator=g)
    vsae = (original + 0.2 * torch.randn(3, 48, 80, generator=g)).clamp(0, 1)
    base = (original + 0.2 * torch.randn(3, 48, 80, generator=g)).clamp(0, 1)
    for tiles in (0, 4):
        shown = apply_modes(vsae, base, choose_modes(vsae, base, original, tiles))
        assert mse(shown, original) <= min(mse(vsae, original), mse(base, original)) + 1e-9


def test_guard_modes_round_trip_and_malformed_refused():
    for tiles in (20, 300):
        modes = FrameModes(3, ((1, 0), (17, 4)))
        data = modes.to_bytes(tiles) + b"next"
        parsed, used = FrameModes.from_bytes(data, tiles)
        assert parsed == modes and data[used:] == b"next"
    for bad in (b"", bytes([len(MODE_WEIGHTS)]), bytes([0 | (1 << 3)]), bytes([0 | (1 << 3), 25, 0]), bytes([0 | (1 << 3), 1, 9])):
        with pytest.raises(VsaeError, match="guard"):
            FrameModes.from_bytes(bad, 20)


# -- updates ----------------------------------------------------------------------------------------
@pytest.fixture()
def trained(tiny_codec, carphone):
    """A receiver model and a refresher that trained a few steps on frames it has not seen."""
    frames = carphone[:8]
    inputs = torch.nn.functional.interpolate(downscale(frames, 4), size=frames.shape[-2:], mode="bilinear")
    refresher = Refresher(tiny_codec.model, tiny_codec.normalization, "sparse-grad", lr=1e-3)
    refresher.train(inputs, frames, 6)
    return copy.deepcopy(tiny_codec.model), refresher


@pytest.mark.parametrize("form", ["sparse-grad", "sparse-delta", "affine", "full"])
def test_update_round_trip_matches_the_senders_mirror(trained, form):
    receiver, refresher = trained
    made = make_update(receiver, refresher.model, form, 400_000, 1, 10, refresher.grad_magnitude)
    assert made is not None
    data, mirrored, info = made
    assert len(data) <= 400_000 and info.apply_from == 10 and info.version == 1 and info.weights > 0
    updated, read = read_update(data, receiver, 0)
    assert weights_digest(updated) == weights_digest(mirrored) != weights_digest(receiver)
    assert read.weights == info.weights
    # The update moves the receiver towards the trained weights.
    def dist(m):
        return sum(float((a - b).detach().pow(2).sum()) for a, b in zip(m.parameters(), refresher.model.parameters()))
    assert dist(updated) < dist(receiver)


def test_sparse_update_fits_its_budget(trained):
    receiver, refresher = trained
    sizes = {}
    for budget in (1500, 4000):
        data, _, info = make_update(receiver, refresher.model, "sparse-delta", budget, 1, 0)
        assert len(data) <= budget and info.weights > budget // 8
        sizes[budget] = info.weights
    assert sizes[4000] > 2 * sizes[1500]  # a bigger budget buys more weights
    assert make_update(receiver, refresher.model, "full", 4000, 1, 0) is None  # a full delta does not fit


def _tamper(data: bytes, edit) -> bytes:
    """Edit the decoded payload and re-wrap it with a valid checksum: only the deeper checks can catch it.
    Payload: [wire version, version, apply_from, form, base, result, [[number, shape, scale, gaps, values]]]."""
    inner = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(data[len(UPDATE_MAGIC) + 32 :]), raw=False)
    edit(inner)
    payload = zstandard.ZstdCompressor().compress(msgpack.packb(inner, use_bin_type=True))
    return UPDATE_MAGIC + hashlib.sha256(payload).digest() + payload


def _wrong_shape(inner):
    inner[6][0][1] = [1, 2, 3]


def _nan_scale(inner):
    inner[6][0][2] = math.nan


def _index_out_of_range(inner):
    entry = inner[6][0]
    entry[3] = entry[3][:-4] + (2**31).to_bytes(4, "little")


def _repeated_tensor(inner):
    inner[6].append(inner[6][0])


def _unknown_tensor(inner):
    inner[6][0][0] = 9999


def _other_result(inner):
    inner[5] = bytes(32)


def _other_base(inner):
    inner[4] = b"\xff" * 32


def _next_version(inner):
    inner[1] = 5


@pytest.mark.parametrize("edit", [_wrong_shape, _nan_scale, _index_out_of_range, _repeated_tensor, _unknown_tensor,
                                  _other_result, _other_base, _next_version])
def test_hostile_update_refused_and_model_kept(trained, edit):
    receiver, refresher = trained
    before = weights_digest(receiver)
    data = make_update(receiver, refresher.model, "sparse-delta", 4000, 1, 0)[0]
    with pytest.raises(UpdateError):
        read_update(_tamper(data, edit), receiver, 0)
    assert weights_digest(receiver) == before


def test_corrupt_or_oversized_update_refused(trained):
    receiver, refresher = trained
    data = make_update(receiver, refresher.model, "sparse-delta", 4000, 1, 0)[0]
    for bad in (b"", b"junk" * 10, data[:-3], data[:20] + bytes([data[20] ^ 1]) + data[21:], UPDATE_MAGIC + b"\x00" * (9 << 20)):
        with pytest.raises(UpdateError):
            read_update(bad, receiver, 0)


def test_update_applied_at_frame_i_changes_frames_from_i_only(trained, tiny_codec, carphone):
    receiver, refresher = trained
    data = make_update(receiver, refresher.model, "full", 10_000_000, 1, 8)[0]
    updated, info = read_update(data, receiver, 0)
    frames = downscale(carphone[:17], 4)
    size = tuple(carphone.shape[-2:])

    def run(switch: bool):
        codec = Codec(copy.deepcopy(receiver), tiny_codec.normalization)
        rec = Reconstructor(codec, size, temporal=2)
        if switch:
            rec.switch_model_at(info.apply_from, lambda: codec.model.load_state_dict(updated.state_dict()))
        out = [f for i in range(0, 17, 2) for f in rec.push(i, frames[i])]
        return out

    plain, switched = run(False), run(True)
    assert [f.index for f in plain] == [f.index for f in switched] == list(range(17))
    for a, b in zip(plain, switched):
        assert b.model_version == (1 if b.index >= 8 else 0)
        assert torch.equal(a.frame, b.frame) == (b.index < 8)


def test_update_gain_check_tells_a_helpful_update_from_a_harmful_one(tiny_codec, carphone):
    """The sender's check before spending the model budget: the full fine-tune gains on the frames it trained
    on; the same delta reversed (a model moved the wrong way) loses."""
    frames = carphone[:8]
    inputs = torch.nn.functional.interpolate(downscale(frames, 4), size=frames.shape[-2:], mode="bilinear")
    receiver = copy.deepcopy(tiny_codec.model)
    refresher = Refresher(tiny_codec.model, tiny_codec.normalization, "full", lr=1e-3)
    refresher.train(inputs, frames, 20)
    assert update_gain_db(receiver, refresher.model, tiny_codec.normalization, inputs, frames) > MIN_UPDATE_GAIN_DB
    backwards = copy.deepcopy(receiver)
    with torch.no_grad():
        for p, before, after in zip(backwards.parameters(), receiver.parameters(), refresher.model.parameters()):
            p.copy_(before - 3 * (after - before))
    assert update_gain_db(receiver, backwards, tiny_codec.normalization, inputs, frames) < 0
    assert update_gain_db(receiver, receiver, tiny_codec.normalization, inputs, frames) == pytest.approx(0, abs=1e-9)


def test_restamped_update_applies_from_the_new_frame_and_stays_verifiable(trained):
    receiver, refresher = trained
    data, mirrored, _ = make_update(receiver, refresher.model, "sparse-grad", 4000, 1, 0, refresher.grad_magnitude)
    moved = restamp(data, 123)
    updated, info = read_update(moved, receiver, 0)
    assert info.apply_from == 123 and weights_digest(updated) == weights_digest(mirrored)
    assert read_update(data, receiver, 0)[1].apply_from == 0
