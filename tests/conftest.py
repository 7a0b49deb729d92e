"""Shared fixtures: real carphone frames, a tiny random codec, and one short real fit per session.

Threads: the suite runs beside long CPU benchmarks on a 2-core machine. With two intra-op threads
and both cores busy, every OpenMP barrier waits on a descheduled thread and a training step
becomes ~100x slower (1.5 s instead of 0.02 s, measured); one thread is the robust choice.
Override with VSAE_TEST_THREADS on an idle machine.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import pytest
import torch

from codec.model import AutoEncoder, ModelConfig, Normalization
from codec.ops import Codec
from codec.train import FitOptions, FitResult, fit
from codec.video import read_video, to_tensor

torch.set_num_threads(int(os.environ.get("VSAE_TEST_THREADS", "1")))

# Carphone is 176x144 (W x H).
CARPHONE_WH = (176, 144)
CARPHONE_HW = (144, 176)
# The one real fit: first 48 frames, even ones to train, odd ones held out.
FIT_FRAMES = 48
FIT_CONFIG = ModelConfig(width=16, multipliers=(1, 2, 4, 8))
# 150 epochs of 24 frames (600 steps) took ~26 s single-threaded here and beat bicubic x4 by ~3.7 dB
# on the held-out odd frames (100 epochs: +3.2 dB in 18 s; 50 epochs: +1.1 dB).
FIT_EPOCHS = 150


@pytest.fixture(scope="session")
def carphone() -> torch.Tensor:
    """The first 24 carphone frames as float (24, 3, 144, 176) in [0, 1]."""
    frames, _ = read_video("carphone", frames="0:24")
    return to_tensor(frames)


@pytest.fixture(scope="session")
def tiny_codec(carphone) -> Codec:
    """Untrained width-8, stride-8 codec in eval mode with non-trivial BatchNorm statistics.

    The BatchNorm running stats come from train-mode passes over real frames (cumulative average),
    so in eval mode its output depends visibly on the input (random-noise stats give a near-constant
    output that would let structural tests pass vacuously).
    """
    torch.manual_seed(1234)
    norm = Normalization.of(carphone)
    model = AutoEncoder(ModelConfig(width=8, multipliers=(1, 2, 4)))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    model.train()
    with torch.no_grad():
        for chunk in carphone.split(8):
            model(norm.apply(chunk))
    codec = Codec(model, norm)
    assert not codec.model.training
    return codec


@pytest.fixture(scope="session")
def model_bytes(tiny_codec) -> bytes:
    """The tiny codec as bundle bytes, as a sender ships it."""
    from codec import bundle

    return bundle.dumps(tiny_codec)


@dataclass
class RealFit:
    result: FitResult
    codec: Codec
    seconds: float
    train: torch.Tensor  # even frames 0..46
    held_out: torch.Tensor  # odd frames 1..47


@pytest.fixture(scope="session")
def real_fit() -> RealFit:
    """One short real fit of the suite (reused by every test that needs a trained model)."""
    train, _ = read_video("carphone", frames=f"0:{FIT_FRAMES}:2")
    held, _ = read_video("carphone", frames=f"1:{FIT_FRAMES}:2")
    train_t, held_t = to_tensor(train), to_tensor(held)
    start = time.perf_counter()
    # Epochs only (minutes=None): the fit, and every assertion on it, is the same on a slow CPU as on a fast one.
    # f32 on every CPU: `auto` picks bf16 where it is native and f32 elsewhere, and the assertions on this fit
    # must not depend on which CPU runs them.
    result = fit(train_t, FIT_CONFIG, FitOptions(epochs=FIT_EPOCHS, minutes=None, progress=False, seed=0, train_precision="f32"))
    seconds = time.perf_counter() - start
    codec = Codec(result.model, result.normalization, meta={"frame_size": list(CARPHONE_WH)})
    return RealFit(result, codec, seconds, train_t, held_t)


@pytest.fixture(scope="session")
def fitted_bundle(real_fit, tmp_path_factory) -> str:
    """The session fit saved as an f16 bundle recording its frame size."""
    from codec import bundle

    path = tmp_path_factory.mktemp("bundle") / "carphone.vsae"
    bundle.save(real_fit.codec, path)
    return str(path)
