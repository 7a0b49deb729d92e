"""`vsae bench faults`: stream across real network faults and tabulate what the receiver got.

The lab: three network namespaces, sender | middle | receiver, joined by two veth pairs on private
addresses (10.77.1.0/30 and 10.77.2.0/30). The middle namespace forwards between them through a TUN
device served by `bench.impair` (loss, Gilbert-Elliott bursts, delay, jitter, reordering, a bandwidth cap,
outages; see that module for why not netem). Sender and receiver are the real `vsae send` / `vsae recv`
processes, each in its namespace. Everything the lab makes is deleted on exit, also on failure. Needs
root and iproute2; every step is bounded in time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from codec.argtypes import positive
from codec.errors import VsaeError
from protocol.peer import codec_list

from .impair import Impairment

SENDER_IP, MIDDLE_SENDER_IP = "10.77.1.1", "10.77.1.2"
RECEIVER_IP, MIDDLE_RECEIVER_IP = "10.77.2.2", "10.77.2.1"
# Routing table of the middle namespace that sends forwarded packets into the relay's TUN device.
RELAY_TABLE = "100"
# Seconds for one `ip` command and for the relay to attach.
SETUP_TIMEOUT_S = 10
# One scenario's stream: the stream itself is ~16 s (FAULT_LOOPS passes at 15 fps); the rest is model transfer
# (with the sender's retries after a lost connection) and recovery.
SCENARIO_TIMEOUT_S = 300
# Stream settings of the fault table: carphone at 15 fps, looped twice (16 s: room for a 3 s outage in the
# middle and for the sender's rate to settle under a cap), ÷4, every 2nd frame, VP8 at 20 kbps.
FAULT_FPS = 15.0
FAULT_LOOPS = 2
# The stepped cap: 60 kbps, 15 from STEP_DOWN_S, 60 again from STEP_UP_S (seconds after the first media
# packet), over a 24 s stream (3 passes) requested at 60 kbps: 8 s for the start to climb, 8 s under the step.
STEP_KBPS = (60.0, 15.0, 60.0)
STEP_DOWN_S, STEP_UP_S = 8.0, 16.0
STEP_LOOPS = 3
# The stepped rows stream at least this long whatever the clip's length (`--frames`): a shorter clip loops more.
STEP_STREAM_S = 24.0
# A step has settled once the video's measured rate on the link is under the new cap with nothing dropped, or,
# going up, within SETTLE_SHARE of the new cap, and stays so until the next step (whole seconds of the relay).
# The sender's rate settles up (`settle_rate_s`) in a second where either holds, or its target's cost on the wire is
# within SETTLE_SHARE of the cap with nothing dropped: the encoder had less to spend than its target allowed
# (application-limited, as libwebrtc calls it: VP8 at ÷4, every 2nd frame, spends 34-47 kbps of a 60 kbps target on
# carphone), which the rate control cannot change.
SETTLE_SHARE = 0.85
# The competing-flow scenario: a bulk TCP flow (bench/tcpflow.py) through a cap of this many kbps.
TCP_CAP_KBPS = 60.0
TCP_PORT = 5201
# The in-call model transfer: the video starts at once under a cap of this many kbps from the first packet, and
# the model (930 KB: minutes at this rate) travels beside it, paced inside the estimate or not at all.
TRANSFER_CAP_KBPS = 30.0
# The stepped cap again with the stream's shape adapting (`vsae send --shapes`), by this rate-quality table: carphone's
# first 120 frames, every shape of VP8 with the demo's cached fit (the lab's model), `vsae bench rd --setting
# insample`; the commands are in the README. A fresh machine fits its own model, which the table describes less exactly.
SHAPE_TABLE = Path(__file__).resolve().parent / "results" / "shapes-carphone" / "results.json"
# The per-second plot draws the data channels when they carry more than their control traffic (~3 kbps).
DATA_PLOT_KBPS = 5.0


def lab_available() -> str | None:
    """None when the lab can run here, else why not (for a clear skip)."""
    if os.geteuid() != 0:
        return "the fault lab needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "the fault lab needs iproute2 (`ip`); apt-get install iproute2"
    if not os.path.exists("/dev/net/tun"):
        return "the fault lab needs /dev/net/tun"
    return None


class NetworkLab:
    """sender | middle (relay) | receiver namespaces; a context manager that removes all it made."""

    def __init__(self, tag: str | None = None):
        tag = tag or str(os.getpid() % 100000)
        self.sender, self.middle, self.receiver = f"vsae-s-{tag}", f"vsae-m-{tag}", f"vsae-r-{tag}"
        self.tun = f"vt-{tag}"
        self.links = {"sender": f"vs-{tag}", "middle_s": f"vm1-{tag}", "middle_r": f"vm2-{tag}", "receiver": f"vr-{tag}"}
        self.relay: subprocess.Popen | None = None
        self.tcp: list[subprocess.Popen] = []
        self._made: list[str] = []

    # -- commands ----------------------------------------------------------------------------------------
    @staticmethod
    def _ip(*args: str) -> None:
        result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=SETUP_TIMEOUT_S)
        if result.returncode != 0:
            raise VsaeError(f"ip {' '.join(args)}: {result.stderr.strip()}")

    def exec_in(self, ns: str) -> tuple[str, ...]:
        return ("ip", "netns", "exec", ns)

    def _sysctl(self, ns: str, key: str, value: str) -> None:
        path = "/proc/sys/" + key.replace(".", "/")
        subprocess.run([*self.exec_in(ns), "sh", "-c", f"echo {value} > {path}"], check=True, timeout=SETUP_TIMEOUT_S)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def __enter__(self) -> "NetworkLab":
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _build(self) -> None:
        L = self.links
        for ns in (self.sender, self.middle, self.receiver):
            self._ip("netns", "add", ns)
            self._made.append(ns)
            self._ip("-n", ns, "link", "set", "lo", "up")
        for a, b, ns_a in ((L["sender"], L["middle_s"], self.sender), (L["receiver"], L["middle_r"], self.receiver)):
            self._ip("link", "add", a, "type", "veth", "peer", "name", b)
            self._ip("link", "set", a, "netns", ns_a)
            self._ip("link", "set", b, "netns", self.middle)
        for ns, dev, addr in ((self.sender, L["sender"], f"{SENDER_IP}/30"), (self.middle, L["middle_s"], f"{MIDDLE_SENDER_IP}/30"),
                              (self.middle, L["middle_r"], f"{MIDDLE_RECEIVER_IP}/30"), (self.receiver, L["receiver"], f"{RECEIVER_IP}/30")):
            self._ip("-n", ns, "addr", "add", addr, "dev", dev)
            self._ip("-n", ns, "link", "set", dev, "up")
        self._ip("-n", self.sender, "route", "add", "default", "via", MIDDLE_SENDER_IP)
        self._ip("-n", self.receiver, "route", "add", "default", "via", MIDDLE_RECEIVER_IP)
        self._sysctl(self.middle, "net.ipv4.ip_forward", "1")
        self._ip("-n", self.middle, "tuntap", "add", "dev", self.tun, "mode", "tun")
        self._ip("-n", self.middle, "link", "set", self.tun, "up")
        for dev in ("all", "default", self.tun, L["middle_s"], L["middle_r"]):
            # Packets the relay writes back arrive on the TUN device with far-side sources: no reverse-path filter.
            self._sysctl(self.middle, f"net.ipv4.conf.{dev}.rp_filter", "0")
        for dev in (L["middle_s"], L["middle_r"]):
            self._ip("-n", self.middle, "rule", "add", "iif", dev, "table", RELAY_TABLE)
        self._ip("-n", self.middle, "route", "add", "default", "dev", self.tun, "table", RELAY_TABLE)

    def start_relay(self, forward: Impairment, backward: Impairment, stats: Path, seed: int = 0) -> None:
        ready = stats.with_suffix(".ready")
        ready.unlink(missing_ok=True)
        cmd = [*self.exec_in(self.middle), sys.executable, "-m", "bench.impair", "--tun", self.tun,
               "--forward-dst", RECEIVER_IP, "--forward", json.dumps(asdict(forward)),
               "--backward", json.dumps(asdict(backward)), "--seed", str(seed), "--stats", str(stats), "--ready", str(ready),
               "--trace", str(stats.with_name("packets.json"))]
        self.relay = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + SETUP_TIMEOUT_S
        while not ready.exists():
            if self.relay.poll() is not None or time.monotonic() > deadline:
                raise VsaeError(f"impairment relay did not start: {self.relay.stderr.read().strip()[-300:]}")
            time.sleep(0.05)

    def stop_relay(self) -> None:
        if self.relay is not None and self.relay.poll() is None:
            self.relay.terminate()
            try:
                self.relay.wait(timeout=SETUP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.relay.kill()
                self.relay.wait()
        self.relay = None

    def start_tcp_flow(self) -> None:
        """A bulk TCP flow from the sender's namespace to the receiver's (bench/tcpflow.py), through the relay."""
        tool = [sys.executable, "-m", "bench.tcpflow"]
        self.tcp.append(subprocess.Popen([*self.exec_in(self.receiver), *tool, "serve", "--bind", RECEIVER_IP, "--port", str(TCP_PORT)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.tcp.append(subprocess.Popen([*self.exec_in(self.sender), *tool, "send", "--connect", f"{RECEIVER_IP}:{TCP_PORT}",
                                          "--seconds", str(SCENARIO_TIMEOUT_S)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop_tcp_flow(self) -> None:
        for process in reversed(self.tcp):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=SETUP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.tcp.clear()

    def close(self) -> None:
        self.stop_tcp_flow()
        self.stop_relay()
        for ns in reversed(self._made):  # deleting a namespace deletes its veth ends and the TUN device
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=SETUP_TIMEOUT_S)
        self._made.clear()


# -- scenarios ----------------------------------------------------------------------------------------
@dataclass
class Scenario:
    name: str
    forward: Impairment = field(default_factory=Impairment)
    backward: Impairment = field(default_factory=Impairment)
    note: str = ""
    # The table measures the call with the model shipped first (`vsae send --wait-for-model`), as it was
    # before the early start: under loss a 16 s stream can end before an early model is through, and the
    # rows would then mix the bicubic rebuild into the model's PSNR. A scenario sets this to start at once.
    early_start: bool = False
    kbps: float | None = None  # the call's requested rate (default: the table's)
    loops: int | None = None  # passes of the clip (default: the table's)
    competing_tcp: bool = False  # a bulk TCP flow from the sender's namespace to the receiver's, through the relay
    send_args: tuple[str, ...] = ()  # more `vsae send` options


def scenarios(kbps: float, shape_table: Path | str = SHAPE_TABLE, steps: Sequence[float] = STEP_KBPS,
              step_loops: int = STEP_LOOPS, shape_args: Sequence[str] = ()) -> list[Scenario]:
    """The issue's scenarios. Loss and delay apply both ways (media one way, feedback the other). `steps`: the
    stepped cap's three rates (kbps); `step_loops`: its passes of the clip; `shape_args`: more `vsae send` options
    for the adaptive-shape row (`--switch-codecs h264`)."""
    stepped = "-".join(f"{k:g}" for k in steps)

    def both(name: str, note: str = "", **kw) -> Scenario:
        return Scenario(name, Impairment(**kw), Impairment(**kw), note)

    return [
        both("clean"),
        both("loss 2%", loss=0.02),
        both("loss 5%", loss=0.05),
        both("loss 10%", loss=0.10),
        both("delay 100±30 ms", delay_ms=100, jitter_ms=30, note="jitter reorders packets"),
        both("burst loss", burst_p=0.02, burst_r=0.25, from_media=True,
             note="Gilbert-Elliott (mean burst 4 packets, ~7% lost) while streaming"),
        both("burst loss from start", burst_p=0.02, burst_r=0.25, note="the same, during the model transfer too"),
        Scenario(f"cap {kbps * 0.75:g} kbps", Impairment(rate_kbps=kbps * 0.75), note="below the 20 kbps target, media direction, while streaming"),
        both("outage 3 s", outage_after_media_s=6.5, outage_s=3.0, note="everything dropped, 6.5 to 9.5 s into the 16 s stream"),
        both("model loss 10%", model_loss=0.10, note="data-channel packets before the first media packet"),
        Scenario(f"cap steps {stepped} kbps",
                 Impairment(rate_kbps=steps[0], rate_steps=[[STEP_DOWN_S, steps[1]], [STEP_UP_S, steps[2]]]),
                 note=f"requested {steps[0]:g} kbps; the cap drops at {STEP_DOWN_S:g} s and comes back at "
                      f"{STEP_UP_S:g} s",
                 kbps=steps[0], loops=step_loops),
        Scenario(f"cap steps {stepped} kbps + shapes",
                 Impairment(rate_kbps=steps[0], rate_steps=[[STEP_DOWN_S, steps[1]], [STEP_UP_S, steps[2]]]),
                 note="the same, the stream's shape (S, T, plain) following the estimate by a rate-quality table",
                 kbps=steps[0], loops=step_loops, send_args=("--shapes", str(shape_table), *shape_args)),
        Scenario(f"cap {TCP_CAP_KBPS:g} kbps + TCP", Impairment(rate_kbps=TCP_CAP_KBPS),
                 note="a bulk TCP flow (Cubic) shares the capped link from the start", competing_tcp=True),
        *(Scenario(f"model transfer cap {TRANSFER_CAP_KBPS:g} kbps {label}", Impairment(rate_kbps=TRANSFER_CAP_KBPS, rate_from_start=True),
                   note=f"the video starts at once, the model follows during it{how}; capped from the first packet",
                   early_start=True, send_args=("--model-pace", pace))
          for label, how, pace in (("paced", ", paced inside the estimate", "estimate"),
                                   ("unpaced", " as fast as SCTP takes it", "off"))),
    ]


def run_scenario(lab: NetworkLab, scenario: Scenario, video: str, model: str, out: Path, frames: str | None = None,
                 scale: int = 4, temporal: int = 2, kbps: float = 20.0, fps: float = FAULT_FPS, loops: int = 1,
                 timeout: float = SCENARIO_TIMEOUT_S) -> dict:
    """Stream once across the lab with this scenario's impairments; the receiver's stats plus outcome."""
    from receiver.demo import run_stream

    echo = bool(os.environ.get("VSAE_FAULTS_ECHO"))
    out.mkdir(parents=True, exist_ok=True)
    kbps, loops = scenario.kbps or kbps, scenario.loops or loops
    lab.start_relay(scenario.forward, scenario.backward, out / "relay.json")
    if scenario.competing_tcp:
        lab.start_tcp_flow()
    began = time.monotonic()
    row: dict = {"scenario": scenario.name, "note": scenario.note, "kbps": kbps,
                 "steps": [[0.0, scenario.forward.rate_kbps], *scenario.forward.rate_steps] if scenario.forward.rate_steps else None}
    try:
        stats = run_stream(video, model, out, scale, temporal, kbps, frames=frames, timeout=timeout, echo=echo,
                           extra_send=("--bind", SENDER_IP, "--fps", f"{fps:g}", "--loop", str(loops),
                                       *(() if scenario.early_start else ("--wait-for-model",)), *scenario.send_args),
                           extra_recv=("--reference-loop",), recv_host=RECEIVER_IP,
                           recv_wrap=lab.exec_in(lab.receiver), send_wrap=lab.exec_in(lab.sender))
        row.update(outcome="completed", stats=stats)
    except (VsaeError, subprocess.TimeoutExpired) as exc:
        row.update(outcome="failed", error=str(exc).splitlines()[-1][:300])
    finally:
        lab.stop_tcp_flow()
        lab.stop_relay()
    row["wall_s"] = round(time.monotonic() - began, 1)
    relay_path = out / "relay.json"
    row["relay"] = json.loads(relay_path.read_text()) if relay_path.exists() else None
    return row


def cap_at(impairment: dict, t: float) -> float | None:
    """The media direction's cap (kbps) t seconds after the first media packet (None: no cap)."""
    rate = impairment.get("rate_kbps") or 0.0
    for at, kbps in sorted(impairment.get("rate_steps") or []):
        if t >= at:
            rate = kbps
    return rate or None


def per_second(row: dict) -> list[dict]:
    """The call second by second on the relay's clock (from the first media packet; the last, partial second
    left out): the cap, the sender's video target at the end of that second, and what crossed the link
    towards the receiver, in kbps on the wire (video RTP with its retransmissions, RTCP, data channels, TCP)."""
    forward = (row.get("relay") or {}).get("forward") or {}
    seconds = (forward.get("per_second") or [])[:-1]
    sender = (row.get("stats") or {}).get("sender") or {}
    changes = sender.get("rate_log") or []
    # The receiver's shown PSNR by second of the stream: its source frames are sent from the first media packet on.
    psnr = (row.get("stats") or {}).get("psnr_per_second") or []
    out = []
    for sec in seconds:
        t = sec["t"]
        target, wire = sender.get("start_kbps"), None
        for change in changes:
            if change["t"] < t + 1:
                target, wire = change["kbps"], change.get("wire_kbps")
        kbps = {k: round(sec.get(k, 0) * 8 / 1000, 2) for k in ("rtp", "rtcp", "dtls", "tcp")}
        shape = next((x["shape"] for x in reversed(sender.get("shape_log") or []) if x["t"] < t + 1), None)
        out.append({"t": t, "cap_kbps": cap_at(forward.get("impairment") or {}, t), "target_kbps": target,
                    "target_wire_kbps": wire, "shape": shape,
                    "video_kbps": kbps["rtp"], "rtcp_kbps": kbps["rtcp"], "data_kbps": kbps["dtls"], "tcp_kbps": kbps["tcp"],
                    "dropped": sec.get("dropped", 0), "psnr": psnr[t] if isinstance(t, int) and 0 <= t < len(psnr) else None})
    return out


def settling(seconds: list[dict], steps: list[list[float]], sender_rate: bool = False) -> list[dict]:
    """For each step of the cap after the first, the seconds from the step until the video settled and stayed
    settled up to the next step: down, its rate on the link under the new cap with nothing dropped; up, within
    SETTLE_SHARE of the new cap (`sender_rate`: or the sender's target on the wire there, with nothing dropped).
    None: it did not settle before the next step (or the call's end)."""
    out = []
    for i in range(1, len(steps)):
        at, cap = steps[i]
        until = steps[i + 1][0] if i + 1 < len(steps) else math.inf
        window = [s for s in seconds if at <= s["t"] < until]
        if cap < steps[i - 1][1]:
            ok = lambda s, cap=cap: s["video_kbps"] <= cap and s["dropped"] == 0  # noqa: E731
        else:
            ok = lambda s, cap=cap: s["video_kbps"] >= SETTLE_SHARE * cap or (  # noqa: E731
                sender_rate and s.get("target_wire_kbps") is not None
                and s["target_wire_kbps"] >= SETTLE_SHARE * cap and s["dropped"] == 0)
        settled = next((s["t"] - at for j, s in enumerate(window) if all(ok(x) for x in window[j:])), None)
        out.append({"at_s": at, "kbps": cap, "settle_s": None if settled is None else max(0.0, settled)})
    return out


def stall_seconds(seconds: list[dict]) -> int:
    """Whole seconds, between the first and the last with video, in which no video packet crossed the link."""
    with_video = [i for i, s in enumerate(seconds) if s["video_kbps"] > 0]
    return 0 if not with_video else sum(1 for s in seconds[with_video[0]:with_video[-1] + 1] if s["video_kbps"] == 0)


def plot_per_second(row: dict, seconds: list[dict], path: Path) -> Path:
    """The call second by second: cap, the sender's target (video bytes), what crossed the link."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] + 0.5 for s in seconds]
    fig, ax = plt.subplots(figsize=(8, 4.4))
    if any(s["cap_kbps"] for s in seconds):
        ax.step([s["t"] for s in seconds] + [seconds[-1]["t"] + 1], [s["cap_kbps"] or 0 for s in seconds] + [seconds[-1]["cap_kbps"] or 0],
                where="post", color="black", label="cap (wire)")
    ax.plot(t, [s["video_kbps"] for s in seconds], "o-", color="tab:blue", label="video on the link (RTP, wire)")
    ax.plot(t, [s["target_kbps"] for s in seconds], "s--", color="tab:orange", label="sender's video target (encoded)")
    if any(s["data_kbps"] > DATA_PLOT_KBPS for s in seconds):
        ax.plot(t, [s["data_kbps"] for s in seconds], "d-", color="tab:purple", label="data channels (wire)")
    if any(s["tcp_kbps"] for s in seconds):
        ax.plot(t, [s["tcp_kbps"] for s in seconds], "^-", color="tab:green", label="competing TCP")
    shapes = (row.get("stats") or {}).get("sender", {}).get("shape_log") or []
    for change in shapes:  # where the stream's shape changed, and to what
        ax.axvline(change["t"], color="tab:gray", lw=0.8, ls=":")
        ax.annotate(change["shape"], (change["t"], 1.0), xycoords=("data", "axes fraction"), xytext=(2, -10),
                    textcoords="offset points", fontsize=8, color="tab:gray")
    dropped = [s for s in seconds if s["dropped"]]
    if dropped:
        ax.scatter([s["t"] + 0.5 for s in dropped], [0] * len(dropped), marker="x", color="tab:red", label="packets dropped")
    ax.set_xlabel("seconds from the first media packet")
    ax.set_ylabel("kbps")
    ax.set_title(f"{row['scenario']}: second by second")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    scored = [s for s in seconds if s.get("psnr") is not None]
    if scored:  # what the receiver showed, on its own scale
        right = ax.twinx()
        right.plot([s["t"] + 0.5 for s in scored], [s["psnr"] for s in scored], "v:", color="tab:brown", ms=4)
        right.set_ylabel("PSNR shown (dB)", color="tab:brown")
        handles.append(right.lines[0])
        labels.append("PSNR shown (dB, right)")
    ax.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4)  # below: the lines stay clear
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summarize_row(row: dict, clean_psnr: float | None) -> dict:
    s = row.get("stats") or {}
    relay = row.get("relay") or {}
    fwd = (relay.get("forward") or {}).get("counts", {})
    lost = sum(v for k, v in fwd.items() if k.startswith("lost_"))
    psnr = s.get("psnr")
    seconds = row["per_second"] if "per_second" in row else per_second(row)
    settle = settling(seconds, row["steps"]) if row.get("steps") else []
    settle_rate = settling(seconds, row["steps"], sender_rate=True) if row.get("steps") else []
    tcp = sorted(x["tcp_kbps"] for x in seconds)
    return {
        "scenario": row["scenario"],
        "outcome": row["outcome"] + (f": {row['error']}" if row.get("error") else ""),
        "frames_out": s.get("frames_out"), "frames_received": s.get("frames_received"), "concealed": s.get("frames_concealed"),
        "keyframe_requests": s.get("keyframe_requests"), "recovery_ms": s.get("recovery_ms_max"),
        "latency_ms": s.get("latency_ms"),
        "psnr": psnr, "psnr_drop": None if psnr is None or clean_psnr is None else round(clean_psnr - psnr, 2),
        "psnr_bicubic": s.get("psnr_bicubic"), "video_kbps": s.get("video_kbps"),
        "model_transferred": s.get("model_transferred"), "timestamps_anchored": s.get("timestamps_anchored"),
        "model": _model_outcome(row), "forward_lost": f"{lost}/{fwd.get('packets', 0)}", "wall_s": row["wall_s"],
        "stalls": stall_seconds(seconds) if seconds else None,
        "settle_s": _settle_text(settle), "settle_rate_s": _settle_text(settle_rate),
        "tcp_kbps": tcp[len(tcp) // 2] if tcp and tcp[-1] else None,
        "shapes": shape_path((s.get("sender") or {}).get("shape_log")),
        "note": row.get("note", ""),
    }


def _settle_text(settle: list[dict]) -> str | None:
    """Each step's seconds to settle, "—" where it did not (None: no steps)."""
    return " / ".join("—" if x["settle_s"] is None else f"{x['settle_s']:g}" for x in settle) or None


def shape_path(log: list[dict] | None) -> str | None:
    """An adaptive stream's shapes in order, each with the second it took over (None: one fixed shape)."""
    if not log:
        return None
    return " → ".join(f"{x['shape']}" + (f" ({x['t']:g} s)" if x["t"] else "") for x in log)


def _model_outcome(row: dict) -> str:
    """How the model got there: verified (after N sessions, resumed at B bytes) or not at all."""
    s = row.get("stats") or {}
    if not s:
        return "not loaded"
    sender = s.get("sender") or {}
    attempts = sender.get("attempts", 1)
    if s.get("model_transferred"):
        text = "verified" + (f" in session {attempts} of {attempts}" if attempts > 1 else "")
    elif sender.get("early_start") and not sender.get("model_shipped"):  # the call ended during the transfer
        text = f"in transfer at the end ({sender.get('model_bytes_sent', 0) // 1024} KiB sent)"
    elif sender.get("model_bytes_sent"):  # loaded by an earlier session of this stream, whose connection then dropped
        text = f"verified in an earlier session ({attempts} sessions)"
    else:
        text = "already held by the receiver"
    if s.get("model_bytes_resumed"):
        text += f" (resumed at {s['model_bytes_resumed'] // 1024} KiB)"
    return text


def write_table(rows: list[dict], out: Path) -> Path:
    cols = ["scenario", "outcome", "model", "frames_out", "concealed", "keyframe_requests", "recovery_ms", "latency_ms",
            "psnr", "psnr_drop", "psnr_bicubic", "video_kbps", "forward_lost", "stalls", "settle_s", "settle_rate_s", "tcp_kbps", "shapes", "wall_s", "note"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + " |")
    path = out / "faults.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def step_rates(text: str) -> tuple[float, float, float]:
    """An argparse type: the stepped cap's three rates, kbps (`60,20,60`)."""
    try:
        rates = tuple(float(v) for v in text.split(","))
    except ValueError:
        rates = ()
    if len(rates) != 3 or not all(math.isfinite(r) and r > 0 for r in rates):
        raise argparse.ArgumentTypeError(f"expected three positive rates in kbps, comma-separated, got {text!r}")
    return rates


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--video", default="carphone")
    p.add_argument("--model", default=None, help="model bundle (default: the demo's cached fit on the even frames)")
    p.add_argument("--out", required=True)
    p.add_argument("--only", default=None, help="comma-separated scenario names (default all)")
    p.add_argument("--kbps", type=float, default=20.0)
    p.add_argument("--fps", type=float, default=FAULT_FPS)
    p.add_argument("--frames", default=None)
    p.add_argument("--loops", type=positive, default=FAULT_LOOPS, help=f"passes of the clip per stream (default {FAULT_LOOPS})")
    p.add_argument("--send-args", default="", metavar="ARGS",
                   help="more `vsae send` options for every scenario, e.g. \"--probe off\" (an ablation)")
    p.add_argument("--shapes", default=str(SHAPE_TABLE), metavar="RESULTS.json",
                   help="the rate-quality table of the adaptive-shape scenario (default: the committed carphone table)")
    p.add_argument("--switch-codecs", type=codec_list, default=(), metavar="CODEC[,CODEC]",
                   help="the adaptive-shape scenario may switch to these codecs too (vsae send --switch-codecs)")
    p.add_argument("--steps", type=step_rates, default=STEP_KBPS, metavar="HIGH,LOW,HIGH",
                   help="the stepped cap's rates in kbps (default %s)" % ",".join(f"{k:g}" for k in STEP_KBPS))


def run(args: argparse.Namespace) -> int:
    why = lab_available()
    if why:
        print(f"vsae bench faults: error: {why}", file=sys.stderr)
        return 1
    from codec.cache import cached_fit
    from codec.video import read_video, resolve_video

    video = resolve_video(args.video)
    model = args.model or str(cached_fit(video, "even", 4.0)[0])
    out = Path(args.out)
    count = len(read_video(video, args.frames)[0])  # a bad selection is one clear error here, before the lab
    step_loops = max(1, math.ceil(STEP_STREAM_S * args.fps / count))
    chosen = scenarios(args.kbps, args.shapes, args.steps, step_loops,
                       ("--switch-codecs", ",".join(args.switch_codecs)) if args.switch_codecs else ())
    if args.send_args:
        extra = tuple(shlex.split(args.send_args))
        chosen = [dataclasses.replace(s, send_args=(*s.send_args, *extra)) for s in chosen]
    if args.only:
        names = [n.strip() for n in args.only.split(",")]
        chosen = [s for s in chosen if s.name in names]
    rows, table = [], []
    # A plain SIGTERM would skip the lab's cleanup and leave its namespaces behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with NetworkLab() as lab:
        for scenario in chosen:
            print(f"vsae bench faults: {scenario.name} ...", file=sys.stderr, flush=True)
            where = out / scenario.name.replace(" ", "_").replace("%", "pct")
            row = run_scenario(lab, scenario, str(video), model, where, args.frames, kbps=args.kbps, fps=args.fps, loops=args.loops)
            row["per_second"] = per_second(row)
            if row["per_second"] and (scenario.forward.rate_kbps or scenario.competing_tcp):  # the capped ones
                plot_per_second(row, row["per_second"], where / "per_second.png")
            rows.append(row)
            clean = next((r["stats"]["psnr"] for r in rows if r["scenario"] == "clean" and r.get("stats")), None)
            table.append(summarize_row(row, clean))
            print(json.dumps(table[-1]), flush=True)
    (out / "faults.json").write_text(json.dumps({"rows": table, "runs": rows}, indent=2, default=str) + "\n")
    print(f"wrote {write_table(table, out)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.faults", description="stream across real network faults (needs root)")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
