import pytest
import torch

from codec.ops import Codec, Key, upsample
from codec.pipeline import Reconstructor
from codec.video import downscale

HW = (144, 176)


@pytest.fixture
def encoder_calls(tiny_codec):
    """Counts forward calls of the tiny codec's encoder (one per batch chunk)."""
    calls = []
    handle = tiny_codec.model.encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    yield calls
    handle.remove()


def test_encode_decode_shapes(tiny_codec, carphone):
    latent, size = tiny_codec.encode(carphone[:3])
    assert size == HW
    assert latent.shape == (3, tiny_codec.model.config.latent_channels, 144 // 8, 176 // 8)
    out = tiny_codec.decode(latent, size)
    assert out.shape == (3, 3, *HW)
    assert 0 <= out.min() and out.max() <= 1


def test_encode_odd_size(tiny_codec):
    latent, size = tiny_codec.encode(torch.rand(1, 3, 37, 53))
    assert size == (37, 53) and latent.shape[-2:] == (5, 7)
    assert tiny_codec.decode(latent, size).shape == (1, 3, 37, 53)


@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_project_shape_and_range(tiny_codec, carphone, iterations):
    proj = tiny_codec.project(carphone[:2], iterations)
    assert proj.frames.shape == (2, 3, *HW)
    assert proj.size == HW
    assert proj.frames.min() >= 0 and proj.frames.max() <= 1
    # The returned latent is the one the returned frames decode from.
    assert torch.allclose(tiny_codec.decode(proj.latent, proj.size), proj.frames, atol=1e-6)


def test_project_twice_equals_two_iterations(tiny_codec, carphone):
    one = tiny_codec.project(carphone[:1], 1).frames
    assert torch.allclose(tiny_codec.project(one, 1).frames, tiny_codec.project(carphone[:1], 2).frames, atol=1e-5)


@pytest.mark.parametrize("iterations", [0, -1])
def test_project_rejects_iterations_below_one(tiny_codec, carphone, iterations):
    with pytest.raises(ValueError):
        tiny_codec.project(carphone[:1], iterations)


def test_project_batches_beyond_batch_size(tiny_codec):
    x = torch.rand(20, 3, 16, 24)  # more than ops.BATCH frames
    batched = tiny_codec.project(x).frames
    single = torch.cat([tiny_codec.project(f[None]).frames for f in x])
    assert torch.allclose(batched, single, atol=1e-5)


def test_super_resolve_shape(tiny_codec, carphone):
    low = downscale(carphone[:2], 4)
    proj = tiny_codec.super_resolve(low, HW)
    assert proj.frames.shape == (2, 3, *HW)
    # Equivalent to projecting the bilinear upsample.
    assert torch.allclose(proj.frames, tiny_codec.project(upsample(low, HW)).frames, atol=1e-6)


def test_upsample():
    low = torch.rand(1, 3, 9, 11)
    assert upsample(low, (9, 11)) is low
    up = upsample(low, (36, 44), "bicubic")
    assert up.shape == (1, 3, 36, 44) and up.min() >= 0 and up.max() <= 1


def test_interpolate_endpoints(tiny_codec, carphone):
    za, size = tiny_codec.encode(carphone[0:1])
    zb, _ = tiny_codec.encode(carphone[10:11])
    out = tiny_codec.interpolate(za, zb, torch.tensor([0.0, 0.5, 1.0]), size)
    assert out.shape == (3, 3, *HW)
    assert torch.allclose(out[0], tiny_codec.decode(za, size)[0], atol=1e-6)
    assert torch.allclose(out[2], tiny_codec.decode(zb, size)[0], atol=1e-6)
    mid = tiny_codec.decode(0.5 * za + 0.5 * zb, size)[0]
    assert torch.allclose(out[1], mid, atol=1e-6)
    assert not torch.allclose(out[0], out[2], atol=1e-3)


def test_key_full_size(tiny_codec, carphone):
    frame = carphone[3:4]
    key = tiny_codec.key(frame, HW)
    assert isinstance(key, Key) and key.size == HW
    assert torch.equal(key.frame, frame)  # shown as received
    latent, _ = tiny_codec.encode(frame)
    assert torch.allclose(key.latent, latent, atol=1e-6)
    assert torch.allclose(key.decoded, tiny_codec.decode(latent, HW), atol=1e-6)
    assert not torch.allclose(key.decoded, key.frame, atol=1e-2)  # untrained: g(f(x)) != x


def test_key_low_res(tiny_codec, carphone):
    low = downscale(carphone[3:4], 4)
    key = tiny_codec.key(low, HW)
    assert key.frame.shape == (1, 3, *HW)
    assert torch.equal(key.frame, key.decoded)
    assert torch.allclose(key.frame, tiny_codec.super_resolve(low, HW).frames, atol=1e-6)
    assert torch.allclose(tiny_codec.decode(key.latent, HW), key.frame, atol=1e-6)


@pytest.mark.parametrize("count", [0, 1, 3])
def test_in_between_count(tiny_codec, carphone, count):
    a = tiny_codec.key(carphone[0:1], HW)
    b = tiny_codec.key(carphone[4:5], HW)
    for method in ("latent", "residual"):
        out = tiny_codec.in_between(a, b, count, method)
        assert out.shape == (count, 3, *HW)
        if count:
            assert out.min() >= 0 and out.max() <= 1


def test_motion_in_betweens_across_a_long_gap(tiny_codec, carphone):
    """A concealed outage: 33 frames between two keys (positions i/34, finer than the motion grid)."""
    crop, size = carphone[:, :, :64, :96], (64, 96)
    a = tiny_codec.key(downscale(crop[0:1], 4), size)
    b = tiny_codec.key(downscale(crop[20:21], 4), size)
    out = tiny_codec.in_between(a, b, 33, "motion")
    assert out.shape == (33, 3, *size) and out.min() >= 0 and out.max() <= 1
    # In order: each in-between is closer to key a the earlier it is.
    to_a = [float((f - a.frame[0]).abs().mean()) for f in out]
    assert to_a[0] < to_a[16] < to_a[-1]


def test_in_between_latent_is_eq8(tiny_codec, carphone):
    a = tiny_codec.key(carphone[0:1], HW)
    b = tiny_codec.key(carphone[4:5], HW)
    out = tiny_codec.in_between(a, b, 3, "latent")
    expected = tiny_codec.interpolate(a.latent, b.latent, torch.tensor([0.25, 0.5, 0.75]), HW)
    assert torch.allclose(out, expected, atol=1e-6)


def test_in_between_residual_from_full_size_keys(tiny_codec, carphone):
    a = tiny_codec.key(carphone[0:1], HW)
    b = tiny_codec.key(carphone[4:5], HW)
    alphas = torch.tensor([0.25, 0.5, 0.75]).view(-1, 1, 1, 1)
    predicted = tiny_codec.in_between(a, b, 3, "latent")
    expected = ((1 - alphas) * a.frame + alphas * b.frame + predicted - ((1 - alphas) * a.decoded + alphas * b.decoded)).clamp(0, 1)
    out = tiny_codec.in_between(a, b, 3, "residual")
    assert torch.allclose(out, expected, atol=1e-5)
    assert not torch.allclose(out, predicted, atol=1e-3)


def test_in_between_residual_equals_latent_for_low_res_keys(tiny_codec, carphone):
    low = downscale(carphone[[0, 4]], 4)
    a, b = tiny_codec.key(low[0:1], HW), tiny_codec.key(low[1:2], HW)
    residual = tiny_codec.in_between(a, b, 3, "residual")
    latent = tiny_codec.in_between(a, b, 3, "latent")
    assert torch.allclose(residual, latent, atol=1e-5)


def test_in_between_unknown_method(tiny_codec, carphone):
    a = tiny_codec.key(carphone[0:1], HW)
    with pytest.raises(ValueError):
        tiny_codec.in_between(a, a, 1, "nope")


@pytest.mark.parametrize("low_res", [True, False])
def test_latent_computed_once_per_key(tiny_codec, carphone, encoder_calls, low_res):
    frames = downscale(carphone[:9], 4) if low_res else carphone[:9]
    rec = Reconstructor(tiny_codec, HW, temporal=4)
    pushes = 0
    for i in range(0, 9, 4):
        before = len(encoder_calls)
        out = rec.push(i, frames[i])
        pushes += 1
        assert len(encoder_calls) - before == 1, "each received frame is encoded exactly once"
        assert encoder_calls[-1] == 1
    assert len(encoder_calls) == pushes


def test_codec_is_eval_mode(tiny_codec):
    assert not tiny_codec.model.training
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(tiny_codec.project(x).frames, tiny_codec.project(x).frames)


# -- motion-compensated in-betweens ---------------------------------------------------------------
def _moving_square(shift: int) -> torch.Tensor:
    """A 12x12 textured square on a dark, slightly textured background, moved `shift` px to the right."""
    g = torch.Generator().manual_seed(7)
    background = 0.1 + 0.05 * torch.rand(1, 3, 40, 48, generator=g)
    square = 0.4 + 0.5 * torch.rand(1, 3, 12, 12, generator=g)
    frame = background.clone()
    frame[..., 14:26, 10 + shift : 22 + shift] = square
    return frame


def test_motion_interpolate_recovers_a_known_motion():
    """A square moving 2 px (3 px) between keys is rebuilt at its in-between position, sharp, when the
    guide carries the motion, and by key-to-key matching alone; the pixel blend ghosts it instead."""
    from codec.ops import motion_interpolate

    a, b, truth = _moving_square(0), _moving_square(2), _moving_square(1)
    blend = 0.5 * a + 0.5 * b
    err_blend = (blend - truth).abs().mean().item()
    guided = motion_interpolate(a, b, 0.5, guide=truth)
    bilateral = motion_interpolate(a, b, 0.5, guide=blend, guide_weight=0.0)
    assert guided.shape == a.shape
    assert (guided - truth).abs().mean().item() < 0.2 * err_blend
    assert (bilateral - truth).abs().mean().item() < 0.2 * err_blend
    # Uneven spacing: one third of the way from a to b.
    a, b, truth = _moving_square(0), _moving_square(3), _moving_square(1)
    third = motion_interpolate(a, b, 1 / 3, guide=truth)
    assert (third - truth).abs().mean().item() < 0.2 * ((2 / 3) * a + (1 / 3) * b - truth).abs().mean().item()


def test_motion_interpolate_static_scene_equals_the_keys():
    from codec.ops import motion_interpolate

    a = _moving_square(0)
    out = motion_interpolate(a, a.clone(), 0.5, guide=a)
    assert torch.allclose(out, a, atol=1e-5)


def test_motion_method_endpoints_and_count(tiny_codec, carphone):
    size = tuple(carphone.shape[-2:])
    ka, kb = tiny_codec.key(carphone[0:1], size), tiny_codec.key(carphone[4:5], size)
    out = tiny_codec.in_between(ka, kb, 3, "motion")
    assert out.shape == (3, 3, *size)
    assert out.min() >= 0 and out.max() <= 1
