"""Benchmarks: BD-rate on curves with a known answer, bitrate from bytes, tiny end-to-end rd and speed runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench.bdrate import bd_rate, break_even_s, envelope
from bench.codecs import transcode
from bench.rd import split, target_rates
from codec import bundle
from codec.ops import Codec
from codec.video import read_video


def curve(rates, offset_db=0.0):
    return [(r, 20 + 10 * math.log10(r) + offset_db) for r in rates]


RATES = (10, 20, 40, 80, 160)


def test_bd_rate_of_half_and_double_the_rate():
    anchor = curve(RATES)
    half = [(r / 2, q) for r, q in anchor]
    double = [(r * 2, q) for r, q in anchor]
    assert bd_rate(anchor, half)[0] == pytest.approx(-50.0, abs=1e-6)
    assert bd_rate(anchor, double)[0] == pytest.approx(100.0, abs=1e-6)
    assert bd_rate(anchor, anchor)[0] == pytest.approx(0.0, abs=1e-9)


def test_bd_rate_over_the_overlap_only():
    """A 3 dB better curve on this 10 dB/decade slope needs 10^-0.3 of the rate: -49.9 %, on the overlap."""
    anchor = curve(RATES)
    better = curve(RATES, offset_db=3.0)
    value, note = bd_rate(anchor, better)
    assert note is None
    assert value == pytest.approx((10**-0.3 - 1) * 100, abs=1e-6)


def test_bd_rate_without_overlap_is_nan_with_a_reason():
    value, note = bd_rate(curve(RATES), curve(RATES, offset_db=50.0))
    assert math.isnan(value) and "no common PSNR range" in note
    value, note = bd_rate(curve(RATES), [(10, 30.0)])
    assert math.isnan(value) and "two rate points" in note


def test_envelope_drops_dominated_points():
    points = [(10, 30.0), (12, 29.0), (20, 33.0), (20, 32.0), (40, 32.5), (50, 35.0)]
    assert envelope(points) == [(10, 30.0), (20, 33.0), (50, 35.0)]


def test_break_even_is_model_bits_over_the_saved_rate():
    anchor = curve(RATES)
    half = [(r / 2, q) for r, q in anchor]
    # Middle of the common range: the anchor needs 40 kbps there, `half` 20 kbps: 20 kbps saved.
    seconds, note = break_even_s(anchor, half, model_bytes=1_000_000)
    assert note is None and seconds == pytest.approx(8_000_000 / 20_000, rel=1e-6)
    seconds, note = break_even_s(half, anchor, model_bytes=1)
    assert seconds == math.inf


def test_target_rates_scale_with_resolution():
    assert target_rates(144, 176) == [5, 10, 20, 40, 80, 160, 300]
    bigger = target_rates(288, 352)
    assert bigger[0] == pytest.approx(5 * 4**0.75, abs=0.1)


def test_split_settings():
    assert split(120, "heldout") == ("even", slice(1, 120, 2))
    assert split(120, "heldout", "half") == ("0:60", slice(60, 120))
    assert split(120, "insample") == ("all", slice(0, 120))


@pytest.mark.parametrize("codec", ["vp8", "h264", "vp9", "av1"])
def test_transcode_counts_every_encoded_byte(codec):
    frames, fps = read_video("carphone", "0:8")
    low = frames[:, :36, :44].copy()  # smaller than AV1's minimum: padded, then cropped back
    a = transcode(low, codec, 30, fps)
    b = transcode(low, codec, 30, fps)
    assert a.frames.shape == low.shape
    assert a.bytes == b.bytes > 0  # realtime single-thread encoding is deterministic
    big = transcode(low, codec, 300, fps)
    assert big.bytes > a.bytes  # the target bitrate steers the byte count


def test_tiny_rd_run_writes_valid_results(tiny_codec, tmp_path):
    from codec.cli import main

    model = tmp_path / "tiny.vsae"
    bundle.save(tiny_codec, model)
    out = tmp_path / "rd"
    args = ["bench", "rd", "carphone", "--out", str(out), "--model", str(model), "--max-frames", "16",
            "--rates", "10,60", "--scales", "4", "--temporals", "1,2", "--codecs", "vp8,h264"]
    assert main(args) == 0
    (result,) = json.loads((out / "results.json").read_text())
    assert result["clip"] == "carphone_pristine" and result["setting"] == "heldout" and result["frames"] == 8
    assert result["split"] == "even" and result["fit_frames"] == "given"  # --model: which frames it saw is not known
    assert result["model_bytes"] == model.stat().st_size
    names = {m["name"] for m in result["methods"]}
    assert {"vp8", "x264", "vsae-vp8-s4-t1", "vsae-vp8-s4-t2", "vsae-x264-s4-t2", "vp8-lowres-bicubic",
            "x264-lowres-bicubic", "vsae-envelope"} <= names
    for m in result["methods"]:
        for p in m["points"]:
            assert set(p) >= {"target_kbps", "kbps", "psnr", "psnr_y", "ssim"}
            assert p["kbps"] > 0 and 5 < p["psnr"] < 60 and 0 < p["ssim"] <= 1
    # Bitrate is encoded bytes x 8 x fps / frames: recompute one point independently.
    frames, fps = read_video("carphone", "0:16")
    coded = transcode(frames[1:16:2], "vp8", 10, fps / 2)  # the odd frames: a clip at half the rate
    vp8 = next(m for m in result["methods"] if m["name"] == "vp8")
    assert vp8["points"][0]["kbps"] == pytest.approx(coded.bytes * 8 * (fps / 2) / 8 / 1000, abs=1e-3)
    assert set(result["bd_rate"]) == {"vp8", "x264"} and set(result["break_even_s"]) == {"vp8", "x264"}
    for codec, value in result["bd_rate"].items():
        assert value is None or np.isfinite(value)
        assert value is not None or codec in result["bd_rate_notes"]
    assert (out / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "carphone_pristine-heldout-even" / "rd.png").exists()
    assert "| vsae-envelope |" not in (out / "summary.md").read_text()
    assert "BD-rate of vsae-envelope" in (out / "summary.md").read_text()


def test_tiny_speed_run(tmp_path):
    from codec.cli import main

    out = tmp_path / "speed"
    assert main(["bench", "speed", "--out", str(out), "--sizes", "64x48", "--iterations", "1,2", "--temporals", "1,2",
                 "--repeat", "2", "--fit-epochs", "1", "--device", "cpu"]) == 0
    (row,) = json.loads((out / "speed.json").read_text())["rows"]
    assert set(row["throughput_fps"]) == {"n1_t1", "n1_t2", "n2_t1", "n2_t2"}
    assert all(v > 0 for v in row["throughput_fps"].values())
    assert {"decode", "upsample", "reproject_x1", "reproject_x2", "interpolate_t2_per_frame"} <= set(row["stages_ms"])
    assert row["fit_s_per_epoch"] > 0
    assert "n=1 T=2" in (out / "speed.md").read_text()


def test_tiny_speed_run_with_several_methods(tmp_path):
    from codec.cli import main

    out = tmp_path / "speed"
    assert main(["bench", "speed", "--out", str(out), "--sizes", "64x48", "--iterations", "1", "--temporals", "2",
                 "--repeat", "2", "--skip-fit", "--device", "cpu", "--methods", "motion,flow:fast:received"]) == 0
    (row,) = json.loads((out / "speed.json").read_text())["rows"]
    assert set(row["methods"]) == {"motion", "flow:fast:received"}
    for per in row["methods"].values():
        assert per["throughput_fps"]["n1_t2"] > 0 and per["stages_ms"]["interpolate_t2_per_frame"] > 0
    assert row["throughput_fps"] == row["methods"]["motion"]["throughput_fps"]  # the first method, as before
    assert "| 64x48 | cpu | flow:fast:received |" in (out / "speed.md").read_text()


def test_bench_method_specs():
    from bench.temporal import parse_method

    assert parse_method("blend") == ("blend", None)
    assert parse_method("motion") == ("motion", None)
    method, options = parse_method("flow:medium:received")
    assert method == "flow" and options.preset == "medium" and options.source == "received"
    for bad in ("flow:slow", "motion:fast", "flow:fast:keys:x", "nope", "blend:x"):
        with pytest.raises(ValueError):
            parse_method(bad)


def test_tiny_temporal_run(tiny_codec, tmp_path):
    """True keys: every method's in-betweens scored on the skipped frames only; flow beats the blend."""
    from codec.cli import main

    model = tmp_path / "tiny.vsae"
    bundle.save(Codec(tiny_codec.model, tiny_codec.normalization, meta={"frame_size": [176, 144]}), model)
    out = tmp_path / "temporal"
    assert main(["bench", "temporal", "carphone", "--model", str(model), "--frames", "0:9", "--out", str(out),
                 "--temporals", "2,4", "--keys", "true,x4", "--methods", "blend,flow"]) == 0
    result = json.loads((out / "temporal-carphone-176x144.json").read_text())
    rows = {(r["keys"], r["temporal"]): r for r in result["rows"]}
    assert set(rows) == {("true", 2), ("true", 4), ("x4", 2), ("x4", 4)}
    assert rows["true", 2]["in_betweens"] == 4 and rows["true", 4]["in_betweens"] == 6
    assert rows["true", 2]["psnr"]["flow"] > rows["true", 2]["psnr"]["blend"]
    assert "| true | 2 |" in (out / "temporal-carphone-176x144.md").read_text()
    out2 = tmp_path / "interp"
    assert main(["bench", "temporal", "--speed", "--out", str(out2), "--sizes", "64x48", "--threads", "1",
                 "--temporals", "2", "--repeat", "1", "--methods", "motion,flow"]) == 0
    (row,) = json.loads((out2 / "interp-speed.json").read_text())["rows"]
    assert set(row["ms_per_frame"]) == {"motion", "flow"} and row["ms_per_frame"]["flow"]["threads1_t2"] > 0


def test_liveview_summary_and_table():
    from bench.liveview import _summary, table

    assert _summary([]) == {"count": 0, "median_ms": None, "p95_ms": None}
    s = _summary([float(v) for v in range(1, 101)])
    assert s["count"] == 100 and s["median_ms"] == 50.5 and s["p95_ms"] == 95.0 and s["min_ms"] == 1 and s["max_ms"] == 100
    run = {"seconds": 10.0, "capture": {"capture_fps": 15.0, "captured": 150, "dropped": 1},
           "receiver": {"frames_out": 149, "frames_concealed": 1, "latency_ms": 90.0, "latency_ms_p95": 120.0},
           "browser_frames_decoded": {"rebuilt": 148, "bicubic": 147},
           "capture_to_display": {"rebuilt": _summary([]), "bicubic": s}}
    row = table([run]).splitlines()[-1]
    assert row.startswith("| 10 s | 15.0 | 150 | 1 | 149 (1) | 148 / 147 | 50.5 / 95.0, bicubic, 100 |")
