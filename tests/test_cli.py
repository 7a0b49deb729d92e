import json
import os

import av
import numpy as np
import pytest

from codec import bundle
from codec.cli import main, model_info
from codec.evaluate import METHODS
from codec.ops import Codec

CARPHONE_WH = (176, 144)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(code: int, err: str) -> str:
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("vsae: error: ")
    return lines[0]


# -- info -----------------------------------------------------------------------------------------
def test_info_json(capsys, fitted_bundle, real_fit):
    code, out, err = run(capsys, "info", fitted_bundle, "--json")
    assert code == 0
    info = json.loads(out)
    assert {"parameters", "bundle_bytes", "config", "meta"} <= set(info)
    assert info["parameters"] == real_fit.codec.model.parameter_count()
    assert info["bundle_bytes"] == os.path.getsize(fitted_bundle)
    config = real_fit.codec.model.config
    assert info["config"]["width"] == config.width == 16
    assert info["config"]["multipliers"] == list(config.multipliers) == [1, 2, 4, 8]
    assert info["config"]["stride"] == 16 and info["config"]["latent_channels"] == 128
    assert info["meta"] == {"frame_size": list(CARPHONE_WH)}
    assert info == json.loads(json.dumps(model_info(fitted_bundle)))


def test_info_text(capsys, fitted_bundle):
    code, out, _ = run(capsys, "info", fitted_bundle)
    assert code == 0
    assert "parameters" in out and "stride 16" in out and "frame_size" in out


# -- eval -----------------------------------------------------------------------------------------
def test_eval_json(capsys, fitted_bundle):
    code, out, _ = run(capsys, "eval", fitted_bundle, "carphone", "--frames", "odd", "--scale", "4", "--json")
    assert code == 0
    result = json.loads(out)  # exactly one JSON object: json.loads rejects trailing data
    assert out.strip().count("\n") == 0
    assert set(result) == {"frames", "scale", "temporal", "iterations", "psnr", "ssim"}
    assert result["frames"] == 60 and result["scale"] == 4 and result["temporal"] == 1 and result["iterations"] == 1
    assert set(result["psnr"]) == set(METHODS) == {"autoencoder", "bicubic", "vsae", "pixel_blend", "repeat"}
    assert set(result["ssim"]) == set(result["psnr"])
    for name in ("autoencoder", "bicubic", "vsae"):
        assert 10 < result["psnr"][name] < 60
        assert 0 < result["ssim"][name] <= 1
    assert result["psnr"]["pixel_blend"] is None and result["psnr"]["repeat"] is None


def test_eval_held_out_beats_bicubic(capsys, fitted_bundle):
    """Through the CLI and the f16 bundle: the fit still wins on the held-out frames it never saw."""
    code, out, _ = run(capsys, "eval", fitted_bundle, "carphone", "--frames", "1:48:2", "--json")
    assert code == 0
    psnr = json.loads(out)["psnr"]
    assert psnr["vsae"] > psnr["bicubic"] + 1.0


def test_eval_temporal_text(capsys, fitted_bundle):
    code, out, _ = run(capsys, "eval", fitted_bundle, "carphone", "--frames", "0:9", "--scale", "1", "--temporal", "4")
    assert code == 0
    assert "pixel_blend" in out and "repeat" in out and "bicubic" not in out


# -- errors ---------------------------------------------------------------------------------------
def test_eval_missing_video(capsys, fitted_bundle, tmp_path):
    code, _, err = run(capsys, "eval", fitted_bundle, tmp_path / "nope.mp4")
    assert "nope.mp4" in assert_one_error_line(code, err)


def test_eval_non_video(capsys, fitted_bundle, tmp_path):
    path = tmp_path / "junk.mp4"
    path.write_bytes(b"\x00\x01junk" * 300)
    code, _, err = run(capsys, "eval", fitted_bundle, path)
    assert_one_error_line(code, err)


@pytest.mark.parametrize("content", [b"", b"garbage" * 100, bundle.MAGIC + b"\x00" * 50])
def test_corrupt_model(capsys, tmp_path, content):
    path = tmp_path / "bad.vsae"
    path.write_bytes(content)
    for argv in (["eval", path, "carphone", "--frames", "0:2"], ["info", path], ["reconstruct", path, "carphone", "-o", tmp_path / "o.mp4"]):
        code, _, err = run(capsys, *argv)
        assert "bad.vsae" in assert_one_error_line(code, err)


def test_truncated_model(capsys, tmp_path, fitted_bundle):
    data = open(fitted_bundle, "rb").read()
    path = tmp_path / "cut.vsae"
    path.write_bytes(data[: len(data) // 2])
    code, _, err = run(capsys, "info", path)
    assert_one_error_line(code, err)


def test_missing_model(capsys, tmp_path):
    code, _, err = run(capsys, "info", tmp_path / "none.vsae")
    assert "not found" in assert_one_error_line(code, err)


def test_eval_wrong_frame_size(capsys, fitted_bundle):
    code, _, err = run(capsys, "eval", fitted_bundle, "carphone", "--frames", "0:2", "--size", "88x72")
    line = assert_one_error_line(code, err)
    assert "176x144" in line and "88x72" in line


def test_eval_other_clip_size(capsys, fitted_bundle):
    code, _, err = run(capsys, "eval", fitted_bundle, "bikes", "--frames", "0:2")
    assert "640x272" in assert_one_error_line(code, err)


def test_eval_bad_flags(capsys, fitted_bundle):
    code, _, err = run(capsys, "eval", fitted_bundle, "carphone", "--frames", "sometimes")
    assert_one_error_line(code, err)
    code, _, err = run(capsys, "eval", fitted_bundle, "carphone", "--frames", "0:2", "--size", "100")
    assert_one_error_line(code, err)
    code, _, err = run(capsys, "eval", fitted_bundle, "carphone", "--frames", "0:3", "--temporal", "4")
    assert_one_error_line(code, err)


def test_fit_zero_frames(capsys, tmp_path):
    out = tmp_path / "m.vsae"
    code, _, err = run(capsys, "fit", "carphone", "-o", out, "--frames", "500:600", "--epochs", "1", "-q")
    assert_one_error_line(code, err)
    assert not out.exists()


def test_fit_missing_video(capsys, tmp_path):
    code, _, err = run(capsys, "fit", tmp_path / "x.mp4", "-o", tmp_path / "m.vsae", "--epochs", "1", "-q")
    assert_one_error_line(code, err)


def test_argparse_rejects_bad_numbers(capsys, fitted_bundle):
    with pytest.raises(SystemExit) as exc:
        main(["eval", fitted_bundle, "carphone", "--scale", "0"])
    assert exc.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


# -- lowres + reconstruct ------------------------------------------------------------------------
@pytest.mark.parametrize("temporal", [1, 2])
def test_lowres_reconstruct_round_trip(capsys, tmp_path, fitted_bundle, temporal):
    low = tmp_path / "low.mp4"
    code, out, _ = run(capsys, "lowres", "carphone", "-o", low, "--scale", "4", "--temporal", temporal, "--frames", "0:24")
    assert code == 0
    k = len(range(0, 24, temporal))
    with av.open(str(low)) as c:
        s = c.streams.video[0]
        frames = [f for f in c.decode(s)]
        assert len(frames) == k
        assert (frames[0].width, frames[0].height) == (44, 36)
        assert float(s.average_rate) == pytest.approx(29.97 / temporal, abs=0.02)

    rebuilt = tmp_path / "rebuilt.mp4"
    code, out, err = run(
        capsys, "reconstruct", fitted_bundle, low, "-o", rebuilt, "--temporal", temporal,
        "--reference", "carphone", "--reference-frames", "0:24",
    )
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    # The stream ends on its last key; with a reference, the untransmitted tail is held so the
    # output aligns frame by frame with the 24 reference frames.
    expected = 24
    assert (k - 1) * temporal + 1 <= expected
    assert summary["frames_in"] == k and summary["frames_out"] == expected
    with av.open(str(rebuilt)) as c:
        s = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        assert float(s.average_rate) == pytest.approx(29.97, abs=0.02)
    assert len(frames) == expected
    assert frames[0].shape == (144, 176, 3)
    assert np.asarray(frames).std() > 10
    # Rebuilt from a 44x36 stream, it should still resemble the source clip.
    assert summary["psnr"] > 22 and summary["ssim"] > 0.6


def test_reconstruct_needs_size(capsys, tmp_path, tiny_codec):
    model = tmp_path / "nosize.vsae"
    bundle.save(Codec(tiny_codec.model, tiny_codec.normalization), model)
    code, _, err = run(capsys, "reconstruct", model, "carphone", "-o", tmp_path / "o.mp4")
    assert "--size" in assert_one_error_line(code, err)


# -- fit ------------------------------------------------------------------------------------------
def test_fit_command(capsys, tmp_path):
    out = tmp_path / "tiny.vsae"
    code, stdout, err = run(
        capsys, "fit", "carphone", "-o", out, "--epochs", "1", "--frames", "0:4", "--width", "4", "--batch", "2",
        "--precision", "f32", "-q",
    )
    assert code == 0, err
    assert out.is_file() and "wrote" in stdout
    loaded = bundle.load(out)
    assert loaded.model.config.width == 4
    assert loaded.meta["frame_size"] == [176, 144]
    assert loaded.meta["frames"] == 4 and loaded.meta["steps"] == 2
    assert loaded.meta["source"] == "carphone_pristine.mp4"
    assert len(loaded.meta["source_sha256"]) == 64

    code, stdout, _ = run(capsys, "info", out, "--json")
    assert code == 0
    info = json.loads(stdout)
    assert info["config"]["width"] == 4 and info["config"]["stride"] == 16
    assert info["parameters"] == loaded.model.parameter_count()
    assert info["meta"]["frame_selection"] == "0:4"
