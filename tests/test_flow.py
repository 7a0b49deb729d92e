"""The `flow` temporal method: DIS optical flow between the keys, both keys warped to the in-between time."""

import pytest
import torch
import torch.nn.functional as F

from codec.ops import FLOW_PRESETS, Codec, FlowOptions, backward_warp, flow_interpolate, optical_flows
from codec.pipeline import Reconstructor
from codec.video import downscale

H, W = 96, 128


def _canvas(width: int = W + 16, seed: int = 3) -> torch.Tensor:
    """A smooth random colour texture (1, 3, H, width): gradients everywhere, nothing periodic."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, H // 8, width // 8, generator=g)
    return F.interpolate(coarse, size=(H, width), mode="bicubic", align_corners=False).clamp(0, 1)


def _shifted(canvas: torch.Tensor, dx: int) -> torch.Tensor:
    """The window of the canvas `dx` px further left: the content moves dx px to the right."""
    return canvas[..., 16 - dx : 16 - dx + W].contiguous()


def _mae(x: torch.Tensor, y: torch.Tensor) -> float:
    return (x - y).abs().mean().item()


@pytest.mark.parametrize("preset", sorted(FLOW_PRESETS))
def test_flow_of_a_translation(preset):
    canvas = _canvas()
    a, b = _shifted(canvas, 0), _shifted(canvas, 4)
    flow_ab, flow_ba = optical_flows(a, b, preset)
    assert flow_ab.shape == flow_ba.shape == (1, 2, H, W) and flow_ab.dtype == torch.float32
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))  # away from the uncovered border
    assert flow_ab[inner][:, 0].median().item() == pytest.approx(4, abs=0.3)
    assert flow_ab[inner][:, 1].median().item() == pytest.approx(0, abs=0.3)
    assert flow_ba[inner][:, 0].median().item() == pytest.approx(-4, abs=0.3)


def test_flow_from_low_res_frames_is_scaled_to_the_output_size():
    canvas = _canvas()
    a, b = _shifted(canvas, 0), _shifted(canvas, 8)
    flow_ab, _ = optical_flows(downscale(a, 2), downscale(b, 2), "medium", (H, W))
    assert flow_ab.shape == (1, 2, H, W)
    assert flow_ab[0, 0, 8:-8, 8:-8].median().item() == pytest.approx(8, abs=0.6)  # 4 px at half size, x2


@pytest.mark.parametrize("shift,t", [(4, 0.5), (6, 1 / 3), (6, 2 / 3)])
def test_translation_in_between_beats_the_blend(shift, t):
    """A pure translation: the flow in-between is the true intermediate frame, the blend ghosts it."""
    canvas = _canvas()
    a, b = _shifted(canvas, 0), _shifted(canvas, shift)
    truth = _shifted(canvas, round(shift * t))
    out = flow_interpolate(a, b, torch.tensor([t]), optical_flows(a, b, "ultrafast"))
    inner = (slice(None), slice(None), slice(4, -4), slice(8, -8))
    blend = (1 - t) * a + t * b
    assert _mae(out[inner], truth[inner]) < 0.2 * _mae(blend[inner], truth[inner])


def test_endpoints_give_back_the_keys():
    canvas = _canvas()
    a, b = _shifted(canvas, 0), _shifted(canvas, 5)
    out = flow_interpolate(a, b, torch.tensor([0.0, 0.5, 1.0]), optical_flows(a, b))
    assert out.shape == (3, 3, H, W) and out.dtype == torch.float32
    assert torch.allclose(out[0], a[0], atol=1e-5)
    assert torch.allclose(out[2], b[0], atol=1e-5)
    assert not torch.allclose(out[1], a[0], atol=1e-2)


def test_static_scene_ignores_any_flow():
    """Identical keys: whatever the flow says, the fallback weight is zero and the key comes back."""
    a = _canvas()[..., :W].contiguous()
    junk = 5 * torch.randn(1, 2, H, W, generator=torch.Generator().manual_seed(0))
    out = flow_interpolate(a, a.clone(), torch.tensor([0.25, 0.5]), (junk, -junk))
    assert torch.allclose(out, a.expand(2, -1, -1, -1), atol=1e-5)


def test_wrong_flow_falls_back_toward_the_blend():
    """A flow pointing the wrong way: the fallback weight pulls the output most of the way back toward
    the plain blend (it does not reach it: the weight is a ratio of pooled differences, not a switch)."""
    canvas = _canvas()
    a, b = _shifted(canvas, 0), _shifted(canvas, 4)
    truth, blend = _shifted(canvas, 2), 0.5 * a + 0.5 * b
    wrong = torch.zeros(1, 2, H, W)
    wrong[:, 0] = -12.0  # the content moved right by 4, this says left by 12
    out = flow_interpolate(a, b, torch.tensor([0.5]), (wrong, -wrong))
    # What the warp alone gives at t = 1/2 (f_ta = -flow_ab / 2, f_tb = flow_ab / 2 for flow_ba = -flow_ab).
    warped_only = 0.5 * backward_warp(a, -0.5 * wrong) + 0.5 * backward_warp(b, 0.5 * wrong)
    err_out, err_blend, err_warp = _mae(out, truth), _mae(blend, truth), _mae(warped_only, truth)
    assert err_blend < err_out < 0.5 * err_warp  # measured: 0.023 < 0.072 < 0.210


def test_backward_warp_integer_shift():
    img = torch.rand(1, 3, 10, 12)
    flow = torch.zeros(2, 2, 10, 12)
    flow[1, 0] = 2.0  # out(p) = img(p + (2, 0))
    out = backward_warp(img, flow)
    assert out.shape == (2, 3, 10, 12)
    assert torch.allclose(out[0], img[0], atol=1e-6)
    assert torch.allclose(out[1, :, :, :10], img[0, :, :, 2:], atol=1e-5)
    assert torch.allclose(out[1, :, :, 10:], img[0, :, :, 11:12].expand(-1, -1, 2), atol=1e-5)  # border replicated


def test_cpu_warp_matches_grid_sample():
    """The CPU path (cv2.remap) and torch's grid_sample (the path elsewhere) sample the same values."""
    g = torch.Generator().manual_seed(1)
    img, flow = torch.rand(1, 3, 30, 41, generator=g), 4 * torch.randn(2, 2, 30, 41, generator=g)
    ys, xs = torch.arange(30.0).view(1, 30, 1), torch.arange(41.0).view(1, 1, 41)
    grid = torch.stack([(xs + flow[:, 0]) / 20 - 1, (ys + flow[:, 1]) / 14.5 - 1], -1)
    expected = F.grid_sample(img.expand(2, -1, -1, -1), grid, padding_mode="border", align_corners=True)
    assert torch.allclose(backward_warp(img, flow), expected, atol=1e-4)


def test_odd_sizes():
    a, b = torch.rand(1, 3, 37, 53), torch.rand(1, 3, 37, 53)
    out = flow_interpolate(a, b, torch.tensor([0.5]), optical_flows(a, b))
    assert out.shape == (1, 3, 37, 53) and 0 <= out.min() and out.max() <= 1


def test_flow_options_are_validated():
    with pytest.raises(ValueError):
        FlowOptions(preset="slow")
    with pytest.raises(ValueError):
        FlowOptions(source="elsewhere")
    with pytest.raises(ValueError):
        FlowOptions(window=4)


@pytest.fixture
def decoder_calls(tiny_codec):
    calls = []
    handle = tiny_codec.model.decoder.register_forward_hook(lambda m, i, o: calls.append(1))
    yield calls
    handle.remove()


@pytest.mark.parametrize("source", ["keys", "received"])
def test_codec_flow_method(tiny_codec, carphone, decoder_calls, source):
    """Through the codec: low-res keys (as the receiver gets them), no decode for the in-betweens."""
    size = tuple(carphone.shape[-2:])
    ka, kb = (tiny_codec.key(downscale(carphone[i : i + 1], 4), size) for i in (0, 4))
    assert ka.received.shape[-2:] == (size[0] // 4, size[1] // 4)
    codec = Codec(tiny_codec.model, tiny_codec.normalization, flow=FlowOptions(source=source))
    decoder_calls.clear()
    out = codec.in_between(ka, kb, 3, "flow")
    assert not decoder_calls, "the flow in-between decodes nothing"
    assert out.shape == (3, 3, *size) and out.dtype == torch.float32 and out.device == ka.frame.device
    assert 0 <= out.min() and out.max() <= 1
    to_a = [_mae(f, ka.frame[0]) for f in out]
    assert to_a[0] < to_a[1] < to_a[2]


def test_reconstructor_with_flow_and_a_lost_frame(tiny_codec, carphone):
    size = tuple(carphone.shape[-2:])
    low = downscale(carphone[:9], 4)
    rec = Reconstructor(tiny_codec, size, temporal=2, method="flow")
    out = [f for i in (0, 2, 6, 8) for f in rec.push(i, low[i])]  # frame 4 lost
    assert [f.index for f in out] == list(range(9))
    assert [f.index for f in out if f.concealed] == [3, 4, 5]
    assert all(f.frame.shape == (3, *size) for f in out)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_flow_on_cuda():
    canvas = _canvas().cuda()
    a, b = _shifted(canvas, 0), _shifted(canvas, 4)
    flows = optical_flows(a, b)
    assert flows[0].device.type == "cuda"
    out = flow_interpolate(a, b, torch.tensor([0.5]), flows)
    cpu = flow_interpolate(a.cpu(), b.cpu(), torch.tensor([0.5]), tuple(f.cpu() for f in flows))
    assert out.device.type == "cuda" and torch.allclose(out.cpu(), cpu, atol=1e-3)


def test_flow_does_not_depend_on_earlier_calls_at_other_sizes():
    """OpenCV's DIS instance remembers the last frame size; the codec keeps one per size."""
    canvas = _canvas()
    a, b = _shifted(canvas, 0), _shifted(canvas, 4)
    fresh = optical_flows(a, b)[0]
    optical_flows(downscale(a, 4), downscale(b, 4))
    assert torch.equal(optical_flows(a, b)[0], fresh)
