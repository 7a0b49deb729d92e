"""`vsae bench soak`: stream a looped clip for a long time and check that the receiver neither grows nor stalls.

Runs the real `vsae recv` and `vsae send` as two processes on loopback (receiver.demo.run_stream): the
sender loops the clip (`--duration`, whole passes), the receiver scores every output frame against the
looped reference (`--reference-loop`) and writes a sample every SAMPLE_INTERVAL_S (`--samples`): its RSS,
frames out, output fps over the interval, frames received / concealed / dropped.

The verdict (`verdict()`), after a warm-up of WARMUP_S seconds (model load, first allocations, codec
and socket buffers filling); the warm-up's samples are those at t <= WARMUP_S (+ a quarter interval of
sampler timing slack):
  * memory: the RSS level at a sample is the median of it and the RSS_LEVEL_SAMPLES - 1 samples before it
    (5: 50 s). Large tensors come and go every frame, and a receiver that falls behind (a busy CPU)
    conceals frames for a while with a larger working set (measured: +5-7% for 20-30 s, back after), so
    single samples jump; a leak raises every sample and shows in the level. The highest level after the
    warm-up is at most MAX_RSS_GROWTH (5%) above the level at the warm-up's last sample;
  * no stall: every interval after the warm-up that ends before the stream's end has an output rate of at
    least STALL_FRACTION of the stream's frame rate, and no two samples are more than MAX_GAP_FACTOR
    intervals apart (a frozen receiver process);
  * enough data: at least one warm-up sample and MIN_SAMPLES_AFTER_WARMUP samples after it.

Writes OUT/soak.json (settings, samples, verdict, the receiver's and sender's stats), OUT/soak.png (RSS
and output fps against time, warm-up shaded, the 5% band and the stall line drawn) and OUT/soak.md.
Exits 0 when the verdict passes and 1 when it fails (the files are written either way).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from codec.argtypes import positive_float
from codec.errors import VsaeError

DEFAULT_VIDEO = "carphone"
DEFAULT_MINUTES = 30.0
# The demo's model: fitted on the even frames for 4 minutes, cached (as bench faults uses it).
FIT_FRAMES, FIT_MINUTES = "even", 4.0
WARMUP_S = 60.0
MAX_RSS_GROWTH = 0.05
RSS_LEVEL_SAMPLES = 5
STALL_FRACTION = 0.5
MAX_GAP_FACTOR = 2.0
MIN_SAMPLES_AFTER_WARMUP = 1
# The processes get this long beyond the stream itself (start-up, model transfer, the end of the session).
STREAM_MARGIN_S = 300.0
# How often the progress thread looks for new sample lines.
PROGRESS_POLL_S = 1.0


# -- verdict --------------------------------------------------------------------------------------
def verdict(samples: list[dict], stream_fps: float, interval: float, warmup_s: float = WARMUP_S,
            stream_s: float | None = None, max_growth: float = MAX_RSS_GROWTH,
            stall_fraction: float = STALL_FRACTION) -> dict:
    """Judge a run's samples (dicts with t, rss_mb, fps_out as `vsae recv --samples` writes them).

    `stream_s`: the stream's length in seconds; intervals ending after it are not checked for stalls
    (the stream ran out during them). Pure: no I/O."""
    cut = warmup_s + interval / 4  # the sample due at the warm-up's end comes a few ms late
    warm = [s for s in samples if s["t"] <= cut]
    after = [s for s in samples if s["t"] > cut]
    reasons: list[str] = []
    result: dict = {
        "warmup_s": warmup_s, "samples": len(samples), "samples_after_warmup": len(after),
        "max_rss_growth": max_growth, "stream_fps": round(stream_fps, 3),
        "stall_fps": round(stall_fraction * stream_fps, 3), "max_gap_s": round(MAX_GAP_FACTOR * interval, 3),
    }
    if not warm or len(after) < MIN_SAMPLES_AFTER_WARMUP:
        reasons.append(f"too few samples: {len(warm)} in the {warmup_s:g} s warm-up, {len(after)} after it "
                       f"(need >= 1 and >= {MIN_SAMPLES_AFTER_WARMUP}; run longer than the warm-up)")
        return {**result, "passed": False, "reasons": reasons, "stalls": []}

    levels = rss_levels(samples)
    baseline = levels[len(warm) - 1]
    peak = max(levels[len(warm):])
    growth = (peak - baseline) / baseline
    result.update(baseline_rss_mb=baseline, max_rss_mb_after_warmup=peak, end_rss_mb=levels[-1],
                  max_rss_mb_sample=max(s["rss_mb"] for s in after), rss_growth=round(growth, 5))
    if growth > max_growth:
        at = samples[levels.index(peak, len(warm))]["t"]
        reasons.append(f"RSS grew {growth:+.1%} after warm-up ({baseline:.1f} -> {peak:.1f} MB at t={at:g} s), "
                       f"above the {max_growth:.0%} limit")

    stalls = []
    previous_t = warm[-1]["t"]
    checked = []
    for s in after:
        gap = s["t"] - previous_t
        previous_t = s["t"]
        if gap > MAX_GAP_FACTOR * interval:
            stalls.append({"t": s["t"], "gap_s": round(gap, 3), "fps_out": s.get("fps_out")})
            continue
        if stream_s is not None and s["t"] > stream_s:
            continue  # the stream ended inside this interval
        checked.append(s)
        fps = s.get("fps_out")
        if fps is None or fps < stall_fraction * stream_fps:
            stalls.append({"t": s["t"], "gap_s": round(gap, 3), "fps_out": fps})
    if stalls:
        first = stalls[0]
        reasons.append(f"{len(stalls)} stalled interval(s) after warm-up, first at t={first['t']:g} s "
                       f"({first['fps_out']} fps out, {first['gap_s']:g} s since the previous sample; "
                       f"a stall is < {stall_fraction * stream_fps:.1f} fps or > {MAX_GAP_FACTOR * interval:g} s)")
    rates = [s["fps_out"] for s in checked if s.get("fps_out") is not None]
    result.update(intervals_checked=len(checked), min_fps_after_warmup=min(rates) if rates else None,
                  mean_fps_after_warmup=round(sum(rates) / len(rates), 3) if rates else None)
    return {**result, "passed": not reasons, "reasons": reasons, "stalls": stalls}


def rss_levels(samples: list[dict], window: int = RSS_LEVEL_SAMPLES) -> list[float]:
    """Each sample's RSS level: the median of its RSS and the window - 1 before it (fewer at the start)."""
    rss = [s["rss_mb"] for s in samples]
    return [float(statistics.median(rss[max(0, k - window + 1) : k + 1])) for k in range(len(rss))]


def read_samples(path: str | Path) -> list[dict]:
    """The sample lines of a `--samples` file (a torn last line, from a killed receiver, is skipped)."""
    samples = []
    for line in Path(path).read_text().splitlines():
        try:
            samples.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return samples


# -- outputs --------------------------------------------------------------------------------------
def plot(samples: list[dict], result: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] / 60 for s in samples]
    fig, (ax_rss, ax_fps) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for ax in (ax_rss, ax_fps):
        ax.axvspan(0, result["warmup_s"] / 60, color="0.85", label=f"warm-up ({result['warmup_s']:g} s)")
        ax.grid(True, alpha=0.3)
    ax_rss.plot(t, [s["rss_mb"] for s in samples], "o", ms=2.5, color="tab:blue", label="receiver RSS (sample)")
    ax_rss.plot(t, rss_levels(samples), "-", lw=1.2, color="tab:blue", label=f"level (median of {RSS_LEVEL_SAMPLES})")
    if result.get("baseline_rss_mb") is not None:
        base = result["baseline_rss_mb"]
        ax_rss.axhline(base, color="tab:green", lw=1, ls="--", label=f"end of warm-up {base:.1f} MB")
        ax_rss.axhspan(base, base * (1 + result["max_rss_growth"]), color="tab:green", alpha=0.12,
                       label=f"+{result['max_rss_growth']:.0%} allowed")
        top = max(base * (1 + result["max_rss_growth"]), max(s["rss_mb"] for s in samples))
        ax_rss.set_ylim(min(s["rss_mb"] for s in samples) * 0.95, top * 1.03)
    ax_rss.set_ylabel("RSS (MB)")
    ax_rss.legend(fontsize=8, loc="best")
    ax_fps.plot(t, [s["fps_out"] if s.get("fps_out") is not None else float("nan") for s in samples], "o-", ms=2.5,
                color="tab:orange", label="output fps (per interval)")
    ax_fps.axhline(result["stream_fps"], color="0.3", lw=1, ls="--", label=f"stream {result['stream_fps']:.2f} fps")
    ax_fps.axhline(result["stall_fps"], color="tab:red", lw=1, ls=":", label=f"stall below {result['stall_fps']:.1f} fps")
    for stall in result.get("stalls", []):
        ax_fps.axvline(stall["t"] / 60, color="tab:red", alpha=0.4)
    ax_fps.set_ylim(0, result["stream_fps"] * 1.25)
    ax_fps.set_ylabel("frames / s")
    ax_fps.set_xlabel("time since the stream started (min)")
    ax_fps.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{title}: {'PASS' if result['passed'] else 'FAIL'}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(report: dict) -> str:
    v, st, settings = report["verdict"], report.get("stats") or {}, report["settings"]
    lines = [
        f"# Soak: {settings['video']}, {settings['minutes']:g} min looped ({settings['loop']} passes), "
        f"samples every {settings['interval_s']:g} s",
        "",
        f"**Verdict: {'PASS' if v['passed'] else 'FAIL'}**" + ("" if v["passed"] else ": " + "; ".join(v["reasons"])),
        "",
        "| measure | value |",
        "|---|---|",
    ]
    rows = [
        ("warm-up", f"{v['warmup_s']:g} s ({v['samples'] - v['samples_after_warmup']} samples)"),
        (f"receiver RSS level (median of {RSS_LEVEL_SAMPLES} samples) at end of warm-up", _mb(v.get("baseline_rss_mb"))),
        ("max RSS level after warm-up (max single sample)",
         f"{_mb(v.get('max_rss_mb_after_warmup'))} ({_mb(v.get('max_rss_mb_sample'))})"),
        ("RSS level at the end", _mb(v.get("end_rss_mb"))),
        ("RSS growth after warm-up (limit)", f"{v['rss_growth']:+.2%} ({v['max_rss_growth']:.0%})" if "rss_growth" in v else "n/a"),
        ("output fps after warm-up: mean / min (stall below)",
         f"{v.get('mean_fps_after_warmup')} / {v.get('min_fps_after_warmup')} ({v['stall_fps']:g})"),
        ("stalled intervals", str(len(v["stalls"]))),
        ("frames out / in", f"{st.get('frames_out')} / {st.get('frames_in')}"),
        ("frames received / concealed / dropped (backlog)",
         f"{st.get('frames_received')} / {st.get('frames_concealed')} / {st.get('frames_dropped_backlog')}"),
        ("keyframe requests", str(st.get("keyframe_requests"))),
        ("PSNR vsae / bicubic (all frames, looped reference)", f"{st.get('psnr')} / {st.get('psnr_bicubic')} dB"),
        ("latency median / p95", f"{st.get('latency_ms')} / {st.get('latency_ms_p95')} ms"),
        ("video sent", f"{st.get('video_kbps')} kbps"),
        ("peak RSS receiver / sender", f"{_mb(st.get('peak_rss_mb'))} / {_mb((st.get('sender') or {}).get('peak_rss_mb'))}"),
        ("output file frames", str(report.get("output_frames"))),
        ("wall time", f"{report.get('wall_s')} s"),
    ]
    lines += [f"| {k} | {val} |" for k, val in rows]
    lines += ["", f"Model: `{settings['model']}`. Reproduce: `{settings['command']}`.", ""]
    return "\n".join(lines)


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} MB"


class _Progress(threading.Thread):
    """Prints each new sample line on stderr while the run goes on."""

    def __init__(self, path: Path, total_s: float):
        super().__init__(name="soak-progress", daemon=True)
        self.path, self.total_s = path, total_s
        self.done = threading.Event()

    def run(self) -> None:
        seen = 0
        while not self.done.wait(PROGRESS_POLL_S):
            seen = self._show(seen)
        self._show(seen)

    def _show(self, seen: int) -> int:
        if not self.path.exists():
            return seen
        samples = read_samples(self.path)
        for s in samples[seen:]:
            print(f"vsae bench soak: {s['t']:7.0f}/{self.total_s:.0f} s  RSS {s['rss_mb']:7.1f} MB  "
                  f"{s['fps_out'] if s['fps_out'] is not None else float('nan'):5.1f} fps out  {s['frames_out']} frames "
                  f"(concealed {s['frames_concealed']}, dropped {s['frames_dropped_backlog']})", file=sys.stderr, flush=True)
        return max(seen, len(samples))


def _output_frames(path: Path) -> int | None:
    """Frames in the receiver's MP4 by its header (no decoding: the file may hold an hour of video)."""
    import av

    try:
        with av.open(str(path)) as container:
            return container.streams.video[0].frames or None
    except (OSError, av.FFmpegError, IndexError):
        return None


# -- the command ----------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--video", default=DEFAULT_VIDEO, help=f"video file or bundled clip (default {DEFAULT_VIDEO}), looped")
    p.add_argument("--model", default=None,
                   help="model bundle (default: the demo's cached fit on the even frames, fitted once if missing)")
    p.add_argument("--minutes", type=positive_float, default=DEFAULT_MINUTES,
                   help=f"stream length in minutes, rounded up to whole passes of the clip (default {DEFAULT_MINUTES:g})")
    p.add_argument("--out", required=True, help="output folder: soak.json, soak.png, soak.md")
    p.add_argument("--interval", type=positive_float, default=None,
                   help="seconds between samples (default: receiver.sampler.SAMPLE_INTERVAL_S, 10)")
    p.add_argument("--warmup", type=float, default=WARMUP_S, help=f"warm-up seconds excluded from the verdict (default {WARMUP_S:g})")
    p.add_argument("--kbps", type=positive_float, default=None, help="video bitrate (default: the sender's)")
    p.add_argument("--fps", type=positive_float, default=None,
                   help="stream rate (default: the clip's); below what the receiver sustains, the run measures a "
                        "healthy steady state rather than a receiver that conceals what it cannot rebuild in time")
    p.add_argument("--keep-video", action="store_true",
                   help="keep OUT/vsae.mp4 and OUT/bicubic.mp4 (deleted by default: a long run writes large files)")
    p.add_argument("-v", "--verbose", action="store_true", help="show the receiver's log")


def run(args: argparse.Namespace) -> int:
    from codec import bundle
    from codec.cache import cached_fit
    from codec.video import read_video, resolve_video
    from receiver import sampler
    from receiver.demo import run_stream
    from sender.cli import loop_count
    from protocol.defaults import DEFAULT_KBPS

    if args.warmup < 0:
        raise VsaeError(f"--warmup must be >= 0 seconds, got {args.warmup:g}")
    began = time.monotonic()
    video = resolve_video(args.video)
    if args.model:
        model = Path(args.model)
        bundle.load(model)  # a missing or broken model fails here, with one error line
    else:
        model = cached_fit(video, FIT_FRAMES, FIT_MINUTES)[0]
    frames, fps = read_video(video)
    fps = args.fps or fps
    seconds = args.minutes * 60
    loop = loop_count(None, seconds, len(frames), fps)
    interval = args.interval or sampler.SAMPLE_INTERVAL_S
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    samples_path = out / "samples.jsonl"
    samples_path.unlink(missing_ok=True)
    stream_s = loop * len(frames) / fps
    kbps = args.kbps or DEFAULT_KBPS
    command = (f"vsae bench soak --minutes {args.minutes:g} --out {out}" + (f" --model {args.model}" if args.model else "")
               + (f" --video {args.video}" if args.video != DEFAULT_VIDEO else "") + (f" --fps {args.fps:g}" if args.fps else ""))
    print(f"vsae bench soak: {video.name} looped {loop}x ({stream_s / 60:.1f} min at {fps:.2f} fps), "
          f"a sample every {interval:g} s, warm-up {args.warmup:g} s, model {model}", file=sys.stderr, flush=True)

    progress = _Progress(samples_path, stream_s)
    progress.start()
    try:
        stats = run_stream(video, model, out, kbps=kbps, timeout=stream_s + STREAM_MARGIN_S, echo=args.verbose,
                           extra_recv=("--reference-loop", "--samples", str(samples_path), "--sample-interval", f"{interval:g}"),
                           extra_send=("--loop", str(loop), *(("--fps", f"{args.fps:g}") if args.fps else ())))
    finally:
        progress.done.set()
        progress.join(PROGRESS_POLL_S * 5)

    samples = read_samples(samples_path)
    result = verdict(samples, stats.get("fps") or fps, interval, args.warmup, stream_s)
    report = {
        "settings": {"video": video.name, "model": str(model), "minutes": args.minutes, "loop": loop,
                     "clip_frames": len(frames), "stream_s": round(stream_s, 2), "interval_s": interval,
                     "kbps": kbps, "command": command},
        "verdict": result,
        "samples": samples,
        "stats": stats,
        "output_frames": _output_frames(out / "vsae.mp4"),
        "wall_s": round(time.monotonic() - began, 1),
    }
    if not args.keep_video:
        for name in ("vsae.mp4", "bicubic.mp4"):
            (out / name).unlink(missing_ok=True)
    (out / "soak.json").write_text(json.dumps(report, indent=1) + "\n")
    if samples:
        plot(samples, result, out / "soak.png", f"vsae soak, receiver side: {video.name} looped for {stream_s / 60:.1f} min")
    (out / "soak.md").write_text(summary(report))
    line = (f"RSS {result.get('baseline_rss_mb')} -> max {result.get('max_rss_mb_after_warmup')} MB after warm-up "
            f"({result['rss_growth']:+.2%})" if "rss_growth" in result else "RSS n/a")
    print(f"vsae bench soak: {'PASS' if result['passed'] else 'FAIL'}: {line}, output fps mean "
          f"{result.get('mean_fps_after_warmup')} min {result.get('min_fps_after_warmup')}, {len(result['stalls'])} stall(s)"
          + ("" if result["passed"] else f"; {'; '.join(result['reasons'])}"))
    print(f"vsae bench soak: wrote {out / 'soak.json'}, {out / 'soak.png'}, {out / 'soak.md'}")
    return 0 if result["passed"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bench.soak ARGS`: the same as `vsae bench soak ARGS` (one error line, exit 1, on bad input)."""
    from codec.cli import main as vsae_main  # registers bench.cli's commands (entry point); bench.cli imports this module

    return vsae_main(["bench", "soak", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
