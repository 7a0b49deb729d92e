"""`vsae bench load`: several receivers at once from one sender process, and how throughput scales with cores.

For each core count C (`--cores`, default 1 and all of this machine's) and receiver count N
(`--receivers`, default 1,2,4) it starts N `vsae recv` processes (one torch thread each, `--threads 1`)
pinned together to the same C cores with `taskset -c`, and ONE `vsae send` process with N `--connect`s
that streams the clip to all of them at once over loopback WebRTC (one session per receiver, one event
loop). Each receiver's stats JSON is collected; the sender's per-session report too.

Placement. The sender is pinned to a core outside the receivers' set when there is one (C < all cores):
its encoding, packetization and pacing then do not eat into the capacity being measured, and the result
does not depend on where the scheduler happens to put it. With C = all cores there is no such core; it
runs unpinned and shares them (each row records the sender's CPU seconds, so its share is visible).
Receivers hold the model already (`vsae recv --model`): the bench measures streaming, not N copies of a
3 MB SCTP transfer in one Python process, which would also stagger the streams' starts; `--ship-model`
puts the transfer back in.

Throughput, defined. Every session streams in real time at the clip's rate (the case that matters: N
calls at once), so N receivers demand N × fps output frames per second. Per run:
  * aggregate_fps: output frames rebuilt from received key frames (frames_out - frames_concealed, summed
    over receivers; a concealed frame is interpolated across a gap, and on loopback the gaps are frames a
    lagging receiver dropped from its backlog) over the wall-clock window from the first frame any
    receiver output to the last one. It follows N × fps while the cores keep up and flattens at what
    they can rebuild; that curve per C is the answer to "how does throughput scale with cores".
  * realtime: sessions that kept up: complete, no backlog drop, p95 capture-to-output latency at most
    LATENCY_BOUND_MS. capacity(C) is the largest N whose sessions all kept up.
  * sum_fps_pipeline: the receivers' own work rates (output frames per second of worker time, summed).
    Under contention each worker's time stretches, so this approximates the cores' rebuild capacity
    whether or not the demand reaches it; a diagnostic next to aggregate_fps, not a substitute.
A saturation run (`--fps 120`: every session sends faster than a receiver rebuilds) makes the receivers
the bottleneck at any N; aggregate_fps then measures the rebuild capacity of C cores directly, minus the
time spent concealing dropped frames.

Each row also records `other_load`: the CPU the rest of the machine used during the run, in cores (all
CPUs' busy time from /proc/stat minus this bench's processes'); on a shared machine, read a row with a
high one as contaminated.

Writes OUT/load.json (per run, per receiver), OUT/load.md (tables) and OUT/load.png (aggregate
throughput and p95 latency vs receivers, one line per core count). Progress: one line per run on
stderr. Every step is bounded in time; every process started is ended, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from codec.argtypes import positive, positive_float
from codec.errors import VsaeError
from protocol.defaults import DEFAULT_CODEC, DEFAULT_KBPS, DEFAULT_SCALE, DEFAULT_TEMPORAL
from protocol.messages import CODECS
from receiver.spawn import vsae_command

DEFAULT_RECEIVERS = (1, 2, 4)
# A session "keeps up" when its p95 capture-to-output latency stays under this (the loopback demo's is
# ~150 ms; a receiver that falls behind drops frames at a backlog of 8 frames, ~270 ms at 30 fps).
LATENCY_BOUND_MS = 500.0
# Seconds for all receivers of a run to print their port (N processes importing torch on few cores).
LISTEN_TIMEOUT_S = 90.0
# The sender's bound beyond the stream's own duration: ICE/DTLS for N sessions, the model transfer with
# --ship-model, the receivers' final flush and bye.
SENDER_SLACK_S = 150.0
# How long receivers may take to write their stats once the sender is done.
RECEIVER_FINISH_S = 30.0
# Grace between SIGTERM and SIGKILL when cleaning up.
KILL_GRACE_S = 3.0
# Lines of each child's output kept for error messages.
KEEP_LINES = 200
POLL_S = 0.05
# Receiver stats copied into load.json (the rest stays in the per-receiver stats file).
RECEIVER_KEYS = ("frames_in", "frames_out", "frames_received", "frames_concealed", "frames_dropped_backlog",
                 "fps_reconstruct", "fps_pipeline", "latency_ms", "latency_ms_p95", "psnr", "psnr_bicubic",
                 "video_kbps", "model_transferred", "first_output_time", "last_output_time", "peak_rss_mb", "session_s")


# -- pure aggregation -----------------------------------------------------------------------------------
def summarize_run(receivers: list[dict | None], fps: float, latency_bound_ms: float = LATENCY_BOUND_MS) -> dict:
    """Aggregate one run's receivers (each its stats dict, or None when it produced none)."""
    done = [r for r in receivers if r]
    good = sum(r["frames_out"] - r["frames_concealed"] for r in done)
    starts = [r["first_output_time"] for r in done if r.get("first_output_time") is not None]
    ends = [r["last_output_time"] for r in done if r.get("last_output_time") is not None]
    window = max(ends) - min(starts) if starts and ends else None

    def kept_up(r: dict) -> bool:
        p95 = r.get("latency_ms_p95")
        return (r["frames_out"] == r["frames_in"] and r["frames_dropped_backlog"] == 0
                and p95 is not None and p95 <= latency_bound_ms)

    latencies = [r["latency_ms"] for r in done if r.get("latency_ms") is not None]
    p95s = [r["latency_ms_p95"] for r in done if r.get("latency_ms_p95") is not None]
    psnrs = [r["psnr"] for r in done if r.get("psnr") is not None]
    pipelines = [r["fps_pipeline"] for r in done if r.get("fps_pipeline")]
    return {
        "receivers": len(receivers),
        "completed": len(done),
        "realtime": sum(kept_up(r) for r in done),
        "frames_good": good,
        "window_s": round(window, 3) if window else None,
        "aggregate_fps": round(good / window, 2) if window else None,
        "demand_fps": round(len(receivers) * fps, 2),
        "sum_fps_pipeline": round(sum(pipelines), 2) if pipelines else None,
        "dropped_backlog": sum(r["frames_dropped_backlog"] for r in done),
        "concealed": sum(r["frames_concealed"] for r in done),
        "latency_ms": round(statistics.median(latencies), 1) if latencies else None,
        "latency_ms_p95_max": round(max(p95s), 1) if p95s else None,
        "psnr": round(statistics.fmean(psnrs), 3) if psnrs else None,
    }


def capacity(rows: list[dict]) -> list[dict]:
    """Per core count: the most receivers whose sessions all kept up, and the best aggregate_fps of a
    completed run."""
    out = []
    for cores in sorted({r["cores"] for r in rows}):
        mine = [r for r in rows if r["cores"] == cores]
        sustained = [r["receivers"] for r in mine if r["outcome"] == "completed" and r["realtime"] == r["receivers"]]
        rates = [r["aggregate_fps"] for r in mine if r["outcome"] == "completed" and r.get("aggregate_fps") is not None]
        out.append({"cores": cores, "realtime_sessions": max(sustained, default=0),
                    "peak_aggregate_fps": max(rates) if rates else None,
                    "tried": sorted(r["receivers"] for r in mine)})
    return out


TABLE_COLUMNS = (("cores", "cores"), ("receivers", "receivers"), ("outcome", "outcome"), ("realtime", "kept up"),
                 ("aggregate_fps", "aggregate fps"), ("demand_fps", "demand fps"), ("sum_fps_pipeline", "Σ fps_pipeline"),
                 ("dropped_backlog", "dropped (backlog)"), ("concealed", "concealed"), ("latency_ms", "latency ms (median)"),
                 ("latency_ms_p95_max", "latency p95 ms (worst)"), ("psnr", "PSNR dB"), ("sender_cpu_s", "sender CPU s"),
                 ("wall_s", "wall s"), ("other_load", "other load (cores)"))


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("|", "/")


def format_tables(rows: list[dict], settings: str) -> str:
    """load.md: the settings, one row per run, then the capacity per core count."""
    lines = [settings, "", "| " + " | ".join(h for _, h in TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for r in rows:
        cells = [_cell(r.get(k)) for k, _ in TABLE_COLUMNS]
        cells[3] = f"{r.get('realtime', 0)}/{r['receivers']}"
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"| cores | sessions kept up (all of N, p95 ≤ {LATENCY_BOUND_MS:g} ms, no drops) | peak aggregate fps | N tried |",
              "|---|---|---|---|"]
    for c in capacity(rows):
        lines.append(f"| {c['cores']} | {c['realtime_sessions']} | {_cell(c['peak_aggregate_fps'])} | "
                     f"{','.join(map(str, c['tried']))} |")
    return "\n".join(lines) + "\n"


def parse_counts(text: str, what: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4] (positive, deduplicated, in order)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise VsaeError(f"{what}: expected comma-separated whole numbers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise VsaeError(f"{what}: expected positive whole numbers, got {text!r}")
    return list(dict.fromkeys(values))


# -- processes ------------------------------------------------------------------------------------------
@dataclass
class Child:
    """A started process, its output pumped into bounded line lists by daemon threads."""

    name: str
    popen: subprocess.Popen
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    port: int | None = None
    listening: threading.Event = field(default_factory=threading.Event)
    cpu_s: float | None = None

    @classmethod
    def start(cls, name: str, cmd: list[str]) -> "Child":
        popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        child = cls(name, popen)
        threading.Thread(target=child._pump, args=(popen.stdout, child.out, True), daemon=True).start()
        threading.Thread(target=child._pump, args=(popen.stderr, child.err, False), daemon=True).start()
        return child

    def _pump(self, stream, sink: list[str], watch: bool) -> None:
        for line in stream:
            sink.append(line.rstrip("\n"))
            del sink[:-KEEP_LINES]
            if watch and self.port is None and "listening on" in line:
                try:
                    self.port = int(line.rsplit(":", 1)[1])
                except ValueError:
                    continue
                self.listening.set()
        if watch:
            self.listening.set()  # EOF: whoever waits for the port finds it missing

    def reap(self, deadline: float) -> bool:
        """Wait for exit until `deadline` (monotonic); records the exit code and CPU seconds (wait4)."""
        while self.popen.returncode is None:
            try:
                pid, status, usage = os.wait4(self.popen.pid, os.WNOHANG)
            except ChildProcessError:  # already reaped: no exit code or usage to report
                self.popen.returncode = -1
                break
            if pid:
                self.popen.returncode = os.waitstatus_to_exitcode(status)
                self.cpu_s = round(usage.ru_utime + usage.ru_stime, 2)
                break
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL_S)
        return True

    def stop(self) -> None:
        """End the process if it still runs: SIGTERM, then SIGKILL after a grace period."""
        if self.popen.returncode is not None:
            return
        self.popen.terminate()
        if not self.reap(time.monotonic() + KILL_GRACE_S):
            self.popen.kill()
            self.reap(time.monotonic() + KILL_GRACE_S)

    def last_error(self) -> str:
        """The most telling line of its output: the last one naming an error or failure, else the last one
        on stderr, else on stdout."""
        err = [line for line in self.err if line.strip()]
        out = [line for line in self.out if line.strip()]
        errors = [line for line in err + out if "error" in line.lower() or "failed" in line.lower()]
        return (errors or err or out or ["(no output)"])[-1][:300]


def machine_busy_s() -> float | None:
    """Seconds of CPU time all CPUs have spent busy since boot (/proc/stat), or None off Linux."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is already in user


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _pinned(cpus: list[int] | None) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, cpus))] if cpus else []


def placement(cores: int, available: list[int]) -> tuple[list[int], list[int] | None]:
    """(the receivers' CPUs, the sender's CPUs or None for unpinned): the first `cores` CPUs for the
    receivers, the next one for the sender when there is one."""
    if cores > len(available):
        raise VsaeError(f"--cores {cores}: this machine lets this process use {len(available)} CPU(s)")
    return available[:cores], available[cores : cores + 1] or None


@dataclass
class RunSpec:
    video: str
    model: str
    frames: str | None
    fps: float
    stream_s: float
    scale: int
    temporal: int
    kbps: float
    codec: str
    reference: bool
    ship_model: bool
    keep_video: bool


def run_once(spec: RunSpec, cores: int, n: int, available: list[int], out: Path) -> dict:
    """One run: N pinned receivers, one sender with N --connects; the row for load.json."""
    recv_cpus, send_cpus = placement(cores, available)
    out.mkdir(parents=True, exist_ok=True)
    bound = spec.stream_s + SENDER_SLACK_S
    frames_args = ("--frames", spec.frames) if spec.frames else ()
    row: dict = {"cores": cores, "receivers": n, "receiver_cpus": recv_cpus, "sender_cpus": send_cpus}
    began = time.monotonic()
    busy_before, own_before = machine_busy_s(), _own_cpu_s()
    children: list[Child] = []
    receivers: list[Child] = []
    sender: Child | None = None
    for k in range(n):
        (out / f"r{k}.json").unlink(missing_ok=True)  # a stale file from an earlier run must not count
    try:
        for k in range(n):
            cmd = [*_pinned(recv_cpus), *vsae_command(
                "recv", "--listen", "127.0.0.1:0", "-o", str(out / f"r{k}.mp4"), "--stats", str(out / f"r{k}.json"),
                "--threads", "1", "--timeout", f"{bound:g}",
                *(() if spec.ship_model else ("--model", spec.model)),
                *(("--reference", spec.video, *(("--reference-frames", spec.frames) if spec.frames else ())) if spec.reference else ()))]
            receivers.append(Child.start(f"receiver {k}", cmd))
            children.append(receivers[-1])
        deadline = time.monotonic() + LISTEN_TIMEOUT_S
        for r in receivers:
            r.listening.wait(max(0.0, deadline - time.monotonic()))
            if r.port is None:
                why = r.last_error() if r.popen.poll() is not None else f"not listening after {LISTEN_TIMEOUT_S:g} s"
                raise VsaeError(f"{r.name}: {why}")
        connects = [a for r in receivers for a in ("--connect", f"127.0.0.1:{r.port}")]
        sender = Child.start("sender", [*_pinned(send_cpus), *vsae_command(
            "send", spec.video, *connects, "--model", spec.model, "--fps", f"{spec.fps:g}", "--scale", str(spec.scale),
            "--temporal", str(spec.temporal), "--kbps", f"{spec.kbps:g}", "--codec", spec.codec, "--json", *frames_args)])
        children.append(sender)
        if not sender.reap(time.monotonic() + bound):
            raise VsaeError(f"sender did not finish within {bound:g} s")
        time.sleep(POLL_S)  # let the pump threads take the last lines
        # A receiver whose session the sender completed is writing its stats; one whose session failed
        # would wait for another sender until its --timeout, so it is ended below without waiting.
        # The report lists sessions in --connect order (one receiver: a plain object, no "ok" key).
        report = _sender_report(sender) or []
        finish = time.monotonic() + RECEIVER_FINISH_S
        for k, r in enumerate(receivers):
            if k < len(report) and report[k].get("ok", True):
                r.reap(finish)
        if sender.popen.returncode != 0:
            row["error"] = f"sender: {sender.last_error()}"
        else:
            late = [r.name for r in receivers if r.popen.returncode != 0]
            if late:
                row["error"] = f"{late[0]}: " + next(r.last_error() for r in receivers if r.name == late[0])
    except VsaeError as exc:
        row["error"] = str(exc)
    finally:
        for child in children:
            child.stop()
    wall = time.monotonic() - began
    row["wall_s"] = round(wall, 1)
    # CPU the rest of the machine used meanwhile (all CPUs' busy time minus this bench's and its children's),
    # in cores: on a shared machine, anything well above 0 competed with the receivers.
    busy_after = machine_busy_s()
    ours = _own_cpu_s() - own_before + sum(c.cpu_s or 0.0 for c in children)
    if busy_before is not None and busy_after is not None:
        row["other_load"] = round(max(0.0, busy_after - busy_before - ours) / wall, 2)
    row["outcome"] = "failed" if row.get("error") else "completed"
    row["sender_cpu_s"] = sender.cpu_s if sender else None
    row["sender"] = _sender_report(sender)
    per_receiver, stats = [], []
    for k, r in enumerate(receivers):
        path = out / f"r{k}.json"
        s = json.loads(path.read_text()) if path.exists() and r.popen.returncode == 0 else None
        stats.append(s)
        per_receiver.append({"port": r.port, "pid": r.popen.pid, "rc": r.popen.returncode, "cpu_s": r.cpu_s,
                             **({k2: s.get(k2) for k2 in RECEIVER_KEYS} if s else {"error": r.last_error()})})
        if not spec.keep_video:
            (out / f"r{k}.mp4").unlink(missing_ok=True)
    row.update(summarize_run(stats, spec.fps))
    row["receivers"] = n
    row["per_receiver"] = per_receiver
    return row


def _sender_report(sender: Child | None) -> list[dict] | None:
    if sender is None:
        return None
    for line in reversed(sender.out):
        try:
            report = json.loads(line)
        except ValueError:
            continue
        return report if isinstance(report, list) else [report]
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# -- output ---------------------------------------------------------------------------------------------
def plot(rows: list[dict], path: Path, fps: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right, by_cores) = plt.subplots(1, 3, figsize=(16, 4.2))
    counts = sorted({r["receivers"] for r in rows})
    left.plot(counts, [n * fps for n in counts], "k--", lw=1, label=f"demand (N × {fps:g} fps)")
    for cores in sorted({r["cores"] for r in rows}):
        mine = sorted((r for r in rows if r["cores"] == cores), key=lambda r: r["receivers"])
        xs = [r["receivers"] for r in mine if r.get("aggregate_fps") is not None]
        left.plot(xs, [r["aggregate_fps"] for r in mine if r.get("aggregate_fps") is not None], "o-",
                  label=f"{cores} core{'s' if cores > 1 else ''}")
        xs = [r["receivers"] for r in mine if r.get("latency_ms_p95_max") is not None]
        right.plot(xs, [r["latency_ms_p95_max"] for r in mine if r.get("latency_ms_p95_max") is not None], "o-",
                   label=f"{cores} core{'s' if cores > 1 else ''}")
    right.axhline(LATENCY_BOUND_MS, color="grey", ls=":", lw=1, label=f"bound {LATENCY_BOUND_MS:g} ms")
    left.set(xlabel="receivers (simultaneous sessions)", ylabel="output fps rebuilt from received keys, all receivers",
             title="aggregate throughput")
    right.set(xlabel="receivers (simultaneous sessions)", ylabel="p95 capture → output latency, worst receiver (ms)",
              title="latency", yscale="log")
    for ax in (left, right):
        ax.set_xticks(counts)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    # Scaling with cores: one receiver per core (N = C), where each has a core of its own; an overloaded run's
    # work rate is inflated by cheap concealed frames, so those are left out here.
    even = sorted((r for r in rows if r["outcome"] == "completed" and r["receivers"] == r["cores"]), key=lambda r: r["cores"])
    cores = [r["cores"] for r in even]
    work = [r["sum_fps_pipeline"] or 0 for r in even]
    by_cores.plot(cores, [r["aggregate_fps"] or 0 for r in even], "o-", label="aggregate fps (rebuilt from received keys)")
    by_cores.plot(cores, work, "s-", label="Σ fps_pipeline (receivers' work rate)")
    if cores and work[0]:
        by_cores.plot(cores, [work[0] * c / cores[0] for c in cores], "k:", lw=1, label="linear from the fewest cores")
    by_cores.set(xlabel="cores (one receiver each)", ylabel="frames / s, all receivers", title="throughput vs cores (N = C)")
    by_cores.set_xticks(cores)
    by_cores.grid(alpha=0.3)
    by_cores.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="folder for load.json, load.md, load.png")
    p.add_argument("--video", default="carphone", help="clip to stream (default: carphone)")
    p.add_argument("--model", default=None, help="model bundle (default: the demo's cached fit on the even frames)")
    p.add_argument("--cores", default=None, help="comma-separated core counts (default: 1 and all of this machine's)")
    p.add_argument("--receivers", default=",".join(map(str, DEFAULT_RECEIVERS)),
                   help=f"comma-separated receiver counts (default: {','.join(map(str, DEFAULT_RECEIVERS))})")
    p.add_argument("--frames", default=None, help="frame selection to stream (default: all)")
    p.add_argument("--fps", type=positive_float, default=None,
                   help="stream rate per session (default: the clip's; higher saturates the receivers)")
    p.add_argument("--scale", type=positive, default=DEFAULT_SCALE)
    p.add_argument("--temporal", type=positive, default=DEFAULT_TEMPORAL)
    p.add_argument("--kbps", type=positive_float, default=DEFAULT_KBPS)
    p.add_argument("--codec", default=DEFAULT_CODEC, choices=CODECS)
    p.add_argument("--no-reference", action="store_true", help="receivers skip PSNR/SSIM (less work per frame)")
    p.add_argument("--ship-model", action="store_true", help="every session transfers the model (default: receivers hold it)")
    p.add_argument("--keep-video", action="store_true", help="keep each receiver's output video")


def run(args: argparse.Namespace) -> int:
    from codec.video import read_video, resolve_video

    if shutil.which("taskset") is None:
        raise VsaeError("vsae bench load needs taskset (util-linux) to pin receivers to cores")
    available = sorted(os.sched_getaffinity(0))
    cores = parse_counts(args.cores, "--cores") if args.cores else list(dict.fromkeys([1, len(available)]))
    counts = parse_counts(args.receivers, "--receivers")
    for c in cores:
        placement(c, available)  # refuse a core count this machine lacks before anything starts
    video = resolve_video(args.video)
    frames, clip_fps = read_video(video, args.frames)
    if args.model:
        from codec import bundle

        bundle.load(args.model)  # a bad model is one error line here, not N failing receivers
        model = args.model
    else:
        from codec.train import DEFAULT_MINUTES
        from receiver.demo import cached_model

        model = str(cached_model(video, DEFAULT_MINUTES)[0])
    fps = args.fps or clip_fps
    spec = RunSpec(video=str(video), model=str(model), frames=args.frames, fps=fps, stream_s=len(frames) / fps,
                   scale=args.scale, temporal=args.temporal, kbps=args.kbps, codec=args.codec,
                   reference=not args.no_reference, ship_model=args.ship_model, keep_video=args.keep_video)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    total = len(cores) * len(counts)
    for c in cores:
        for n in counts:
            print(f"vsae bench load: [{len(rows) + 1}/{total}] {c} core(s), {n} receiver(s) ...", file=sys.stderr, flush=True)
            row = run_once(spec, c, n, available, out / "runs" / f"c{c}-n{n}")
            rows.append(row)
            print(f"vsae bench load: [{len(rows)}/{total}] {c} core(s), {n} receiver(s): {row['outcome']}"
                  + (f" ({row['error']})" if row.get("error") else "")
                  + f", aggregate {row.get('aggregate_fps')} fps of {row.get('demand_fps')} demanded, "
                    f"{row.get('realtime', 0)}/{n} kept up, p95 latency {row.get('latency_ms_p95_max')} ms, {row['wall_s']} s",
                  file=sys.stderr, flush=True)
    settings = (f"{video.name}: {len(frames)} frames {frames.shape[2]}x{frames.shape[1]} per session at {fps:g} fps "
                f"({spec.stream_s:.1f} s), ÷{args.scale}, T = {args.temporal}, {args.codec} at {args.kbps:g} kbps; "
                f"model {Path(model).name} ({'shipped per session' if args.ship_model else 'held by the receivers'}); "
                f"receivers `--threads 1`, pinned together to the first C of {len(available)} CPUs ({_cpu_model()}); the "
                f"sender on the next CPU, unpinned when C is all of them; PSNR {'off' if args.no_reference else 'on'}.")
    config = {"cpu": _cpu_model(), "video": video.name, "frames": len(frames), "fps": fps,
              "stream_s": round(spec.stream_s, 3), "model": str(model), "scale": args.scale, "temporal": args.temporal, "kbps": args.kbps, "codec": args.codec,
              "reference": spec.reference, "ship_model": args.ship_model, "cpus_available": len(available),
              "latency_bound_ms": LATENCY_BOUND_MS, "cores": cores, "receivers": counts}
    (out / "load.json").write_text(json.dumps({"config": config, "runs": rows, "capacity": capacity(rows)}, indent=2) + "\n")
    (out / "load.md").write_text(format_tables(rows, settings))
    plot(rows, out / "load.png", fps)
    print(f"vsae bench load: wrote {out / 'load.json'}, {out / 'load.md'}, {out / 'load.png'}", file=sys.stderr)
    failed = [r for r in rows if r["outcome"] != "completed"]
    if failed:
        raise VsaeError(f"{len(failed)} of {len(rows)} runs failed; first: {failed[0]['cores']} core(s), "
                        f"{failed[0]['receivers']} receiver(s): {failed[0]['error']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bench.load ARGS`: the same as `vsae bench load ARGS` (one error line, exit 1, on bad input)."""
    from codec.cli import main as vsae_main  # registers bench.cli's commands (entry point); bench.cli imports this module

    return vsae_main(["bench", "load", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
