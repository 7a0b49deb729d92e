"""Several receivers at once: the multi-`--connect` sender, and `vsae bench load` (its aggregation and a tiny run)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time

import pytest

from bench import load
from codec import bundle
from codec.errors import VsaeError
from codec.ops import Codec
from codec.video import read_video
from receiver.session import Receiver, ReceiveOptions
from sender import cli as sender_cli
from sender import session as sender_session
from sender.session import SendOptions, SendResult

FRAMES = 12


@pytest.fixture(scope="module")
def clip():
    return read_video("carphone", frames=f"0:{FRAMES}")


@pytest.fixture(scope="module")
def model_file(tiny_codec, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("load") / "tiny.vsae"
    bundle.save(tiny_codec, path)
    return str(path)


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vsae_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "codec.cli", *args]


# -- the sender: several sessions from one process ------------------------------------------------------
def test_one_sender_streams_to_two_receivers_at_once(clip, model_file, tmp_path, monkeypatch):
    """Both receivers rebuild every frame; the low-res frames are prepared once for both sessions."""
    frames, fps = clip
    model = open(model_file, "rb").read()
    calls = []
    prepare = sender_cli.prepare_low_res
    monkeypatch.setattr(sender_cli, "prepare_low_res", lambda *a: calls.append(1) or prepare(*a))
    monkeypatch.setattr(sender_session, "prepare_low_res", lambda *a: pytest.fail("send() prepared the frames again"))

    async def scenario():
        receivers = [Receiver(ReceiveOptions(port=0, output=str(tmp_path / f"out{k}.mp4"), reference=frames)) for k in range(2)]
        ports = [await r.start() for r in receivers]
        try:
            began = time.monotonic()
            results = await sender_cli.send_all(frames, fps, model, [SendOptions(port=p) for p in ports])
            elapsed = time.monotonic() - began
            stats = [await r.wait(30) for r in receivers]
        finally:
            for r in receivers:
                await r.stop()
        return results, stats, elapsed

    results, stats, elapsed = asyncio.run(scenario())
    assert len(calls) == 1
    assert all(isinstance(r, SendResult) for r in results), results
    for result, s in zip(results, stats):
        assert result.receiver_frames_out == FRAMES and result.frames_sent == FRAMES // 2
        assert result.model_bytes_sent >= len(model)
        assert s["frames_in"] == s["frames_out"] == FRAMES and s["frames_concealed"] == 0
        assert s["frames_received"] == FRAMES // 2 and s["model_transferred"]
        assert s["first_output_time"] <= s["last_output_time"]
    # Concurrent, not one after the other: both streams overlap in time.
    assert stats[0]["first_output_time"] < stats[1]["last_output_time"]
    assert stats[1]["first_output_time"] < stats[0]["last_output_time"]


def test_one_failing_session_leaves_the_other_complete(clip, model_file, tmp_path):
    """A --connect nobody listens on fails alone: the other receiver gets every frame, the JSON list reports
    both sessions, the exit status is 1 with one `vsae: error:` line."""
    frames, _ = clip
    dead = free_port()

    async def scenario():
        receiver = Receiver(ReceiveOptions(port=0, output=str(tmp_path / "out.mp4")))
        port = await receiver.start()
        try:
            proc = await asyncio.create_subprocess_exec(
                *vsae_cmd("send", "carphone", "--frames", f"0:{FRAMES}", "--model", model_file, "--json",
                          "--connect", f"127.0.0.1:{port}", "--connect", f"127.0.0.1:{dead}", "--connect-timeout", "2"),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 120)
            stats = await receiver.wait(30)
        finally:
            await receiver.stop()
        return proc.returncode, out.decode(), err.decode(), stats, port

    rc, out, err, stats, port = asyncio.run(scenario())
    assert rc == 1
    report = json.loads(out.strip().splitlines()[-1])
    assert [r["connect"] for r in report] == [f"127.0.0.1:{port}", f"127.0.0.1:{dead}"]
    assert report[0]["ok"] and report[0]["receiver_frames_out"] == FRAMES and report[0]["frames_sent"] == FRAMES // 2
    assert not report[1]["ok"] and "no vsae receiver" in report[1]["error"] and "frames" not in report[1]
    errors = [line for line in err.splitlines() if line.startswith("vsae: error:")]
    assert len(errors) == 1 and "1 of 2 sessions failed" in errors[0] and str(dead) in errors[0]
    assert "Traceback" not in err
    assert stats["frames_out"] == FRAMES and stats["frames_concealed"] == 0


@pytest.mark.parametrize("connects, message", [
    (["127.0.0.1:9", "127.0.0.1:9"], "given twice"),
    (["127.0.0.1:9", "127.0.0.2:9"], "need --bind"),
    (["127.0.0.1:9", "nowhere"], "--connect"),
])
def test_bad_connect_lists_are_one_error_line(model_file, capsys, connects, message):
    from codec.cli import main

    args = ["send", "carphone", "--model", model_file, "--frames", "0:2"]
    for c in connects:
        args += ["--connect", c]
    assert main(args) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("vsae: error:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err


# -- bench load: pure aggregation -----------------------------------------------------------------------
def receiver_stats(frames=120, concealed=0, dropped=0, p95=150.0, first=100.0, last=104.0, pipeline=40.0, psnr=32.0):
    return {"frames_in": frames, "frames_out": frames, "frames_concealed": concealed, "frames_dropped_backlog": dropped,
            "latency_ms": p95 - 20, "latency_ms_p95": p95, "first_output_time": first, "last_output_time": last,
            "fps_pipeline": pipeline, "psnr": psnr}


def test_summarize_run_counts_rebuilt_frames_over_the_shared_window():
    rows = [receiver_stats(first=100.0, last=104.0),
            receiver_stats(concealed=20, dropped=6, p95=900.0, first=100.5, last=105.0, pipeline=20.0, psnr=30.0),
            receiver_stats(p95=600.0, first=101.0, last=103.0),  # no drops, but too late
            None]  # a receiver that produced no stats
    s = load.summarize_run(rows, fps=30.0)
    assert s["receivers"] == 4 and s["completed"] == 3
    assert s["frames_good"] == 120 + 100 + 120
    assert s["window_s"] == 5.0  # first output 100.0 to last 105.0, across receivers
    assert s["aggregate_fps"] == 68.0
    assert s["demand_fps"] == 120.0
    assert s["realtime"] == 1  # only the first: the second dropped frames, the third broke the latency bound
    assert s["dropped_backlog"] == 6 and s["concealed"] == 20
    assert s["sum_fps_pipeline"] == 100.0
    assert s["latency_ms_p95_max"] == 900.0 and s["latency_ms"] == 580.0
    assert s["psnr"] == pytest.approx((32 + 30 + 32) / 3, abs=1e-3)
    assert load.summarize_run([receiver_stats()], fps=30.0, latency_bound_ms=100.0)["realtime"] == 0


def test_summarize_run_without_any_output():
    s = load.summarize_run([None, None], fps=30.0)
    assert s["completed"] == 0 and s["aggregate_fps"] is None and s["realtime"] == 0 and s["demand_fps"] == 60.0


def test_capacity_is_the_largest_n_that_all_kept_up():
    def row(cores, n, kept, fps, outcome="completed"):
        return {"cores": cores, "receivers": n, "realtime": kept, "aggregate_fps": fps, "outcome": outcome}

    rows = [row(1, 1, 1, 30.0), row(1, 2, 1, 41.0), row(1, 4, 0, 38.0),
            row(2, 1, 1, 30.0), row(2, 2, 2, 60.0), row(2, 4, 4, 80.0, outcome="failed"),
            row(4, 2, 1, None)]
    cap = {c["cores"]: c for c in load.capacity(rows)}
    assert cap[1]["realtime_sessions"] == 1 and cap[1]["peak_aggregate_fps"] == 41.0
    assert cap[2]["realtime_sessions"] == 2 and cap[2]["peak_aggregate_fps"] == 60.0  # the failed run does not count
    assert cap[4]["realtime_sessions"] == 0 and cap[4]["peak_aggregate_fps"] is None
    md = load.format_tables([{**r, "error": None} for r in rows], "settings line")
    assert md.startswith("settings line\n")
    assert "| 1 | 2 | completed | 1/2 | 41 |" in md
    assert "| 2 | 2 | 60 | 1,2,4 |" in md  # peak over completed runs only


def test_parse_counts_and_placement():
    assert load.parse_counts("1,2,4,2", "--receivers") == [1, 2, 4]
    for bad in ("", "0", "1,x", "-1"):
        with pytest.raises(VsaeError, match="--cores"):
            load.parse_counts(bad, "--cores")
    assert load.placement(1, [0, 1, 2]) == ([0], [1])
    assert load.placement(3, [0, 1, 2]) == ([0, 1, 2], None)  # no core left: the sender runs unpinned
    with pytest.raises(VsaeError, match="--cores 4"):
        load.placement(4, [0, 1, 2])


# -- bench load: real runs ------------------------------------------------------------------------------
BENCH_FRAMES = 48  # 1.6 s at carphone's 30 fps


def test_tiny_load_run_writes_sane_results(model_file, tmp_path):
    out = tmp_path / "load"
    assert load.main(["--out", str(out), "--model", model_file, "--cores", "1", "--receivers", "1,2",
                      "--frames", f"0:{BENCH_FRAMES}"]) == 0
    result = json.loads((out / "load.json").read_text())
    assert result["config"]["frames"] == BENCH_FRAMES and result["config"]["cores"] == [1]
    runs = result["runs"]
    assert [(r["cores"], r["receivers"]) for r in runs] == [(1, 1), (1, 2)]
    for r in runs:
        n = r["receivers"]
        assert r["outcome"] == "completed" and r["completed"] == n and len(r["receiver_cpus"]) == 1
        assert len(r["per_receiver"]) == n and len({p["port"] for p in r["per_receiver"]}) == n
        assert len(r["sender"]) == n and all(s.get("ok", True) for s in r["sender"])
        for p in r["per_receiver"]:
            assert p["rc"] == 0 and p["frames_out"] == p["frames_in"] == BENCH_FRAMES and p["cpu_s"] > 0
            assert not p["model_transferred"]  # the receivers held the model
        assert 0 < r["frames_good"] <= n * BENCH_FRAMES
        # Rebuilt frames per second cannot beat the demand by more than the window's one-frame slack.
        assert 0 < r["aggregate_fps"] <= r["demand_fps"] * 1.25
        assert r["demand_fps"] == pytest.approx(n * 29.97, abs=0.1)
        assert 0 <= r["realtime"] <= n and r["sender_cpu_s"] > 0 and 0 <= r["other_load"] <= os.cpu_count()
        assert r["latency_ms_p95_max"] >= r["latency_ms"] > 0
    assert (out / "load.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "load.md").read_text()
    assert "| 1 | 1 | completed |" in md and "| 1 | 2 | completed |" in md
    assert not list(out.glob("runs/*/*.mp4"))  # videos removed unless --keep-video


def test_failed_run_is_reported_and_leaves_no_process(tiny_codec, tmp_path):
    """A sender that refuses the model (fitted at another size) fails the run quickly; every receiver
    process it started is ended and reaped."""
    other = tmp_path / "other.vsae"
    bundle.save(Codec(tiny_codec.model, tiny_codec.normalization, meta={"frame_size": [88, 72]}), other)
    spec = load.RunSpec(video="carphone", model=str(other), frames="0:8", fps=30.0, stream_s=8 / 30, scale=4, temporal=2,
                        kbps=20.0, codec="vp8", reference=False, ship_model=False, keep_video=False)
    began = time.monotonic()
    row = load.run_once(spec, 1, 2, sorted(os.sched_getaffinity(0)), tmp_path / "run")
    assert time.monotonic() - began < load.RECEIVER_FINISH_S
    assert row["outcome"] == "failed" and "fitted at 88x72" in row["error"]
    assert row["completed"] == 0 and len(row["per_receiver"]) == 2
    for p in row["per_receiver"]:
        assert p["rc"] is not None and p["port"]
        with pytest.raises(ProcessLookupError):
            os.kill(p["pid"], 0)


def test_bench_load_bad_input_is_one_error_line(capsys):
    assert load.main(["--out", "/nonexistent/x", "--cores", "1024"]) == 1
    assert load.main(["--out", "/nonexistent/x", "--receivers", "0"]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("vsae: error:")]
    assert len(lines) == 2 and "--cores 1024" in lines[0] and "--receivers" in lines[1]
