import pytest
import torch
import torch.nn.functional as F

from codec.errors import VsaeError
from codec.model import ModelConfig
from codec.train import CONSTANT_FRACTION, FitOptions, degrade, fit, lr_at, pick_device
from codec.video import downscale

TINY = ModelConfig(width=4, multipliers=(1, 2))


@pytest.fixture(scope="module")
def small_frames(carphone):
    return downscale(carphone[:6], 4)  # (6, 3, 36, 44)


def test_lr_schedule_constant_then_linear_to_zero():
    lr = 1e-3
    for p in [0.0, 0.1, 0.3, CONSTANT_FRACTION - 1e-9]:
        assert lr_at(p, lr) == lr
    assert lr_at(CONSTANT_FRACTION, lr) == pytest.approx(lr)
    assert lr_at(1.0, lr) == 0.0
    assert lr_at(1.5, lr) == 0.0
    # Linear over the second part: halfway through the decay is half the rate.
    mid = CONSTANT_FRACTION + (1 - CONSTANT_FRACTION) / 2
    assert lr_at(mid, lr) == pytest.approx(lr / 2)
    ps = [CONSTANT_FRACTION + i * (1 - CONSTANT_FRACTION) / 10 for i in range(11)]
    values = [lr_at(p, lr) for p in ps]
    steps = [a - b for a, b in zip(values, values[1:])]
    assert all(s > 0 for s in steps)
    assert max(steps) - min(steps) < 1e-12  # constant slope


def test_degrade_shape_and_identity():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 32, 40)
    assert degrade(x, (1,), g) is x
    assert degrade(x, (), g) is x
    out = degrade(x, (1, 1), g)
    assert out.shape == x.shape and torch.equal(out, x)
    out = degrade(x, (4,), g)
    assert out.shape == x.shape
    assert torch.equal(x, x.clone())  # input untouched
    expected = F.interpolate(downscale(x, 4), size=(32, 40), mode="bilinear", align_corners=False)
    assert torch.allclose(out, expected, atol=1e-6)


def test_degrade_mixes_factors():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 3, 16, 16)
    out = degrade(x, (1, 4), g)
    same = [torch.equal(out[i], x[i]) for i in range(32)]
    assert any(same) and not all(same)
    # Deterministic given the generator.
    again = degrade(x, (1, 4), torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_fit_is_reproducible(small_frames):
    opts = FitOptions(epochs=2, batch=3, progress=False, seed=7)
    a = fit(small_frames, TINY, opts)
    b = fit(small_frames, TINY, opts)
    assert a.steps == b.steps == 4
    assert a.epochs == pytest.approx(2)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert a.final_psnr == b.final_psnr
    c = fit(small_frames, TINY, FitOptions(epochs=2, batch=3, progress=False, seed=8))
    assert any(not torch.equal(sa[k], c.model.state_dict()[k]) for k in sa if sa[k].is_floating_point())


def test_fit_result(small_frames):
    r = fit(small_frames, TINY, FitOptions(epochs=1, batch=4, progress=False))
    assert r.steps == 2  # ceil(6 / 4)
    assert not r.model.training
    assert r.seconds > 0
    assert len(r.normalization.mean) == 3
    assert r.normalization.mean == pytest.approx(small_frames.mean(dim=(0, 2, 3)).tolist(), abs=1e-5)
    # Batch larger than the clip is clamped.
    r = fit(small_frames, TINY, FitOptions(epochs=1, batch=100, progress=False))
    assert r.steps == 1


def test_fit_minutes_budget(small_frames):
    r = fit(small_frames, TINY, FitOptions(epochs=None, minutes=0.02, progress=False))
    assert r.steps >= 1
    assert 1.2 * 0.9 <= r.seconds < 10


@pytest.mark.parametrize(
    "opts",
    [
        FitOptions(epochs=None, minutes=None),
        FitOptions(epochs=0),
        FitOptions(epochs=-1),
        FitOptions(epochs=None, minutes=0),
        FitOptions(epochs=None, minutes=-2.0),
        FitOptions(epochs=1, minutes=0),
    ],
)
def test_budget_validation(small_frames, opts):
    opts.progress = False
    with pytest.raises(VsaeError):
        fit(small_frames, TINY, opts)


@pytest.mark.parametrize("shape", [(0, 3, 16, 16), (2, 1, 16, 16), (3, 16, 16), (2, 4, 16, 16)])
def test_frame_validation(shape):
    with pytest.raises(VsaeError):
        fit(torch.rand(shape), TINY, FitOptions(epochs=1, progress=False))


def test_pick_device():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type in ("cpu", "cuda")
    with pytest.raises(VsaeError):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(VsaeError):
            pick_device("cuda")


def test_real_fit_beats_bicubic(real_fit):
    """The session's short real fit must beat bicubic x4 on held-out (odd) frames."""
    from codec.evaluate import evaluate

    scores = evaluate(real_fit.codec, real_fit.held_out, scale=4)
    margin = scores["psnr"]["vsae"] - scores["psnr"]["bicubic"]
    print(
        f"\nreal fit: {real_fit.result.steps} steps in {real_fit.seconds:.1f} s; held-out x4 PSNR "
        f"vsae {scores['psnr']['vsae']:.2f} dB vs bicubic {scores['psnr']['bicubic']:.2f} dB (margin {margin:+.2f} dB)"
    )
    assert scores["psnr"]["vsae"] > scores["psnr"]["bicubic"] + 1.0
    assert scores["ssim"]["vsae"] > scores["ssim"]["bicubic"]
    # Training went somewhere: the train-batch PSNR history rises.
    hist = real_fit.result.history
    assert hist[-1]["psnr"] > hist[0]["psnr"] + 3

