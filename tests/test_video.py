import av
import numpy as np
import pytest
import torch

from codec.errors import VsaeError
from codec.metrics import psnr
from codec.video import (
    downscale,
    parse_size,
    read_video,
    resize,
    resolve_video,
    sample_clip,
    select_frames,
    to_tensor,
    to_uint8,
    write_video,
)


@pytest.mark.parametrize(
    "spec,expected",
    [
        (None, [0, 1, 2, 3, 4]),
        ("all", [0, 1, 2, 3, 4]),
        ("even", [0, 2, 4]),
        ("odd", [1, 3]),
        ("1:3", [1, 2]),
        (":2", [0, 1]),
        ("3:", [3, 4]),
        ("::2", [0, 2, 4]),
        ("0:5:3", [0, 3]),
        ("-2:", [3, 4]),
        (":-1", [0, 1, 2, 3]),
        ("10:20", []),
        (" 1:4 ", [1, 2, 3]),
    ],
)
def test_select_frames(spec, expected):
    assert select_frames(5, spec) == expected


@pytest.mark.parametrize("spec", ["evens", "1-3", "a:b", "1:2:0", "1:2:-1", "1:2:3:4", "", "1"])
def test_select_frames_rejects(spec):
    with pytest.raises(VsaeError):
        select_frames(5, spec)


def test_parse_size():
    assert parse_size(None) is None
    assert parse_size("176x144") == (176, 144)
    assert parse_size(" 640X272 ") == (640, 272)
    for bad in ["176", "176x", "x144", "176x144x3", "4x4", "176x7", "-176x144", "axb", "176*144"]:
        with pytest.raises(VsaeError):
            parse_size(bad)


def test_sample_clips_exist():
    assert sample_clip("carphone").is_file()
    assert sample_clip("bikes").is_file()
    with pytest.raises(VsaeError):
        sample_clip("nope")
    assert resolve_video("carphone") == sample_clip("carphone")


def test_read_carphone():
    frames, fps = read_video("carphone")
    assert frames.shape == (120, 144, 176, 3)
    assert frames.dtype == np.uint8
    assert fps == pytest.approx(29.97, abs=0.01)
    assert frames.std() > 10  # real content, not a blank frame


def test_read_selection_and_resize():
    all_frames, _ = read_video("carphone", "0:6")
    odd, _ = read_video("carphone", "odd")
    assert odd.shape[0] == 60
    assert np.array_equal(odd[:3], all_frames[1:6:2])
    small, _ = read_video("carphone", "0:6", size=(88, 72))
    assert small.shape == (6, 72, 88, 3) and small.dtype == np.uint8
    # Area resize by 2 equals 2x2 block averages (up to rounding).
    blocks = all_frames.astype(np.float64).reshape(6, 72, 2, 88, 2, 3).mean(axis=(2, 4))
    assert np.abs(small.astype(np.float64) - blocks).max() <= 1.0


def test_read_bikes_size():
    frames, _ = read_video("bikes", "0:2")
    assert frames.shape == (2, 272, 640, 3)


def test_read_bigbuckbunny_resized():
    assert resolve_video("bigbuckbunny") == sample_clip("bigbuckbunny")
    frames, fps = read_video("bigbuckbunny", "0:2", size=(640, 360))
    assert frames.shape == (2, 360, 640, 3) and fps == pytest.approx(25, abs=0.01)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert text and "\n" not in text
    return text


def test_missing_file(tmp_path):
    with pytest.raises(VsaeError) as exc:
        read_video(tmp_path / "missing.mp4")
    assert "missing.mp4" in _one_line(exc)


def test_directory_is_not_a_video(tmp_path):
    with pytest.raises(VsaeError) as exc:
        read_video(tmp_path)
    _one_line(exc)


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VsaeError) as exc:
        read_video(path)
    assert "garbage.mp4" in _one_line(exc)


def test_text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("this is not a video\n" * 20)
    with pytest.raises(VsaeError) as exc:
        read_video(path)
    _one_line(exc)


def test_selection_leaving_no_frames():
    with pytest.raises(VsaeError) as exc:
        read_video("carphone", "500:600")
    _one_line(exc)


def test_write_then_read(tmp_path):
    frames, fps = read_video("carphone", "0:10")
    path = tmp_path / "out" / "clip.mp4"
    write_video(path, frames, fps)
    back, back_fps = read_video(path)
    assert back.shape == frames.shape
    assert back_fps == pytest.approx(fps, abs=0.01)
    assert psnr(to_tensor(back), to_tensor(frames)) > 38
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name in ("h264", "libx264")


def test_write_odd_size_pads(tmp_path):
    frames = np.random.default_rng(1).integers(0, 256, (3, 9, 13, 3), dtype=np.uint8)
    path = tmp_path / "odd.mp4"
    write_video(path, frames, 25.0)
    back, _ = read_video(path)
    assert back.shape == (3, 10, 14, 3)


def test_tensor_conversions():
    frames = np.random.default_rng(2).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    x = to_tensor(frames)
    assert x.shape == (2, 3, 5, 7) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    assert np.array_equal(to_uint8(x), frames)
    assert np.array_equal(to_uint8(torch.full((1, 3, 2, 2), 2.0)), np.full((1, 2, 2, 3), 255, np.uint8))


def test_downscale():
    x = torch.rand(2, 3, 144, 176)
    assert downscale(x, 1) is x
    low = downscale(x, 4)
    assert low.shape == (2, 3, 36, 44)
    assert torch.allclose(low[0, :, 0, 0], x[0, :, :4, :4].mean(dim=(1, 2)), atol=1e-6)
    assert resize(x, (144, 176)) is x
