"""Stream-shape adaptation: the rate-quality table (sender/shapes.py), the receiver following shape changes
(receiver/worker.py), and a call whose shape changes mid-stream (one output per source frame throughout)."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import numpy as np
import pytest

from codec.errors import VsaeError
from codec.video import to_uint8
from receiver.worker import ReconstructWorker, StreamInfo
from sender.session import AdaptiveLowResTrack, SendOptions, SessionError, low_res_size, send
from sender.shapes import SATURATED_GAIN_DB, SWITCH_GAIN_DB, Shape, ShapeTable, ShapeTableError, load_table
from tests.calls import scheduled_call

H, W = 144, 176


def rd_result(fps: float = 15.0, codec: str = "vp8") -> dict:
    """A `vsae bench rd` result in miniature: a plain codec that wins at high rates, a sparse small shape at low
    ones, a middle one between."""
    def method(name, scale, temporal, points, c=codec):
        return {"name": name, "codec": c, "scale": scale, "temporal": temporal,
                "points": [{"target_kbps": k, "kbps": k, "psnr": p} for k, p in points]}

    return {"fps": fps, "methods": [
        method(codec if codec != "h264" else "x264", 1, 1, [(20, 24.0), (60, 31.0), (100, 35.0), (200, 36.0)],
               c=codec if codec != "h264" else "x264"),
        method(f"vsae-{codec}-s8-t4", 8, 4, [(3, 27.0), (8, 29.0), (12, 29.2)]),
        method(f"vsae-{codec}-s4-t2", 4, 2, [(6, 26.0), (20, 31.0), (60, 33.0), (80, 33.1)]),
        {"name": "vsae-envelope", "codec": None, "scale": None, "temporal": None, "points": []},
        method(f"{codec}-lowres-bicubic", None, None, [(5, 20.0)]),
    ]}


@pytest.fixture()
def table_path(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps([rd_result()]))
    return path


def test_table_reads_the_shapes_of_the_calls_codec(table_path):
    table = load_table(table_path, "vp8", fps=15.0)
    assert {c.shape for c in table.curves} == {Shape(1, 1, True), Shape(8, 4), Shape(4, 2)}
    assert table.predict(Shape(8, 4), 2.0) is None  # under its lowest measured rate: it cannot hold it
    assert table.predict(Shape(8, 4), 50.0) == 29.2  # saturated: more bits buy nothing
    assert table.predict(Shape(4, 2), 20.0) == pytest.approx(31.0)
    assert 26.0 < table.predict(Shape(4, 2), 10.0) < 31.0


@pytest.mark.parametrize("kbps,best", [(4.0, Shape(8, 4)), (30.0, Shape(4, 2)), (190.0, Shape(1, 1, True))])
def test_the_best_shape_follows_the_rate(table_path, kbps, best):
    table = load_table(table_path, "vp8", fps=15.0)
    assert table.best(lambda s: kbps)[0] == best


def test_a_switch_needs_a_real_gain(table_path):
    table = load_table(table_path, "vp8", fps=15.0)
    # At 9 kbps s8t4 gives ~29.0, s4t2 ~27.6 + ...: find a rate where the two are within the switch gain.
    rate = next(r / 10 for r in range(60, 200) if abs(table.predict(Shape(8, 4), r / 10) - table.predict(Shape(4, 2), r / 10)) < SWITCH_GAIN_DB / 2)
    for current in (Shape(8, 4), Shape(4, 2)):
        assert table.choose(current, lambda s: rate)[0] == current  # no flapping between near-equals
    assert table.choose(Shape(4, 2), lambda s: 3.0)[0] == Shape(8, 4)  # s4t2 cannot hold 3 kbps at all


def test_a_saturated_shape_gives_way_on_a_smaller_gain(table_path):
    table = load_table(table_path, "vp8", fps=15.0)
    # At 13.5 kbps s8t4 is past its highest measured rate (12): it cannot spend the rest. s4t2 is predicted a little
    # better, by less than a switch needs elsewhere.
    gain = table.predict(Shape(4, 2), 13.5) - table.predict(Shape(8, 4), 13.5)
    assert SATURATED_GAIN_DB <= gain < SWITCH_GAIN_DB
    assert table.saturated(Shape(8, 4), 13.5) and not table.saturated(Shape(4, 2), 13.5)
    assert table.choose(Shape(8, 4), lambda s: 13.5)[0] == Shape(4, 2)
    assert table.choose(Shape(4, 2), lambda s: 13.5)[0] == Shape(4, 2)  # and not back


def test_a_table_at_another_frame_rate_is_scaled_by_bits_per_frame(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(rd_result(fps=30.0)))
    table = load_table(path, "vp8", fps=15.0)
    assert table.measured_fps == 30.0 and table.fps == 15.0
    assert table.predict(Shape(4, 2), 10.0) == pytest.approx(31.0)  # 20 kbps at 30 frames/s


def test_h264_calls_read_the_x264_rows(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(rd_result(codec="h264")))
    table = load_table(path, "h264", fps=15.0)
    assert Shape(1, 1, True, "h264") in {c.shape for c in table.curves}


def test_a_table_measured_after_the_models_frames_is_preferred(tmp_path):
    # One results.json of `vsae bench rd --setting both --split half`: the model's shapes on its own frames and on
    # frames after them. A call is made of the latter: their table is the one read, whatever the order.
    seen = dict(rd_result(), clip="prior", setting="insample", split=None)
    after = dict(rd_result(), clip="prior", setting="heldout", split="half")
    for method in after["methods"]:
        if method["name"].startswith("vsae-"):
            method["points"] = [dict(p, psnr=p["psnr"] - 8.0) for p in method["points"]]
    other_clip = dict(rd_result(), clip="other", setting="heldout", split="half")
    path = tmp_path / "r.json"
    path.write_text(json.dumps([seen, after, other_clip]))
    table = load_table(path, "vp8", fps=15.0)
    assert table.unseen and table.setting == "heldout-half"
    assert table.predict(Shape(4, 2), 20.0) == pytest.approx(23.0)
    assert table.best(lambda s: 60.0)[0] == Shape(1, 1, True)  # the plain codec, where the seen table picks s4t2
    path.write_text(json.dumps([seen]))
    seen_only = load_table(path, "vp8", fps=15.0)
    assert not seen_only.unseen and seen_only.setting == "insample"
    assert seen_only.best(lambda s: 60.0)[0] == Shape(4, 2)
    path.write_text(json.dumps([seen, dict(after, split="even")]))
    assert load_table(path, "vp8", fps=15.0).setting == "heldout-even"  # between the model's frames: still not a call's
    path.write_text(json.dumps([dict(after, fit_frames="given")]))  # `bench rd --model M`: M may have seen those frames
    assert not load_table(path, "vp8", fps=15.0).unseen


def test_the_sender_says_when_its_table_was_measured_on_the_models_own_frames(tmp_path, tiny_codec, capsys):
    from codec import bundle
    from codec.cli import main

    model = tmp_path / "m.vsae"
    bundle.save(tiny_codec, model)
    notes = {}
    for setting, split in (("insample", None), ("heldout", "half")):
        (tmp_path / "t.json").write_text(json.dumps([dict(rd_result(), clip="c", setting=setting, split=split)]))
        main(["send", "carphone", "--frames", "0:4", "--model", str(model), "--connect", "127.0.0.1:9", "--retries", "0",
              "--connect-timeout", "1", "--shapes", str(tmp_path / "t.json")])
        notes[setting] = capsys.readouterr().err
    assert "measured on its model's own frames" in notes["insample"] and "--setting heldout --split half" in notes["insample"]
    assert "measured on frames after its model's" in notes["heldout"] and "note:" not in notes["heldout"]


def test_the_summary_says_which_frames_were_plain():
    from receiver.cli import summary_line

    stats = {"frames_out": 60, "frames_in": 60, "frames_concealed": 0, "psnr": 29.7, "psnr_bicubic": 29.7, "codec": "vp8"}
    assert "plain" not in summary_line(stats)
    assert "60 frames plain vp8 at full size (shown as decoded)" in summary_line(dict(stats, frames_plain=60))


@pytest.mark.parametrize("content,why", [
    (None, "no such shape table"),
    ("not json", "not a shape table"),
    (json.dumps({"methods": "x", "fps": 15}), "not a shape table"),
    (json.dumps({"methods": [], "fps": 0}), "no frame rate"),
    (json.dumps({"methods": [], "fps": 15}), "no shape measured with vp8"),
    (json.dumps({"fps": 15, "methods": [{"name": "vsae-vp8-s4-t2", "codec": "vp8", "scale": 4, "temporal": 2,
                                         "points": [{"kbps": -1, "psnr": 30}]}]}), "positive kbps"),
])
def test_bad_tables_are_one_clear_error(tmp_path, content, why):
    path = tmp_path / "t.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ShapeTableError, match=why) as info:
        load_table(path, "vp8", fps=15.0)
    assert isinstance(info.value, VsaeError)


def test_cli_refuses_a_bad_table_in_one_line(tmp_path, tiny_codec, capsys):
    from codec import bundle
    from codec.cli import main

    model = tmp_path / "m.vsae"
    bundle.save(tiny_codec, model)
    (tmp_path / "t.json").write_text("{")
    code = main(["send", "carphone", "--frames", "0:4", "--model", str(model), "--connect", "127.0.0.1:9",
                 "--shapes", str(tmp_path / "t.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("vsae: error:") and "shape table" in err[0]


# -- the receiver follows ------------------------------------------------------------------------------------------
def shaped(frames: np.ndarray, shape: Shape) -> np.ndarray:
    from codec.video import resize, to_tensor

    if shape.plain:
        return frames
    return to_uint8(resize(to_tensor(frames), low_res_size(H, W, shape.scale)))


@pytest.mark.parametrize("late", [False, True], ids=["announced", "message-late"])
def test_the_worker_follows_shape_changes_with_one_output_per_source_frame(carphone, tiny_codec, tmp_path, late):
    """Keys at s4t2, then s8t4, then the plain codec at full size, then s4t2 again: every source frame is output
    once, in order; the plain run shows its frames as decoded; nothing is concealed. `late`: each shape message
    comes 0.2 s after its key (the control channel behind the video): the worker waits for it."""
    source = to_uint8(carphone)  # 24 frames
    n = len(source)
    plan = [(0, Shape(4, 2)), (6, Shape(8, 4)), (14, Shape(1, 1, True)), (18, Shape(4, 2))]
    shown: dict[int, np.ndarray] = {}
    order: list[int] = []

    def on_output(index, image, _bicubic):
        order.append(index)
        shown[index] = image

    worker = ReconstructWorker(tiny_codec, StreamInfo((H, W), 15.0, 2, n, adaptive=True, low_size=low_res_size(H, W, 4)),
                               str(tmp_path / "o.mp4"), 1, "latent", reference=source, on_output=on_output)
    keys = []
    for k, (first, shape) in enumerate(plan):
        end = plan[k + 1][0] if k + 1 < len(plan) else n
        size = (H, W) if shape.plain else low_res_size(H, W, shape.scale)
        announce = lambda first=first, shape=shape, size=size: worker.schedule_shape(first, shape.temporal, shape.plain, size)  # noqa: E731
        frames = shaped(source[first:end:shape.temporal], shape)
        for j, index in enumerate(range(first, end, shape.temporal)):
            if j == 0 and first > 0 and late:
                threading.Timer(0.2, announce).start()
            elif j == 0:
                announce()
            worker.submit(index, frames[j])
            time.sleep(0.15)  # about the worker's pace: no key is dropped from its backlog
            keys.append(index)
    worker.finish(n, timeout=60)
    assert worker.error is None
    stats = worker.stats()
    assert order == list(range(n))  # one output per source frame, in order
    assert stats["frames_out"] == n and stats["frames_concealed"] == 0
    assert [run[0] for run in stats["shape_runs"]][1:] == [0, 6, 14, 18]  # the config's first shape, then each change
    assert stats["frames_plain"] == 18 - 14
    for i in range(14, 18):
        assert np.abs(shown[i].astype(int) - source[i].astype(int)).max() <= 1, i  # shown as decoded
    assert not np.array_equal(shown[18], source[18])  # the model's rebuild again
    assert stats["shape_unannounced"] == 0
    assert (stats["shape_waits"] >= 3) if late else (stats["shape_waits"] == 0)


def test_a_stream_that_ends_in_a_plain_run_conceals_nothing(carphone, tiny_codec, tmp_path):
    """The model rests through a plain run: at the end of the stream it has no frames to hold (it once counted the
    whole last plain run as concealed)."""
    source = to_uint8(carphone)[:12]
    info = StreamInfo((H, W), 15.0, 2, 12, adaptive=True, low_size=low_res_size(H, W, 4))
    worker = ReconstructWorker(tiny_codec, info, str(tmp_path / "o.mp4"), 1, "latent", reference=source)
    for index in range(0, 4, 2):
        worker.submit(index, shaped(source[index:index + 1], Shape(4, 2))[0])
    worker.schedule_shape(4, 1, True, (H, W))
    for index in range(4, 12):
        worker.submit(index, source[index])
        time.sleep(0.05)
    worker.finish(12, timeout=60)
    stats = worker.stats()
    assert worker.error is None and stats["frames_out"] == 12
    assert stats["frames_plain"] == 8 and stats["frames_concealed"] == 0


def test_an_unannounced_size_is_rebuilt_as_the_shape_it_has(carphone, tiny_codec, tmp_path):
    """A key of a new size whose message never comes: after SHAPE_WAIT_S it is rebuilt from its own size."""
    source = to_uint8(carphone)[:8]
    worker = ReconstructWorker(tiny_codec, StreamInfo((H, W), 15.0, 2, 8, adaptive=True, low_size=low_res_size(H, W, 4)),
                               str(tmp_path / "o.mp4"), 1, "latent")
    for index in range(0, 8, 2):
        worker.submit(index, shaped(source[index:index + 1], Shape(4, 2) if index < 4 else Shape(8, 2))[0])
        time.sleep(0.15)
    worker.finish(8, timeout=60)
    stats = worker.stats()
    assert worker.error is None and stats["frames_out"] == 8
    assert stats["shape_unannounced"] == 1 and stats["shape_waits"] == 1


# -- the sender picks -----------------------------------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_the_track_starts_in_the_best_shape_for_its_first_target_and_switches_with_the_estimate(table_path, carphone):
    table = load_table(table_path, "vp8", fps=15.0)
    clock = Clock()
    track = AdaptiveLowResTrack(to_uint8(carphone), 24, 15.0, 6000, "vp8", 200.0, table, clock=clock, start_kbps=200.0)
    assert track.shape == Shape(1, 1, True) and track.encoder_size() == (H, W)
    assert track.shape_log[0]["reason"] == "start"
    estimator = track.estimator
    clock.t += 5
    estimator.on_report(clock(), 0.5, 0.05, sending_kbps=track.sending_kbps())  # heavy loss: x0.75
    for _ in range(12):
        clock.t += 1
        estimator.on_report(clock(), 0.5, 0.05, sending_kbps=track.sending_kbps())
        track.follow_estimate()
    assert track.kbps == pytest.approx(track.min_kbps, abs=0.5) and track.min_kbps == 20 and track.shape == Shape(4, 2), (track.kbps, track.shape)
    assert track.temporal == 2 and track.encoder_size() == low_res_size(H, W, 4)
    assert [s["shape"] for s in track.shape_log] == ["plain", "s4t2"]
    assert track.keyframe_wanted  # a new shape starts at a keyframe


# -- a call ------------------------------------------------------------------------------------------------------------
def test_a_call_whose_shape_changes_keeps_one_output_per_source_frame(model_bytes, table_path, tmp_path, monkeypatch):
    """A loopback call with the estimate stepped high, low, and up again (the link's part is not the subject here:
    tests/test_bwe.py and the fault lab): the sender changes shape at keys and says so, the receiver follows,
    and every source frame is output once."""
    fps, loops = 8.0, 4  # 48 frames, 6 s
    table_path.write_text(json.dumps(rd_result(fps=fps)))
    table = load_table(table_path, "vp8", fps=fps)
    # Wire kbps from the first estimate on (the floor: 10 kbps).
    frames, stats, result = scheduled_call(monkeypatch, tmp_path, model_bytes, table,
                                           [(0.0, 400.0), (1.2, 6.0), (3.5, 60.0)], fps, loops)
    log = result.extra["shape_log"]
    assert [s["shape"] for s in log] == ["plain", "s8t4", "s4t2"], log
    assert result.extra["shape_table_setting"] == table.setting  # how its table was measured, in the report
    firsts = [s["first"] for s in log]
    assert stats["frames_out"] == len(frames) * loops == result.receiver_frames_out
    assert [run[0] for run in stats["shape_runs"]][1:] == firsts  # the receiver followed each change at its key
    assert stats["shape_unannounced"] == 0
    assert stats["frames_concealed"] == 0
    assert stats["frames_plain"] == firsts[1]


def test_shapes_refuse_the_guard(table_path):
    table = load_table(table_path, "vp8", fps=15.0)
    with pytest.raises(SessionError, match="one shape"):
        asyncio.run(send(np.zeros((4, H, W, 3), np.uint8), 15.0, b"x", SendOptions(guard=True, shape_table=table)))
