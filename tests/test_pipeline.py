import pytest
import torch

from codec.pipeline import OutputFrame, Reconstructor, reconstruct_stream
from codec.video import downscale

HW = (144, 176)
N = 17  # frames 0..16: whole number of key intervals for T = 1, 2, 4


@pytest.fixture(scope="module")
def low(carphone):
    return downscale(carphone[:N], 4)


def _check_frame(f: OutputFrame):
    assert f.frame.shape == (3, *HW)
    assert f.frame.min() >= 0 and f.frame.max() <= 1


@pytest.mark.parametrize("temporal", [1, 2, 4])
@pytest.mark.parametrize("low_res", [True, False])
def test_one_frame_per_index_in_order(tiny_codec, carphone, low, temporal, low_res):
    source = low if low_res else carphone[:N]
    rec = Reconstructor(tiny_codec, HW, temporal=temporal)
    out = []
    for i in range(0, N, temporal):
        got = rec.push(i, source[i])
        # A push makes everything up to and including the new key final.
        assert got and got[-1].index == i and got[-1].key
        assert all(not f.key for f in got[:-1])
        out += got
    out += rec.flush(N)
    assert [f.index for f in out] == list(range(N))
    assert rec.concealed == 0 and not any(f.concealed for f in out)
    assert [f.index for f in out if f.key] == list(range(0, N, temporal))
    for f in out:
        _check_frame(f)
    if not low_res:
        # Full-size keys are shown exactly as received.
        for f in out:
            if f.key:
                assert torch.equal(f.frame, carphone[f.index])


def test_in_betweens_match_codec(tiny_codec, low):
    rec = Reconstructor(tiny_codec, HW, temporal=4, method="latent")
    rec.push(0, low[0])
    out = rec.push(4, low[4])
    a, b = tiny_codec.key(low[0:1], HW), tiny_codec.key(low[4:5], HW)
    expected = tiny_codec.in_between(a, b, 3, "latent")
    assert torch.allclose(torch.stack([f.frame for f in out[:3]]), expected, atol=1e-5)
    assert torch.allclose(out[3].frame, b.frame[0], atol=1e-6)


@pytest.mark.parametrize("temporal", [1, 2])
def test_missing_key_is_concealed(tiny_codec, low, temporal):
    rec = Reconstructor(tiny_codec, HW, temporal=temporal)
    keys = [i for i in range(0, N, temporal) if i != 4]  # key 4 lost
    out = [f for i in keys for f in rec.push(i, low[i])] + rec.flush(N)
    assert [f.index for f in out] == list(range(N))
    concealed = [f.index for f in out if f.concealed]
    gap_start = 4 - temporal + 1
    gap_end = 4 + temporal  # exclusive: the next received key
    assert concealed == list(range(gap_start, gap_end))
    assert rec.concealed == len(concealed)
    assert not any(f.key for f in out if f.concealed)


def test_first_frames_missing_are_held(tiny_codec, low):
    rec = Reconstructor(tiny_codec, HW, temporal=2)
    out = rec.push(4, low[4])
    assert [f.index for f in out] == [0, 1, 2, 3, 4]
    assert [f.concealed for f in out] == [True] * 4 + [False]
    for f in out[:4]:
        assert torch.equal(f.frame, out[4].frame)
    assert rec.concealed == 4


@pytest.mark.parametrize("temporal", [1, 2, 4])
def test_flush_holds_last_key(tiny_codec, low, temporal):
    rec = Reconstructor(tiny_codec, HW, temporal=temporal)
    out = [f for i in (0, temporal) for f in rec.push(i, low[i])]
    last = out[-1].frame
    total = temporal + 3 * temporal  # 3 more intervals never received
    tail = rec.flush(total)
    assert [f.index for f in tail] == list(range(temporal + 1, total))
    for f in tail:
        assert torch.equal(f.frame, last)
        assert not f.key
    # Up to T - 1 trailing frames are expected, the rest were lost.
    assert [f.concealed for f in tail] == [j > temporal - 1 for j in range(1, len(tail) + 1)]
    assert rec.concealed == sum(f.concealed for f in tail)
    assert rec.flush(total) == []  # nothing twice


def test_flush_without_total_or_frames(tiny_codec, low):
    rec = Reconstructor(tiny_codec, HW)
    assert rec.flush(10) == []  # nothing received: nothing to hold
    rec.push(0, low[0])
    assert rec.flush() == []


def test_late_frames_ignored(tiny_codec, low):
    rec = Reconstructor(tiny_codec, HW, temporal=2)
    rec.push(0, low[0])
    rec.push(2, low[2])
    assert rec.push(1, low[1]) == []
    assert rec.push(2, low[2]) == []
    assert rec.push(0, low[0]) == []
    out = rec.push(4, low[4])
    assert [f.index for f in out] == [3, 4]
    assert rec.next_index == 5


def test_accepts_batched_frame(tiny_codec, low):
    rec = Reconstructor(tiny_codec, HW)
    out = rec.push(0, low[0:1])
    assert len(out) == 1 and out[0].frame.shape == (3, *HW)


def test_reconstruct_stream(tiny_codec, low):
    rec = Reconstructor(tiny_codec, HW, temporal=4)
    received = ((i, low[i]) for i in range(0, 13, 4))
    out = list(reconstruct_stream(rec, received, total=15))
    assert [f.index for f in out] == list(range(15))
    assert [f.index for f in out if f.concealed] == []


def test_rejects_bad_temporal(tiny_codec):
    with pytest.raises(ValueError):
        Reconstructor(tiny_codec, HW, temporal=0)


def test_long_concealed_gap_uses_latent_interpolation_and_never_fails(tiny_codec, low):
    """A lost gap of 40 frames (an outage; past motion's 32-step grid, which raised before) is rebuilt by latent
    interpolation (eq. 8); a short lost gap still gets `motion`."""
    from codec.pipeline import CONCEAL_MOTION_MAX_STEPS

    rec = Reconstructor(tiny_codec, HW, temporal=2, method="motion")
    rec.push(0, low[0])
    out = rec.push(41, low[1])
    a, b = tiny_codec.key(low[0:1], HW), tiny_codec.key(low[1:2], HW)
    assert [f.index for f in out] == list(range(1, 42)) and all(f.concealed for f in out[:-1])
    expected = tiny_codec.in_between(a, b, 40, "latent")
    assert torch.allclose(torch.stack([f.frame for f in out[:-1]]), expected, atol=1e-5)

    short = CONCEAL_MOTION_MAX_STEPS - 1  # m = gap + 1 = CONCEAL_MOTION_MAX_STEPS: still motion
    rec = Reconstructor(tiny_codec, HW, temporal=2, method="motion")
    rec.push(0, low[0])
    out = rec.push(short + 1, low[1])
    assert all(f.concealed for f in out[:-1])
    expected = tiny_codec.in_between(a, b, short, "motion")
    assert torch.allclose(torch.stack([f.frame for f in out[:-1]]), expected, atol=1e-5)
    assert not torch.allclose(expected, tiny_codec.in_between(a, b, short, "latent"), atol=1e-3)
