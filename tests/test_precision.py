"""Training precision by measurement (codec/precision.py), progress in a log file, the recipe-keyed cache."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
import torch

from codec import cache
from codec.errors import VsaeError
from codec.model import AutoEncoder, ModelConfig
from codec.precision import AUTO_CANDIDATES, choose_precision
from codec.progress import LineProgress, progress
from codec.train import FitOptions, fit
from codec.video import downscale

TINY = ModelConfig(width=4, multipliers=(1, 2))


@pytest.fixture(scope="module")
def small_frames(carphone):
    return downscale(carphone[:6], 4)


def probe_batch(frames):
    model = AutoEncoder(TINY)
    return model, frames[:3], frames[:3]


def test_auto_times_every_candidate_and_keeps_the_faster(small_frames):
    model, x, y = probe_batch(small_frames)
    cpu = torch.device("cpu")
    choice = choose_precision(model, x, y, cpu, "auto")
    assert set(choice.seconds_per_step) == set(AUTO_CANDIDATES["cpu"])
    assert choice.name == min(choice.seconds_per_step, key=choice.seconds_per_step.get)
    assert choice.reason.startswith(f"auto: {choice.name} ") and "s/step" in choice.reason
    # The probe trains a copy: the model itself is untouched.
    fresh = AutoEncoder(TINY)
    fresh.load_state_dict(model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


def test_asked_for_precision_is_kept_and_f16_on_cpu_refused(small_frames):
    model, x, y = probe_batch(small_frames)
    cpu = torch.device("cpu")
    assert choose_precision(model, x, y, cpu, "f32").name == "f32"
    assert choose_precision(model, x, y, cpu, "bf16").name == "bf16"
    with pytest.raises(VsaeError, match="CUDA"):
        choose_precision(model, x, y, cpu, "f16")
    with pytest.raises(VsaeError, match="precision"):
        choose_precision(model, x, y, cpu, "f8")


def test_auto_fit_is_the_fit_in_the_chosen_precision(small_frames):
    """The probe draws nothing from the fit's random streams: auto gives exactly the fit in what it chose."""
    auto = fit(small_frames, TINY, FitOptions(epochs=2, minutes=None, batch=3, progress=False, seed=3))
    forced = fit(small_frames, TINY, FitOptions(epochs=2, minutes=None, batch=3, progress=False, seed=3,
                                                train_precision=auto.train_precision))
    assert auto.precision_reason.startswith("auto:") and forced.precision_reason.endswith("(asked for)")
    for a, b in zip(auto.model.state_dict().values(), forced.model.state_dict().values()):
        assert torch.equal(a, b)


def test_f32_and_bf16_fits_differ(small_frames):
    f32 = fit(small_frames, TINY, FitOptions(epochs=1, minutes=None, batch=3, progress=False, train_precision="f32"))
    bf16 = fit(small_frames, TINY, FitOptions(epochs=1, minutes=None, batch=3, progress=False, train_precision="bf16"))
    assert (f32.train_precision, bf16.train_precision) == ("f32", "bf16")
    assert any(not torch.equal(a, b) for a, b in zip(f32.model.state_dict().values(), bf16.model.state_dict().values()))


def test_fit_progress_in_a_log_file_moves(small_frames, capsys):
    """Not a terminal: plain lines, and the last one carries the last figures, not the first."""
    clock = iter(range(0, 10_000, 20))  # every update is 20 s after the previous one
    log = io.StringIO()
    bar = LineProgress(10, "fit", "step", log, interval_s=15, clock=lambda: next(clock))
    for epoch in range(1, 11):
        bar.set_postfix(epoch=epoch)
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 11 and lines[0].startswith("fit: 1/10 step (10%)") and lines[0].endswith("epoch=1")
    assert lines[-2].startswith("fit: 10/10 step (100%)") and lines[-1].endswith("epoch=10")
    assert isinstance(progress(5, "x", "step", file=io.StringIO()), LineProgress)
    # And the fit itself says which precision it chose, in one line, where it reports progress.
    fit(small_frames, TINY, FitOptions(epochs=1, minutes=None, batch=3, progress=True))
    err = capsys.readouterr().err
    assert sum(line.startswith("fit: training in ") for line in err.splitlines()) == 1


def test_recipe_fingerprint_follows_the_training_code(tmp_path):
    source = Path(cache.__file__).parent
    for name in cache.RECIPE_MODULES:
        shutil.copy(source / name, tmp_path / name)
    before = cache.recipe_fingerprint(tmp_path)
    assert before == cache.recipe_fingerprint(source)
    with open(tmp_path / "train.py", "a") as f:
        f.write("\n# a training fix\n")
    assert cache.recipe_fingerprint(tmp_path) != before
