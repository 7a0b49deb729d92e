"""The sender: ship the model over a reliable data channel, then stream the low-res frames on a video track.

One session: signaling (HTTP offer/answer), `hello` both ways, the stream `config`, the model in
chunks (skipped when the receiver already has it), the receiver's `ack`, then every T-th source frame,
area-downsized by S, encoded at the target bitrate and paced at the source frame rate, and finally
`bye` with the bytes the RTP sender reports.

A live source (`LiveFrames` over codec.capture.LiveCapture, `vsae send --input`) takes the clip's place: its
config names a cap of frames, its track (`LiveLowResTrack`) sends each key as the source delivers it, and
its bye carries the frames it covered, which the receiver outputs, one per source frame.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import ipaddress
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from aiortc import MediaStreamTrack, RTCDataChannel
from aiortc.mediastreams import MediaStreamError

from codec import bundle
from codec.ops import TEMPORAL_METHODS
from codec.video import resize, to_tensor, to_uint8
from protocol import auth
from protocol import feedback as transport_feedback
from protocol import messages as msg
from protocol.defaults import DEFAULT_CODEC, DEFAULT_KBPS, DEFAULT_SCALE, DEFAULT_TEMPORAL
from protocol.peer import DEFAULT_HOST, new_peer_connection, prefer_codec, send_message
from protocol.signaling import ReceiverBusy, request_answer
from protocol.timing import SYNC_FRAMES, SYNC_INTERVAL_S, frame_pts, sync_pts, ticks_per_frame

from . import payload, rtcp
from .bwe import FEEDBACK_HOLD_QUEUE_S, NACK_WINDOW_S, BandwidthEstimator, NackLoss, SentRate
from .closedloop import ClosedLoop, RefreshOptions
from .encoder import MIN_SIDE, RealtimeEncoder
from .pacer import PACKET_OVERHEAD_BYTES, BackgroundPacer, rtp_wire_bytes
from .probe import Prober
from .rtx import RetransmissionGate
from .shapes import Shape, ShapeTable

log = logging.getLogger("vsae.sender")

# How long to wait for each step the receiver must answer (hello, model ack, final bye).
HANDSHAKE_TIMEOUT_S = 30.0
MODEL_TIMEOUT_S = 120.0
BYE_TIMEOUT_S = 120.0
# After the last frame, let the last RTP packets and RTCP reports go out before reading the stats.
DRAIN_S = 0.5
# Rate control. The video target follows the bandwidth estimate (sender/bwe.py: GCC's loss rule on the
# receiver reports, the receiver's REMB and the RTT trend, fed by sender/rtcp.py), never above the requested
# rate nor below its floor (`min_kbps`: MIN_KBPS_SHARE of it, at least MIN_VIDEO_KBPS). A keyframe-request storm (STORM_REQUESTS within STORM_WINDOW_S since
# the last change: the receiver gave up on lost packets that NACK did not bring back) counts as heavy loss.
# libvpx and x264 take no new target once open, so each change is a new encoder from a keyframe (a few
# delta frames' worth of bytes): the target moves only when the estimate is more than RETARGET_SHARE away,
# at a frame boundary, and upwards at most once every RETARGET_UP_S.
STORM_REQUESTS = 2
STORM_WINDOW_S = 5.0
# Requests in the stream's first STORM_GRACE_S are the receiver joining (its first keyframe, the first frames'
# packets reordered), not loss at a rate any report has judged: they get their keyframe and count towards no storm
# (the fault lab's delay row, 100 +- 30 ms: two requests 0.2 s in cut the start to the floor, 4.5 kbps, and the call
# climbed back for 16 s: 29.8-30.1 dB against 31.4-31.8 without them).
STORM_GRACE_S = 1.0
# The floor: low enough for a link a quarter of the request (the fault lab steps 60 -> 15 kbps, and a
# 15 kbps link carries ~8 kbps of video once headers and the data channels are paid), not so low that VP8
# has nothing left to code with (at 7.5 frames/s, 4 kbps is ~65 bytes a frame).
MIN_KBPS_SHARE = 0.1
MIN_VIDEO_KBPS = 4.0
# The video starts at this share of the requested rate (on the wire) and climbs while the reports stay clean
# (sender/bwe.py's slow start): the link is unknown, and a start above a narrow link loses about half its
# packets until the first receiver report (~1 s in aiortc), every frame after the first loss waiting for a
# keyframe (the fault lab's 15 kbps cap under a 20 kbps request: ~1.5 s of video lost before the first cut).
START_SHARE = 0.5
RETARGET_SHARE = 0.10
RETARGET_UP_S = 2.0
# ... but a probe's jump (sender/probe.py) moves it up when it is this far: a chain of probes after the link widens reads
# the link from below, and its last step is often the smaller (the lab's stepped cap: 50.0 -> 53.8 kbps on the 60 kbps
# link left the target at 50.0, under the 51 that count as climbed back).
PROBE_RETARGET_SHARE = 0.02
# The estimate is of what the link carries (sender/bwe.py works in wire kbps: loss and RTT are about packets
# on the wire), the video target is of encoded bytes; at a few kbps the difference is a third of the link: each
# video packet's PACKET_OVERHEAD_BYTES (sender/pacer.py).
# A frame larger than this RTP payload goes in several packets (aiortc's packetizers split near 1300 bytes).
PACKET_PAYLOAD_BYTES = 1200
# What else this side sends on the same path during a call: frame metadata once a second (137 bytes on the
# wire), SCTP acknowledgements of the receiver's messages (85), RTCP sender reports (124 a second), STUN
# consent checks: measured 2.8 kbps in the fault lab's relay (bench/impair.py's per-second counts).
DATA_HEADROOM_KBPS = 3.0
# The background flow (an in-call model transfer; sender/pacer.py) gets what the estimate leaves above the
# video's wire cost, less this share of the estimate: the estimate's own error (its climb steps are 5-30 %) and
# a keyframe's burst. No floor: on a link the video fills, a floor is loss for the video (a fifth of the video's
# rate cost 35 concealed frames under the fault lab's 30 kbps cap). The flow still probes: the estimate may run
# 25-30 % ahead of what is sent, which leaves the flow a share, whose use lifts what is sent.
BACKGROUND_HEADROOM_SHARE = 0.1
# While a background flow runs, aiortc's REMB (of the video alone) is a delay signal only under this share of
# the video's wire rate: its receiver answers overuse with 0.85 of what it measures coming in, and without
# overuse wanders around that rate with the keyframes.
BACKGROUND_REMB_SIGNAL = 0.9
# The background flow gets nothing for this long after a congestion signal (a loss or delay cut, a queue in the
# RTT): the video's rate settles first.
BACKGROUND_PAUSE_S = 2.0
# While a background flow runs the estimate may climb past the video's request, up to this much more; without
# one it stops at the request (what the video can use).
BACKGROUND_MAX_KBPS = 20_000.0
# How an in-call model transfer is paced (SendOptions.model_pace), besides a fixed kbps.
MODEL_PACES = ("auto", "estimate", "off")
# The values of the sender's auto/on/off options: probing the link with padding (SendOptions.probe, sender/probe.py)
# and asking for transport feedback (SendOptions.feedback).
SWITCH_MODES = ("auto", "on", "off")
# Model chunks of an in-call transfer paced in the estimate are this long of the request's wire rate (between
# MIN_CHUNK_BYTES and CHUNK_BYTES): SCTP sends a chunk's packets back to back, and the fault lab's bottleneck
# queue holds 0.3 s.
CHUNK_S = 0.2
# A receiver report's interval, for the rate the link delivered in it, is timed by the receiver's clock (sender/rtcp.py)
# or else by when the reports reach the sender; one shorter than this (aiortc sends one every 0.5-1.5 s) times nothing.
MIN_REPORT_GAP_S = 0.3
# Transport feedback (receiver/feedback.py): the rate the link delivered the video at is read over the newest
# feedbacks that saw at least a small queue (FEEDBACK_HOLD_QUEUE_S: the link was busy, so the arrivals were spaced by
# its rate, not by what was sent) covering at least this long; less times a frame's packets, not the link.
FEEDBACK_RATE_S = 0.25
# The feedback kept for the sender's report (a long call sends five a second).
FEEDBACK_LOG_MAX = 3000
# The packets a NACK answers were sent about an RTT before it (at most this long: a queue-inflated RTT
# would shift the window past the loss).
NACK_LAG_MAX_S = 0.5
# Frame metadata (capture time, the latency reference) at most this often: the receiver dates the frames in
# between from the stream's clock. Every frame's would cost ~6 kbps of data-channel traffic at 7.5 fps.
META_INTERVAL_S = 1.0
# A session whose connection drops before the video starts (e.g. during the model transfer on a lossy link)
# is started again this many times by default, after RETRY_DELAY_S; the receiver keeps the model chunks it
# has and the transfer resumes there (Hello.model_offset).
DEFAULT_RETRIES = 3
RETRY_DELAY_S = 2.0


class SessionError(Exception):
    """The session failed: refused by the peer, timed out, or the connection dropped.

    `retryable`: the connection failed before the video started, so a new session may succeed (a refusal
    by the receiver is not retryable)."""

    def __init__(self, text: str, retryable: bool = False):
        super().__init__(text)
        self.retryable = retryable


@dataclass
class SendOptions:
    host: str = DEFAULT_HOST
    port: int = 8765
    scale: int = DEFAULT_SCALE
    temporal: int = DEFAULT_TEMPORAL
    kbps: float = DEFAULT_KBPS
    # The video's first target (default: `kbps` to a receiver on this machine; to any other START_SHARE of `kbps` on
    # the wire, then climbing).
    start_kbps: float | None = None
    codec: str = DEFAULT_CODEC
    fps: float | None = None  # send at this rate (default: the source's)
    connect_timeout: float = 15.0
    bind: str | None = None  # this side's ICE address (default: `host`, right for loopback)
    secret: bytes | None = None  # shared secret: answers a receiver's nonce with an HMAC tag (protocol.auth)
    retries: int = DEFAULT_RETRIES  # new sessions after a connection lost before the video started
    loop: int = 1  # stream the clip this many times back to back (source indices run on: 0 .. loop*len-1)
    # A live call (sender/closedloop.py): run the receiver's rebuild here and guard every frame; with
    # `refresh`, also fine-tune the model during the call and ship updates under its model-stream budget.
    guard: bool = False
    refresh: RefreshOptions | None = None
    # When the receiver lacks the model, start the video at once and send the model during it (Config.early;
    # the receiver shows the bicubic rebuild until the model is verified). A live call (guard) always waits:
    # its closed loop needs the model at both ends from the first frame.
    early_start: bool = True
    # Pace of that in-call model transfer: "estimate" (inside the bandwidth estimate, less the video: sender/pacer.py),
    # "off" (as fast as the data channel takes them), a fixed rate in kbps of model chunks, or "auto": "off" to a
    # receiver on this machine (loopback: no bottleneck to share, and the model arrives in ~0.2 s instead of the
    # several seconds the estimate's climb takes), "estimate" to any other.
    model_pace: str | float = "auto"
    # Adapt the stream's shape (S, T, or the plain codec at full size) to the estimate with this rate-quality table
    # (sender/shapes.py, from `vsae bench rd` on prior footage); None: the fixed `scale` and `temporal`.
    shape_table: ShapeTable | None = None
    # Probe the link with padding when the estimate is under the request (sender/probe.py): "on", "off", or "auto"
    # ("off" to a receiver on this machine, where nothing narrows; "on" to any other).
    probe: str = "auto"
    # Transport feedback from the receiver (receiver/feedback.py): auto, on, off (as `probe`).
    feedback: str = "auto"
    # Fault injection (tests, the fault lab): called with (version, wire bytes) of each update, returns the
    # bytes to send instead; the closed loop still mirrors the update as made.
    update_filter: Callable[[int, bytes], bytes] | None = None


@dataclass
class SendResult:
    frames: int  # source frames covered
    frames_sent: int  # low-res frames sent
    video_bytes: int  # RTP payload bytes (getStats)
    video_packets: int
    video_kbps: float  # video_bytes over the stream's media duration
    model_bytes_sent: int  # 0 when the receiver already had the model
    keyframe_requests: int
    receiver_frames_out: int
    wall_s: float
    attempts: int = 1  # sessions it took (retries after a lost connection, see SendOptions.retries)
    extra: dict = field(default_factory=dict)


def low_res_size(height: int, width: int, scale: int) -> tuple[int, int]:
    """The low-res frame size (h, w): ÷scale, rounded down to even sides (yuv420p, H.264) and >= 2."""
    return max(2, round(height / scale) // 2 * 2), max(2, round(width / scale) // 2 * 2)


def prepare_low_res(frames: np.ndarray, scale: int, temporal: int) -> tuple[list[int], np.ndarray]:
    """The sender's subsampling: every `temporal`-th frame, area-downsized ÷`scale`."""
    indices = list(range(0, len(frames), temporal))
    size = low_res_size(frames.shape[1], frames.shape[2], scale)
    # In chunks: float copies of a long hi-res clip would not fit in memory at once.
    chunks = [to_uint8(resize(to_tensor(frames[indices[j : j + 64]]), size)) for j in range(0, len(indices), 64)]
    return indices, np.concatenate(chunks)


class Looped:
    """`items` repeated `times` times without copying: item j is items[j % len(items)], plus
    (j // len(items)) * `offset` (the source indices of later passes continue past the clip's end).

    Stands in for the low-res frames (offset 0) and their source indices (offset = clip length) of a
    looped stream, so memory stays one clip's worth however long the stream runs."""

    def __init__(self, items, times: int, offset: int = 0):
        self.items, self.times, self.offset = items, times, offset
        self.shape = (len(items) * times, *getattr(items, "shape", (len(items),))[1:])

    def __len__(self) -> int:
        return len(self.items) * self.times

    def __getitem__(self, j: int):
        n = len(self)
        if not -n <= j < n:
            raise IndexError(j)
        passes, k = divmod(j % n, len(self.items))
        return self.items[k] + passes * self.offset if self.offset else self.items[k]


class LowResTrack(MediaStreamTrack):
    """A video track of pre-encoded low-res frames (aiortc only packetizes them), paced in real time.

    Waits for `start` (the receiver's model ack), sends the sync frames (see protocol.timing), then each
    kept frame stamped with its source index. `on_frame(index, capture_time)` runs as each is sent.
    """

    kind = "video"

    def __init__(self, low: np.ndarray, indices: list[int], fps: float, ticks: int, codec: str, kbps: float, temporal: int,
                 clock=time.monotonic, start_kbps: float | None = None):
        super().__init__()
        self.low, self.indices, self.fps, self.ticks, self.temporal = low, indices, fps, ticks, temporal
        self.codec, self.target_kbps = codec, kbps
        self.min_kbps = min(kbps, max(MIN_VIDEO_KBPS, kbps * MIN_KBPS_SHARE))
        # The estimate is of the link (wire kbps), from START_SHARE of the request's cost there unless told.
        start_wire = self.wire_kbps(kbps) * START_SHARE if start_kbps is None else self.wire_kbps(min(kbps, start_kbps))
        self.estimator = BandwidthEstimator(start_kbps=start_wire, min_kbps=self.wire_kbps(self.min_kbps),
                                            max_kbps=self.wire_kbps(kbps), data_kbps=DATA_HEADROOM_KBPS)
        self.kbps = self._target_for(self.estimator.estimate(clock()))
        self.start_kbps = self.kbps
        h, w = low.shape[1:3]
        self.encoder = RealtimeEncoder(codec, w, h, self.kbps, fps / temporal)
        self._sync_encoder = RealtimeEncoder(codec, w, h, kbps, fps / temporal)
        self.start = asyncio.Event()
        self.finished = asyncio.Event()
        self.start_time = 0.0
        self.keyframe_wanted = True  # the first real frame is a keyframe
        self.on_frame = None
        self.on_packet = None  # on_packet(index, payload): the encoded bytes of each real frame (the closed loop)
        self._next = 0
        self._sync = 0
        self.keyframe_requests = 0
        self._clock = clock
        self._requests: list[float] = []  # times of recent keyframe requests
        self._rate_changed = -math.inf
        self._lowered_at = -math.inf  # the last move down
        self._probe_jump_at = -math.inf  # the last probe's jump (sender/probe.py)
        self._started_at: float | None = None  # clock() at the first real frame
        self.encoded_bytes = 0  # over every encoder this track has had
        self.rate_changes: list[tuple[float, float]] = []  # (seconds into the session, new kbps)
        self.rate_log: list[dict] = []  # each change with its reason
        self.retransmissions = RetransmissionGate(lambda: self.kbps, lambda: self.estimator.rtt_s, clock)
        self.nack_loss = NackLoss()
        self.sent_rate = SentRate()
        self._report_at: float | None = None  # the last receiver report's arrival
        self.feedback_asked = False  # the config asked the receiver for transport feedback (protocol/feedback.py)
        self.feedback_refused = 0  # feedback FCIs that were not a valid one (ignored, as aiortc ignores bad RTCP)
        self._feedback_seq: int | None = None  # the newest transport feedback taken (RTCP may arrive out of order)
        self._busy: deque[tuple[float, float]] = deque()  # (span s, wire bits) of the newest busy feedbacks
        self.feedback_log: list[dict] = []
        self.remb_log: list[dict] = []  # every REMB heard (wire kbps), believed or not
        self._cut_seen_at = -math.inf  # the estimator's last loss cut, as this track has acted on it
        self.background: BackgroundPacer | None = None  # the data channel's paced flow, while one runs
        self.background_stats: dict | None = None  # its summary, once it has ended

    def start_background(self) -> BackgroundPacer:
        """A background flow begins: paced in what the estimate leaves the video, which may now climb past it."""
        self.background = BackgroundPacer(self.background_share_kbps, clock=self._clock)
        self.estimator.max_kbps = self.wire_kbps(self.target_kbps) + BACKGROUND_MAX_KBPS
        return self.background

    def end_background(self) -> None:
        """The background flow is done: the estimate is again of the video's range, and a REMB bounds it again."""
        if self.background is not None:
            self.background_stats, self.background = self.background.summary(), None
        self.estimator.max_kbps = self.wire_kbps(self.target_kbps)
        self.estimator.loss_kbps = min(self.estimator.loss_kbps, self.estimator.max_kbps)

    def background_share_kbps(self) -> float:
        """What the background flow may send now (kbps on the wire): the estimate less the video's wire cost and a
        headroom; nothing right after a congestion signal."""
        now = self._clock()
        if now - self.estimator.congested_at() < BACKGROUND_PAUSE_S:
            return 0.0
        video = self.wire_kbps(self.kbps)
        estimate = self.estimator.estimate(now)
        return max(0.0, estimate * (1 - BACKGROUND_HEADROOM_SHARE) - video)

    def sending_kbps(self) -> float:
        """What this side puts on the link now (wire kbps): the video's target, and the background flow's rate."""
        return self.wire_kbps(self.kbps) + (self.background.kbps() if self.background is not None else 0.0)

    def request_wire_kbps(self) -> float:
        """What the video's request costs on the link."""
        return self.wire_kbps(self.target_kbps)

    def on_probe_success(self, kbps: float) -> None:
        """A bandwidth probe got through at `kbps` on the wire (sender/probe.py): the estimate jumps there, and the
        target may follow at the next frame (no wait since the last move up: the probe is the evidence)."""
        self._probe_jump_at = self._clock()
        self.estimator.on_probe(self._probe_jump_at, kbps)
        self._rate_changed = -math.inf

    def request_keyframe(self) -> None:
        """A PLI/FIR (RTCP) or a `keyframe` message: the next frame is a keyframe; a storm of them, while packets
        are being lost, lowers the rate."""
        self.keyframe_requests += 1
        self.keyframe_wanted = True
        now = self._clock()
        if self._started_at is not None and now - self._started_at < STORM_GRACE_S:
            return
        # Only requests the current rate caused: the last change's keyframe may still be on its way.
        self._requests = [t for t in self._requests if now - t < STORM_WINDOW_S and t > self._rate_changed] + [now]
        if len(self._requests) >= STORM_REQUESTS:
            self.estimator.on_keyframe_storm(now, len(self._requests))
            self._after_estimate()
            self._requests = []

    def on_receiver_report(self, fraction_lost: float, rtt_s: float | None, expected: int | None = None,
                           received: tuple[int, int, float | None] | None = None) -> None:
        """A receiver report block for this stream (sender/rtcp.py); `received`: the packets that arrived since the
        last report, their bytes (RTP headers included) and the seconds between the two reports at the receiver (None:
        timed here, by their arrival), from which the rate the link delivered."""
        now = self._clock()
        delivered = None
        if received is not None:
            packets, size, interval = received
            if interval is None and self._report_at is not None:
                interval = now - self._report_at
            if interval is not None and interval >= MIN_REPORT_GAP_S:
                delivered = rtp_wire_bytes(packets, size) * 8 / 1000 / interval
                delivered += DATA_HEADROOM_KBPS
        self._report_at = now
        self.estimator.on_report(now, fraction_lost, rtt_s, sending_kbps=self.sending_kbps(), expected=expected,
                                 delivered_kbps=delivered)
        self._after_estimate()

    def on_feedback(self, fci: bytes) -> None:
        """Transport feedback (protocol/feedback.py, sender/rtcp.py): the queue the video's packets waited in, and the
        rate the link delivered them at over the newest feedbacks that saw the link busy (FEEDBACK_RATE_S)."""
        if not self.feedback_asked:
            return
        try:
            feedback = transport_feedback.unpack(fci)
        except msg.ProtocolError as exc:
            if not self.feedback_refused:
                log.warning("vsae send: ignoring a malformed transport feedback from the receiver (%s)", exc)
            self.feedback_refused += 1
            return
        if not transport_feedback.newer(feedback.seq, self._feedback_seq):
            return  # older than one already taken
        self._feedback_seq = feedback.seq
        now = self._clock()
        queue = feedback.queue_us / 1e6
        if queue < FEEDBACK_HOLD_QUEUE_S:
            self._busy.clear()
        elif feedback.span_us > 0:
            bits = rtp_wire_bytes(feedback.packets, feedback.bytes) * 8
            self._busy.append((feedback.span_us / 1e6, bits))
        while len(self._busy) > 1 and sum(x[0] for x in self._busy) - self._busy[0][0] >= FEEDBACK_RATE_S:
            self._busy.popleft()
        span, bits = sum(x[0] for x in self._busy), sum(x[1] for x in self._busy)
        delivered = None
        if span >= FEEDBACK_RATE_S:
            # With the data channels' usual share, as a receiver report's delivered rate: over a few tenths of a second
            # the video's packets may have had the link to themselves, and this then over-reads it by up to that share
            # (the lab's 15 kbps cap: 17.9-18.0). sender/bwe.py takes it off again (`link_kbps`).
            delivered = bits / 1000 / span + DATA_HEADROOM_KBPS
        mean_bits = rtp_wire_bytes(1, feedback.bytes / max(1, feedback.packets)) * 8
        self.estimator.on_feedback(now, queue, delivered, sending_kbps=self.sending_kbps(), packet_bits=mean_bits,
                                   packet_bytes=feedback.bytes if feedback.packets == 1 else None)
        if len(self.feedback_log) < FEEDBACK_LOG_MAX:
            self.feedback_log.append({"t": self._call_time(now), "queue_ms": round(queue * 1000, 1),
                                      "delivered_kbps": None if delivered is None else round(delivered, 2),
                                      "packets": feedback.packets, "bytes": feedback.bytes, "span_ms": feedback.span_us // 1000})
        self._after_estimate()

    def _call_time(self, now: float) -> float:
        """`now` on the call's clock, from the first real frame (0 before it), as the reports' logs are timed."""
        return round(now - self._started_at, 2) if self._started_at is not None else 0.0

    def on_remb(self, kbps: float) -> None:
        """The receiver's REMB (sender/rtcp.py): aiortc's receiver counts RTP payload bytes, as the target does.
        It sees only the video: while a background flow shares the link, a REMB at or above the video's own
        rate says nothing about the link (aiortc's receiver caps it at 1.5x what it measures coming in, so it
        would hold the flow to half the video's rate), and is dropped; one well under it (BACKGROUND_REMB_SIGNAL)
        is a delay signal, with what the flow sends beside the video added."""
        remb = self.wire_kbps(kbps)
        if len(self.remb_log) < FEEDBACK_LOG_MAX:
            self.remb_log.append({"t": self._call_time(self._clock()), "kbps": round(remb, 2)})
        if self.background is not None:
            if remb >= BACKGROUND_REMB_SIGNAL * self.wire_kbps(self.kbps):
                self.estimator.rembs += 1
                self.estimator.rembs_ignored += 1
                return
            remb += self.background.kbps()
        self.estimator.on_remb(self._clock(), remb, sending_kbps=self.sending_kbps())

    def _after_estimate(self) -> None:
        """After the estimate heard something: a new cut for a full queue pauses retransmissions (sender/rtx.py); a
        probe's jump taken back on a NACK does not (random loss does that too)."""
        if self.estimator.overflow_at > self._cut_seen_at:
            self._cut_seen_at = self.estimator.overflow_at
            self.retransmissions.pause()

    def on_nack(self, seq: int, size: int) -> bool:
        """A NACKed packet still in aiortc's history (sender/rtcp.py): counted as fast loss, and resent if the
        retransmission gate allows it."""
        now = self._clock()
        if self.nack_loss.on_nack(now, seq):
            self.estimator.on_nack(now)
            lag = min(NACK_LAG_MAX_S, self.estimator.rtt_s or NACK_LAG_MAX_S)
            nacked, sent = self.nack_loss.window(now, lag)
            # Only a window sent entirely at the present target says something about it (a lower target's new
            # encoder has not yet shown what it costs).
            if now - lag - NACK_WINDOW_S >= self._lowered_at:
                self.estimator.on_fast_loss(now, nacked, sent, self.sending_kbps())
            self._after_estimate()
        return self.retransmissions.allow(seq, size)

    def _count_sent(self, packet) -> None:
        packets = max(1, -(-packet.size // PACKET_PAYLOAD_BYTES))
        self.nack_loss.on_sent(self._clock(), packets)
        self.sent_rate.on_sent(self._clock(), packet.size + packets * PACKET_OVERHEAD_BYTES)

    def sent_kbps(self) -> float:
        """What this side put on the link over the last second (wire kbps): the video's packets as sent (not its
        target), the data channels' usual traffic, and the background flow's rate."""
        return (self.sent_rate.kbps(self._clock()) + DATA_HEADROOM_KBPS
                + (self.background.kbps() if self.background is not None else 0.0))

    def wire_kbps(self, video_kbps: float, temporal: int | None = None) -> float:
        """What a video target costs on the link: the frames, each packet's headers, the data channels (for every
        `temporal`-th frame sent, default the stream's)."""
        fps = self.fps / (temporal or self.temporal)
        packets = fps * max(1.0, video_kbps * 125 / fps / PACKET_PAYLOAD_BYTES)
        return video_kbps + packets * PACKET_OVERHEAD_BYTES * 8 / 1000 + DATA_HEADROOM_KBPS

    def video_kbps(self, wire_kbps: float, temporal: int | None = None) -> float:
        """The video target a link rate leaves (the inverse of `wire_kbps`)."""
        fps = self.fps / (temporal or self.temporal)
        left = wire_kbps - DATA_HEADROOM_KBPS
        return min(left - fps * PACKET_OVERHEAD_BYTES * 8 / 1000, left / (1 + PACKET_OVERHEAD_BYTES / PACKET_PAYLOAD_BYTES))

    def follow_estimate(self) -> None:
        """At a frame boundary: move the video target to the estimate when it is far enough away."""
        now = self._clock()
        target = self._target_for(self.estimator.estimate(now))
        # A probe's jump up is taken however small (PROBE_RETARGET_SHARE): it is measured, and a chain of them is a few
        # moves after a widening, not the churn of every report.
        share = PROBE_RETARGET_SHARE if target > self.kbps and self._probe_jump_at > self._rate_changed else RETARGET_SHARE
        if target == self.kbps or (target != self.target_kbps and abs(target - self.kbps) <= share * self.kbps):
            return
        # A drain's way back (sender/bwe.py: the queue a feedback cut saw has drained) ends that cut: it does not wait
        # out RETARGET_UP_S (the lab's 15 kbps cap held the video at its 4 kbps floor for 2 s after a 0.5 s drain).
        restored = self.estimator.restored_at > self._rate_changed
        if target > self.kbps and now - self._rate_changed < RETARGET_UP_S and not restored:
            return
        self._set_kbps(target, now, self.estimator.reason)

    def _target_for(self, estimate: float, temporal: int | None = None) -> float:
        """The video target an estimate (wire kbps) leaves, between the floor and the request."""
        if estimate >= self.wire_kbps(self.target_kbps, temporal):
            return self.target_kbps  # the link carries the request
        return min(self.target_kbps, max(self.min_kbps, self.video_kbps(estimate, temporal)))

    def encoder_size(self) -> tuple[int, int]:
        """The (h, w) of the frames the video encoder takes."""
        return self.low.shape[1:3]

    def estimate_log(self) -> list[dict]:
        """The estimate's changes, timed from the first real frame like `rate_log`."""
        origin = self._started_at if self._started_at is not None else 0.0
        return [{"t": round(c.time - origin, 2), "kbps": c.kbps, "reason": c.reason} for c in self.estimator.history]

    def _set_kbps(self, kbps: float, now: float, why: str) -> None:
        # libvpx and x264 take no new target once open (through FFmpeg): a new encoder, from a keyframe.
        self.encoded_bytes += self.encoder.bytes
        h, w = self.encoder_size()
        self.encoder = RealtimeEncoder(self.codec, w, h, kbps, self.fps / self.temporal)
        if kbps < self.kbps:
            self._lowered_at = now
        self.kbps, self._rate_changed, self.keyframe_wanted = kbps, now, True
        at = self._call_time(now)
        self.rate_changes.append((at, round(kbps, 2)))
        self.rate_log.append({"t": at, "kbps": round(kbps, 2), "wire_kbps": round(self.wire_kbps(kbps), 2), "reason": why})
        log.warning("vsae send: %s: video target %.1f kbps", why, kbps)

    async def recv(self):
        await self.start.wait()
        loop = asyncio.get_running_loop()
        if self._sync < SYNC_FRAMES:
            k, self._sync = self._sync, self._sync + 1
            if k:
                await asyncio.sleep(SYNC_INTERVAL_S)
            black = np.zeros_like(self.low[0])
            return await loop.run_in_executor(None, self._sync_encoder.encode, black, sync_pts(k), k == 0)
        if self._next == len(self.indices):
            # aiortc's jitter buffer releases a frame only when the next one starts: one trailing frame,
            # stamped past the stream's end (the receiver ignores it), pushes the last real one out.
            self._next += 1
            trailer = frame_pts(self.indices[-1] + self.temporal, self.ticks) if self.indices else sync_pts(SYNC_FRAMES)
            await asyncio.sleep(self.temporal / self.fps)
            return await loop.run_in_executor(None, self.encoder.encode, self.low[-1], trailer, False)
        if self._next > len(self.indices):
            self.finished.set()
            self.stop()
            raise MediaStreamError
        if self._next == 0:
            self.start_time = time.time()
        j, self._next = self._next, self._next + 1
        index = self.indices[j]
        capture_time = self.start_time + index / self.fps
        await asyncio.sleep(max(0.0, capture_time - time.time()))
        if self._started_at is None:
            self._started_at = self._clock()
        self.follow_estimate()
        return await self._encode_key(self.low[j], index, capture_time)

    async def _encode_key(self, rgb: np.ndarray, index: int, capture_time: float):
        """Encode key `index` (a keyframe when one is wanted), count its packets and tell the listeners; returns the
        packet for aiortc."""
        keyframe, self.keyframe_wanted = self.keyframe_wanted, False
        packet = await asyncio.get_running_loop().run_in_executor(None, self.encoder.encode, rgb, frame_pts(index, self.ticks),
                                                                  keyframe)
        self._count_sent(packet)
        if self.on_packet is not None:
            self.on_packet(index, bytes(packet))
        if self.on_frame is not None:
            self.on_frame(index, capture_time)
        return packet


class AdaptiveLowResTrack(LowResTrack):
    """LowResTrack whose shape follows the estimate (sender/shapes.py): each time the target moves, the shape with
    the best predicted quality at the new target takes over from that frame, a keyframe, announced just before it
    by `on_shape(first, shape, (h, w))` (a `shape` message). The keys are picked as the stream goes (the next is
    `temporal` of the current shape after the last) and downsized from the source frames one at a time.

    `clip`: the source frames (N, H, W, 3); `count`: the source frames the stream covers (a looped clip runs on
    past N: frame j is clip[j % N])."""

    def __init__(self, clip: np.ndarray, count: int, fps: float, ticks: int, codec: str, kbps: float, table: ShapeTable,
                 clock=time.monotonic, start_kbps: float | None = None):
        self.clip, self.count, self.table = clip, count, table
        self.source_size = tuple(int(v) for v in clip.shape[1:3])
        # A plain stream is the source frames as they are: only for sizes yuv420p takes. No side under the shape's
        # codec's MIN_SIDE (sender/encoder.py; the rate-quality bench pads such frames, the call does not).
        self.shapes = [c.shape for c in table.curves
                       if (not c.shape.plain or not (self.source_size[0] % 2 or self.source_size[1] % 2))
                       and min(self.shape_size(c.shape)) >= MIN_SIDE[c.shape.codec]]
        if not self.shapes:
            raise SessionError(f"the shape table {table.source} has no shape for {self.source_size[1]}x{self.source_size[0]} frames")
        first = max(self.shapes, key=lambda s: (s.plain, -s.scale))  # a placeholder until the start target is known
        super().__init__(np.zeros((1, *self.shape_size(first), 3), np.uint8), [], fps, ticks, codec, kbps, first.temporal,
                         clock=clock, start_kbps=start_kbps)
        self.shape = first
        self.shape_log: list[dict] = []
        self.on_shape = None
        self._announce = True  # the first real frame says its shape
        self._next_index = 0
        self._trailer_sent = False
        estimate = self.estimator.estimate(clock())
        shape, psnr = self.table.best(lambda s: self._target_for(estimate, s.temporal), self.shapes)
        self._use_shape(shape)
        self.kbps = self.start_kbps = self._target_for(estimate)
        h, w = self.encoder_size()
        self.low = np.zeros((1, h, w, 3), np.uint8)  # the sync frames' size
        self.encoder = RealtimeEncoder(self.codec, w, h, self.kbps, fps / self.temporal)
        self._sync_encoder = RealtimeEncoder(codec, w, h, kbps, fps / self.temporal)  # the negotiated first codec
        self._log_shape(0.0, shape, psnr, None, "start")

    def shape_size(self, shape: Shape) -> tuple[int, int]:
        """The (h, w) of a shape's frames on the track."""
        height, width = self.source_size
        return (height, width) if shape.plain else low_res_size(height, width, shape.scale)

    def encoder_size(self) -> tuple[int, int]:
        return self.shape_size(self.shape)

    def _use_shape(self, shape: Shape) -> None:
        self.shape, self.temporal, self.codec = shape, shape.temporal, shape.codec
        # Fewer frames cost fewer packet headers: the floor's and the request's wire costs move.
        self.estimator.move_floor(self._clock(), self.wire_kbps(self.min_kbps))
        if self.background is None:
            self.estimator.max_kbps = self.wire_kbps(self.target_kbps)

    def shape_text(self, shape: Shape) -> str:
        """A shape's name, with its codec where the call may switch codec."""
        return shape.label if len(self.table.codecs) > 1 else shape.name

    def keep_codecs(self, codecs: tuple[str, ...]) -> None:
        """The codecs the receiver took (sender/payload.py): the shapes of any other are dropped, and where the current
        shape is one of them, the best of the rest takes over from the first real frame."""
        kept = [s for s in self.shapes if s.codec in codecs]
        if len(kept) == len(self.shapes) or not kept:  # none: no video at all, which the session reports
            return
        log.warning("vsae send: the receiver took only %s: the shapes in %s are left out", ", ".join(codecs),
                    ", ".join(sorted({s.codec for s in self.shapes} - set(codecs))))
        self.shapes = kept
        if self.shape not in kept:
            estimate = self.estimator.estimate(self._clock())
            shape, psnr = self.table.best(lambda s: self._target_for(estimate, s.temporal), kept)
            self._use_shape(shape)
            self.kbps = self.start_kbps = self._target_for(estimate)
            h, w = self.encoder_size()
            self.encoder = RealtimeEncoder(self.codec, w, h, self.kbps, self.fps / self.temporal)
            self._announce = True
            if self.shape_log and self.shape_log[-1]["first"] is None:
                self.shape_log.pop()  # never sent
            self._log_shape(0.0, shape, psnr, None, "start: the receiver's codecs")

    def _log_shape(self, at: float, shape: Shape, psnr: float | None, was: float | None, why: str) -> None:
        self.shape_log.append({"t": at, "first": None, "shape": self.shape_text(shape), "codec": shape.codec,
                               "scale": shape.scale, "temporal": shape.temporal, "plain": shape.plain,
                               "kbps": round(self.kbps, 2),
                               "psnr_predicted": None if psnr is None else round(psnr, 2),
                               "psnr_before": None if was is None else round(was, 2), "reason": why})

    def _set_kbps(self, kbps: float, now: float, why: str) -> None:
        """A new target is a new encoder from a keyframe anyway: the shape may change with it."""
        estimate = self.estimator.estimate(now)
        shape, psnr, was = self.table.choose(self.shape, lambda s: self._target_for(estimate, s.temporal), self.shapes)
        old = self.shape
        if shape != old:
            self._use_shape(shape)  # its floor may let a cut go lower
            kbps = self._target_for(self.estimator.estimate(now))
        super()._set_kbps(kbps, now, why)
        if shape != old:
            self._announce = True
            self._log_shape(self.rate_log[-1]["t"], shape, psnr, was, why)
            log.warning("vsae send: %s: shape %s -> %s at %.1f kbps (predicted %s dB, was %s)", why,
                        self.shape_text(old), self.shape_text(shape),
                        kbps, "?" if psnr is None else f"{psnr:.2f}", "?" if was is None else f"{was:.2f}")

    def _low_of(self, index: int, shape: Shape) -> np.ndarray:
        """Source frame `index` in `shape` (uint8, h x w x 3)."""
        rgb = self.clip[index % len(self.clip)]
        if shape.plain:
            return np.ascontiguousarray(rgb)
        return to_uint8(resize(to_tensor(rgb[None]), self.shape_size(shape)))[0]

    async def recv(self):
        await self.start.wait()
        if self._sync < SYNC_FRAMES:
            return await super().recv()
        loop = asyncio.get_running_loop()
        if self._next_index >= self.count:
            if self._trailer_sent:
                self.finished.set()
                self.stop()
                raise MediaStreamError
            # As LowResTrack's: one frame stamped past the stream's end pushes the last real one out.
            self._trailer_sent = True
            await asyncio.sleep(self.temporal / self.fps)
            low = await loop.run_in_executor(None, self._low_of, self.indices[-1], self.shape)
            return await loop.run_in_executor(None, self.encoder.encode, low, frame_pts(self._next_index, self.ticks), False)
        index = self._next_index
        if not self.indices:
            self.start_time = time.time()
        capture_time = self.start_time + index / self.fps
        await asyncio.sleep(max(0.0, capture_time - time.time()))
        if self._started_at is None:
            self._started_at = self._clock()
        self.follow_estimate()
        shape = self.shape
        if self._announce:
            self._announce = False
            self.shape_log[-1]["first"] = index
            if self.on_shape is not None:
                self.on_shape(index, shape, self.encoder_size())
        low = await loop.run_in_executor(None, self._low_of, index, shape)
        self.indices.append(index)
        self._next_index = index + self.temporal
        return await self._encode_key(low, index, capture_time)


class LiveFrames:
    """A live source (codec.capture.LiveCapture) standing in for the clip: `shape` is (cap, H, W, 3), the most
    source frames the stream may cover (`Config.frames`); the stream ends earlier when the source ends or
    `request_stop()` is called, and its `bye` then carries the frames it did cover."""

    def __init__(self, capture, cap: int):
        self.capture = capture
        self.shape = (cap, capture.size[1], capture.size[0], 3)
        self.stop_requested = False

    def __len__(self) -> int:
        return self.shape[0]

    def request_stop(self) -> None:
        self.stop_requested = True


class LiveLowResTrack(LowResTrack):
    """LowResTrack fed by a live capture: each captured frame whose index (counted from the first frame
    captured after the receiver's ack) is a multiple of T is downsized and sent as soon as it comes, paced by
    the source itself. Frames the capture queue dropped (this side too slow) leave gaps the receiver conceals.
    `total`: the source frames covered once finished (last sent index + 1)."""

    # How long to wait for a frame before deciding the source has stalled (the stream then ends).
    STALL_S = 10.0

    def __init__(self, live: LiveFrames, fps: float, ticks: int, codec: str, kbps: float, temporal: int, scale: int,
                 start_kbps: float | None = None):
        height, width = live.shape[1:3]
        self.low_size = low_res_size(height, width, scale)
        super().__init__(np.zeros((1, *self.low_size, 3), np.uint8), [], fps, ticks, codec, kbps, temporal,
                         start_kbps=start_kbps)
        self.live = live
        self._base: int | None = None  # capture sequence number of source frame 0
        self._dropped_at_start = 0
        self._dropped_at_end: int | None = None
        self._first_time = self._last_time = 0.0  # capture times of the stream's first and last frame taken
        self._last_seq = 0
        self.total = 0

    @property
    def dropped(self) -> int:
        """Captured frames dropped during the stream (the capture queue was full: this side fell behind)."""
        if self._base is None:
            return 0
        end = self._dropped_at_end if self._dropped_at_end is not None else self.live.capture.dropped
        return end - self._dropped_at_start

    def capture_stats(self) -> dict:
        """The capture during the stream: frames the source delivered, its measured rate, frames dropped."""
        captured = self._last_seq - self._base + 1 if self._base is not None else 0
        span = self._last_time - self._first_time
        return {"captured": captured, "capture_fps": round((captured - 1) / span, 2) if span > 0 else None,
                "dropped": self.dropped, "source_fps": self.live.capture.fps}

    def _take(self):
        """The next frame to send (index, capture time, low-res rgb), or None at the stream's end (blocking)."""
        item = self._next_key()
        if item is None and self._dropped_at_end is None:
            self._dropped_at_end = self.live.capture.dropped
        return item

    def _next_key(self):
        capture = self.live.capture
        while not self.live.stop_requested:
            try:
                item = capture.get(self.STALL_S)
            except TimeoutError:
                log.warning("vsae send: no frame from the live source for %g s: ending the stream", self.STALL_S)
                return None
            if item is None:
                return None
            seq, captured_at, rgb = item
            if self._base is None:
                self._base, self._dropped_at_start, self._first_time = seq, capture.dropped, captured_at
            index = seq - self._base
            if index >= len(self.live):
                return None
            self._last_seq, self._last_time = seq, captured_at
            if index % self.temporal:
                continue  # not a key: never sent
            low = to_uint8(resize(to_tensor(rgb[None]), self.low_size))[0]
            return index, captured_at, low

    async def recv(self):
        await self.start.wait()
        if self._sync < SYNC_FRAMES:
            return await super().recv()
        loop = asyncio.get_running_loop()
        item = await loop.run_in_executor(None, self._take)
        if item is None:
            # No trailer after the last frame (cf. LowResTrack.recv): its index would lie inside the announced
            # cap, and the receiver would rebuild it as a frame. The receiver's jitter buffer releases a frame
            # once its last packet is in (receiver/jitter.py), so the last real one is not held back.
            self.total = self.indices[-1] + 1 if self.indices else 0
            self.finished.set()
            self.stop()
            raise MediaStreamError
        index, capture_time, low = item
        if not self.indices:
            self.start_time = capture_time
        self.indices.append(index)
        if self._started_at is None:
            self._started_at = self._clock()
        self.follow_estimate()
        return await self._encode_key(low, index, capture_time)


def stream_config(shape: tuple[int, ...], source_fps: float, options: SendOptions) -> msg.Config:
    """The stream's `config` message (before any auth tag) for source frames of `shape` (N, H, W, 3).

    Raises SessionError, before anything touches the network, when the protocol cannot carry the stream
    (e.g. a frame rate outside Config.limits, from --fps or a file's broken timestamps)."""
    count, height, width = (int(v) for v in shape[:3])
    low_height, low_width = low_res_size(height, width, options.scale)
    fps = float(options.fps or source_fps)
    config = msg.Config(width=width, height=height, low_width=low_width, low_height=low_height, fps=fps,
                        scale=options.scale, temporal=options.temporal, frames=count * options.loop, codec=options.codec,
                        kbps=options.kbps, ticks=ticks_per_frame(fps) if fps > 0 else 0, guard=options.guard)
    try:
        msg.encode(config)
    except msg.ProtocolError as exc:
        raise SessionError(f"the stream is outside the protocol's limits: {exc}") from None
    return config


async def send(frames: np.ndarray, source_fps: float, model: bytes, options: SendOptions,
               prepared: tuple[list[int], np.ndarray] | None = None) -> SendResult:
    """Stream `frames` to a listening receiver; raises SessionError on failure.

    A connection lost before the video starts (the handshake or the model transfer) is retried in a new
    session up to `options.retries` times; the receiver resumes the model transfer where it stopped.
    `prepared`: `prepare_low_res(frames, options.scale, options.temporal)` made once by a caller that
    runs several sessions of the same stream (read-only here, so sessions can share it)."""
    if options.codec not in msg.CODECS:
        raise SessionError(f"unknown codec {options.codec!r}; choose from {', '.join(msg.CODECS)}")
    if options.loop < 1:
        raise SessionError(f"loop must be >= 1, got {options.loop}")
    if not (options.model_pace in MODEL_PACES or (isinstance(options.model_pace, (int, float))
                                                           and not isinstance(options.model_pace, bool)
                                                           and options.model_pace > 0)):
        raise SessionError(f"model_pace must be one of {', '.join(MODEL_PACES)} or a positive kbps, got {options.model_pace!r}")
    if options.refresh is not None and not options.guard:
        raise SessionError("a live refresh needs the guard's closed loop (guard=True)")
    for name in ("probe", "feedback"):
        if getattr(options, name) not in SWITCH_MODES:
            raise SessionError(f"{name} must be one of {', '.join(SWITCH_MODES)}, got {getattr(options, name)!r}")
    live = isinstance(frames, LiveFrames)
    if options.shape_table is not None:
        if options.guard or live:
            raise SessionError("an adaptive stream shape (--shapes) works with a clip and without the guard: the closed loop "
                               "and a live source keep one shape")
        if options.shape_table.codec != options.codec:
            raise SessionError(f"the shape table is of {options.shape_table.codec} first, the call uses "
                               f"{options.codec}")
    if live and (options.loop > 1 or options.guard):
        raise SessionError("a live source streams once and without the guard's closed loop (it needs the whole clip)")
    if live and options.fps is None:
        options = dataclasses.replace(options, fps=frames.capture.fps)
    if len(frames) * options.loop > msg.MAX_FRAMES:
        raise SessionError(f"{options.loop} passes of {len(frames)} frames exceed the protocol's {msg.MAX_FRAMES:,} frames a stream")
    stream_config(frames.shape, source_fps, options)  # refuse what the receiver would, before connecting
    began = time.monotonic()
    if live or options.shape_table is not None:
        indices, low = [], None  # taken from the source as the stream runs (LiveLowResTrack, AdaptiveLowResTrack)
    else:
        indices, low = prepared if prepared is not None else prepare_low_res(frames, options.scale, options.temporal)
    if options.loop > 1 and low is not None:  # the clip's low-res frames once, indexed lazily (also when several sessions share them)
        indices, low = Looped(indices, options.loop, len(frames)), Looped(low, options.loop)
    model_sent = [0]  # across attempts
    # The closed loop mirrors the receiver's model: the same bundle bytes, loaded the same way.
    codec = await asyncio.get_running_loop().run_in_executor(None, bundle.loads, model) if options.guard else None
    for attempt in range(1, options.retries + 2):
        try:
            result = await _session(frames, source_fps, indices, low, model, options, model_sent, retrying=attempt > 1,
                                    codec=codec)
        except SessionError as exc:
            if not exc.retryable or attempt > options.retries:
                raise
            log.warning("vsae send: session %d failed before the video started (%s); retrying in %g s",
                        attempt, exc, RETRY_DELAY_S)
            await asyncio.sleep(RETRY_DELAY_S)
            continue
        return dataclasses.replace(result, attempts=attempt, wall_s=time.monotonic() - began)
    raise AssertionError("unreachable")


async def _session(frames: np.ndarray, source_fps: float, indices: list[int], low: np.ndarray, model: bytes,
                   options: SendOptions, model_sent: list[int], retrying: bool = False, codec=None) -> SendResult:
    """One session; `model_sent[0]` counts the model bytes shipped (kept when the session fails). `retrying`: an
    earlier session reached this receiver, so failing to reach it now is the link, worth another try. `codec`:
    the loaded model, for a live call's closed loop (options.guard)."""
    began = time.monotonic()
    fps = options.fps or source_fps
    total = len(frames) * options.loop  # source frames the stream covers
    ticks = ticks_per_frame(fps)
    sha = hashlib.sha256(model).hexdigest()
    if isinstance(frames, LiveFrames):
        track = LiveLowResTrack(frames, fps, ticks, options.codec, options.kbps, options.temporal, options.scale,
                                start_kbps=resolved_start_kbps(options))
        low, indices = track.low, track.indices
    elif options.shape_table is not None:
        track = AdaptiveLowResTrack(frames, total, fps, ticks, options.codec, options.kbps, options.shape_table,
                                    start_kbps=resolved_start_kbps(options))
        low, indices = track.low, track.indices
    else:
        track = LowResTrack(low, indices, fps, ticks, options.codec, options.kbps, options.temporal,
                            start_kbps=resolved_start_kbps(options))

    pc = new_peer_connection(options.bind or options.host)
    control = pc.createDataChannel("control")  # reliable, ordered: model transfer and control
    meta = pc.createDataChannel("meta", ordered=False, maxRetransmits=0)  # per-frame metadata, probes: best effort
    transceiver = pc.addTransceiver(track, direction="sendonly")
    switching = isinstance(track, AdaptiveLowResTrack) and len(track.table.codecs) > 1
    prefer_codec(transceiver, track.table.codecs if switching else options.codec)
    if switching:  # the codec follows the shape, in-band (sender/payload.py)
        try:
            payload_switch = payload.install(transceiver.sender, track.keep_codecs)
        except payload.PayloadHookError as exc:
            raise SessionError(str(exc)) from None
    # What the receiver says in RTCP (reports, REMB, PLI/FIR) reaches this track's estimate and encoder.
    try:
        rtcp.observe(transceiver.sender, track.on_receiver_report, track.on_remb, track.request_keyframe,
                     track.nack_loss.was_nacked, track.on_feedback)
        rtcp.gate_retransmissions(transceiver.sender, track.on_nack)
    except rtcp.RtcpHookError as exc:
        raise SessionError(str(exc)) from None

    inbox: asyncio.Queue = asyncio.Queue()
    failure: asyncio.Future = asyncio.get_running_loop().create_future()  # SessionError
    streaming = False
    closed_loop: ClosedLoop | None = None
    live = {"acks": [], "guard_message_bytes": 0, "update_message_bytes": 0}
    # An early start: when the video started and when the receiver said it rebuilds with the model.
    start = {"early": False, "video_at": None, "model_at": None, "chunk_bytes": msg.CHUNK_BYTES}
    shipping: asyncio.Task | None = None
    outbox: asyncio.Queue = asyncio.Queue()  # the closed loop's messages, sent in order by one task
    prober: Prober | None = None  # bandwidth probes on the meta channel (sender/probe.py), once the video runs
    probing: asyncio.Task | None = None

    def fail(reason: str, lost_connection: bool = False) -> None:
        if not failure.done():
            failure.set_result(SessionError(reason, retryable=lost_connection and not streaming))

    @control.on("message")
    def on_control(data) -> None:
        try:
            message = msg.decode(data)
        except msg.ProtocolError as exc:
            asyncio.ensure_future(_refuse(control, exc.code, str(exc)))
            fail(f"receiver sent a malformed message: {exc}")
            return
        if isinstance(message, msg.Error):
            fail(f"receiver refused: {message.code}: {message.message}")
        elif isinstance(message, msg.Keyframe):
            track.request_keyframe()
        elif isinstance(message, msg.Ack) and start["early"] and start["video_at"] is not None:
            if message.sha256 != sha or message.pending:
                fail("receiver acknowledged a different model")
            elif start["model_at"] is None:
                start["model_at"] = time.monotonic()
                log.info("the receiver rebuilds with the model %.2f s into the video", start["model_at"] - start["video_at"])
        elif isinstance(message, msg.ProbeResult) and prober is not None:
            prober.on_result(message)
        elif isinstance(message, msg.UpdateAck) and closed_loop is not None:
            live["acks"].append(message)
            if not message.applied:
                log.warning("vsae send: the receiver refused model update %d (%s); back to the weights before it",
                            message.version, message.reason)
                closed_loop.update_refused(message.version)
        else:
            inbox.put_nowait(message)

    ice_states: list[str] = []
    pc.on("iceconnectionstatechange", lambda: ice_states.append(pc.iceConnectionState))

    @pc.on("connectionstatechange")
    def on_state() -> None:
        if pc.connectionState in ("failed", "closed"):
            fail(f"connection {pc.connectionState}", lost_connection=True)

    last_meta = [-META_INTERVAL_S]

    def on_frame(index: int, capture_time: float) -> None:
        if meta.readyState == "open" and capture_time - last_meta[0] >= META_INTERVAL_S:
            last_meta[0] = capture_time
            meta.send(msg.encode(msg.Frame(index=index, capture_time=capture_time)))

    track.on_frame = on_frame

    def on_shape(first: int, shape: Shape, size: tuple[int, int]) -> None:
        # Straight onto the reliable control channel, ahead of the keyframe it announces (the receiver also tells
        # a new shape by the decoded frame's size, and waits a moment for this message).
        if control.readyState == "open":
            control.send(msg.encode(msg.Shape(first=first, scale=shape.scale, temporal=shape.temporal, low_width=size[1],
                                              low_height=size[0], plain=shape.plain,
                                              codec=shape.codec if switching else "")))

    if isinstance(track, AdaptiveLowResTrack):
        track.on_shape = on_shape

    async def expect(kind: type, timeout: float):
        getter = asyncio.ensure_future(inbox.get())
        done, _ = await asyncio.wait({getter, failure}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if failure in done:
            getter.cancel()
            raise failure.result()
        if getter not in done:
            getter.cancel()
            raise SessionError(f"timed out after {timeout:.0f} s waiting for the receiver's {kind.kind}", retryable=not streaming)
        message = getter.result()
        if not isinstance(message, kind):
            await _refuse(control, "unexpected", f"expected {kind.kind}, got {message.kind}")
            raise SessionError(f"receiver sent {message.kind} where {kind.kind} was expected")
        return message

    opened = asyncio.Event()
    control.on("open", opened.set)
    try:
        await pc.setLocalDescription(await pc.createOffer())
        try:
            answer = await request_answer(options.host, options.port, pc.localDescription, options.connect_timeout)
        except ConnectionError as exc:
            raise SessionError(str(exc), retryable=retrying or isinstance(exc, ReceiverBusy)) from None
        await pc.setRemoteDescription(answer)
        opener = asyncio.ensure_future(opened.wait())
        done, _ = await asyncio.wait({opener, failure}, timeout=HANDSHAKE_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        if opener not in done:
            opener.cancel()
            raise failure.result() if failure.done() else SessionError("timed out opening the data channel", retryable=True)
        log.info("connected (ICE %s)", pc.iceConnectionState)

        own_hello = msg.Hello(role="sender", model_sha256=sha, model_bytes=len(model))
        await send_message(control, own_hello)
        hello = await expect(msg.Hello, HANDSHAKE_TIMEOUT_S)
        config = stream_config(frames.shape, source_fps, options)
        if resolved_probe(options):
            config = dataclasses.replace(config, probes=True)
        if resolved_feedback(options):
            config = dataclasses.replace(config, feedback=True)
            track.feedback_asked = True
        if isinstance(track, AdaptiveLowResTrack):  # the first shape; `shape` messages announce the next
            h, w = track.encoder_size()
            config = dataclasses.replace(config, shapes=True, scale=track.shape.scale, temporal=track.shape.temporal,
                                         low_width=w, low_height=h)
        start["early"] = options.early_start and not hello.have_model and not options.guard
        paced = start["early"] and resolved_model_pace(options) == "estimate"
        chunk_size = transfer_chunk_bytes(track.wire_kbps(options.kbps)) if paced else 0
        config = dataclasses.replace(config, early=start["early"], chunk_size=chunk_size)
        if hello.nonce and options.secret is not None:
            config = dataclasses.replace(config, auth=auth.tag(options.secret, hello.nonce, own_hello, config))
        elif options.secret is not None:
            log.warning("the receiver does not ask for a shared secret: streaming without a tag")
        await send_message(control, config)
        if start["early"]:
            ack = await expect(msg.Ack, HANDSHAKE_TIMEOUT_S)
            if ack.sha256 != sha or not ack.pending:
                raise SessionError("receiver did not take the early start (an ack for the model was expected pending)")
            start["video_at"] = time.monotonic()
            size = start["chunk_bytes"] = config.model_chunk_bytes
            pacer = track.start_background() if paced else None
            fixed = options.model_pace if isinstance(options.model_pace, (int, float)) else None
            shipping = asyncio.ensure_future(_ship_model(control, model, sha, hello.model_offset // size,
                                                         model_sent, fixed, size, pacer))
            if pacer is not None:
                shipping.add_done_callback(lambda _: track.end_background())
            # A failed transfer shows as the connection's failure; its exception is read here, not left unread.
            shipping.add_done_callback(lambda task: task.cancelled() or task.exception())
        elif not hello.have_model:
            if hello.model_offset >= len(model):
                await _refuse(control, "bad_value", f"model_offset {hello.model_offset} is past the model's end")
                raise SessionError(f"receiver claims {hello.model_offset} bytes of a {len(model)}-byte model")
            if hello.model_offset:
                log.warning("vsae send: the receiver holds %d of %d model bytes; sending the rest",
                            hello.model_offset, len(model))
            await _ship_model(control, model, sha, hello.model_offset // msg.CHUNK_BYTES, model_sent)
        if not start["early"]:
            ack = await expect(msg.Ack, MODEL_TIMEOUT_S)
            if ack.sha256 != sha or ack.pending:
                raise SessionError("receiver acknowledged a different model")

        if options.guard:
            loop = asyncio.get_running_loop()  # the closed loop copies the model: off the event loop
            closed_loop = await loop.run_in_executor(
                None, _start_closed_loop, codec, frames, hello, fps, total, options, outbox, loop)
            track.on_packet = closed_loop.submit
            # Model updates keep the closed loop's own budget (--model-kbps), not the background pacer: the loop
            # names the frame each update applies from, and a pacer that delayed it past that frame would
            # desynchronize the two ends.
            sending = asyncio.ensure_future(_drain_outbox(control, outbox, live))
        streaming = True
        track.start.set()
        if config.probes:
            prober = Prober(track, lambda data: meta.send(data) if meta.readyState == "open" else None)
            probing = asyncio.ensure_future(prober.run())
        finished = asyncio.ensure_future(track.finished.wait())
        stream_s = total / fps + 60.0
        done, _ = await asyncio.wait({finished, failure}, timeout=stream_s, return_when=asyncio.FIRST_COMPLETED)
        if finished not in done:
            finished.cancel()
            raise failure.result() if failure.done() else SessionError("timed out streaming")
        if probing is not None:
            probing.cancel()
            await asyncio.gather(probing, return_exceptions=True)
        if closed_loop is not None:
            # The trailing frames' modes, then everything queued, before the bye.
            await asyncio.get_running_loop().run_in_executor(None, closed_loop.finish, total)
            if closed_loop.error is not None:
                raise SessionError(f"the closed loop failed: {type(closed_loop.error).__name__}: {closed_loop.error}")
            await outbox.put(None)
            await sending
        if shipping is not None and not shipping.done():
            # The stream ended before the model was through: no chunk may follow the bye.
            shipping.cancel()
            await asyncio.gather(shipping, return_exceptions=True)
        if isinstance(track, LiveLowResTrack):
            total = track.total  # the frames the live stream covered (its bye says so; the config named a cap)
            if not total:
                raise SessionError("the live source delivered no frame after the receiver's ack")
        await asyncio.sleep(DRAIN_S)
        video_bytes, video_packets = await _rtp_sent(pc)
        await send_message(control, msg.Bye(frames=total, video_bytes=video_bytes, video_packets=video_packets))
        bye = await expect(msg.Bye, BYE_TIMEOUT_S)
    except ConnectionError as exc:  # a data channel closed under a send
        raise SessionError(str(exc), retryable=not streaming) from None
    finally:
        if probing is not None and not probing.done():
            probing.cancel()
        if closed_loop is not None:
            await asyncio.get_running_loop().run_in_executor(None, closed_loop.finish, None, 5.0)
        if shipping is not None and not shipping.done():
            shipping.cancel()  # the stream ended before the model was through
        await pc.close()
    return SendResult(
        frames=total, frames_sent=len(indices), video_bytes=video_bytes, video_packets=video_packets,
        video_kbps=video_bytes * 8 / (total / fps) / 1000, model_bytes_sent=model_sent[0],
        keyframe_requests=track.keyframe_requests, receiver_frames_out=bye.frames, wall_s=time.monotonic() - began,
        extra={"encoded_bytes": track.encoded_bytes + track.encoder.bytes, "low_size": [low.shape[2], low.shape[1]], "fps": fps,
               "start_kbps": round(track.start_kbps, 2), "final_kbps": round(track.kbps, 2), "rate_changes": track.rate_changes,
               "rate_log": track.rate_log, "estimate_log": track.estimate_log(), "feedback_log": track.feedback_log,
               "remb_log": track.remb_log,
               "bwe": track.estimator.summary(track._clock()), "retransmissions": track.retransmissions.summary(),
               "ice_states": ice_states, **_start_stats(start, shipping),
               "background": track.background.summary() if track.background is not None else track.background_stats,
               **({"capture": track.capture_stats()} if isinstance(track, LiveLowResTrack) else {}),
               **({"probes": prober.summary(track._started_at or 0.0)} if prober is not None else {}),
               **({"shape_log": track.shape_log, "shape_table": track.table.source, "shape_table_setting": track.table.setting}
                  if isinstance(track, AdaptiveLowResTrack) else {}),
               **({"codecs_negotiated": list(payload_switch.negotiated), "codec_switches": payload_switch.switches}
                  if switching else {}),
               **({"live": _live_stats(closed_loop, live, total / fps)} if closed_loop else {})},
    )


def _start_stats(start: dict, shipping: asyncio.Task | None) -> dict:
    """An early start: the model's time to reach the receiver's rebuild, counted from the video's start."""
    if not start["early"]:
        return {"early_start": False}
    return {"early_start": True,
            "model_shipped": shipping is not None and shipping.done() and not shipping.cancelled() and shipping.exception() is None,
            "model_after_video_s": round(start["model_at"] - start["video_at"], 3) if start["model_at"] else None,
            "model_chunk_bytes": start["chunk_bytes"]}


def _start_closed_loop(codec, frames: np.ndarray, hello: msg.Hello, fps: float, total: int, options: SendOptions,
                       outbox: asyncio.Queue, loop: asyncio.AbstractEventLoop) -> ClosedLoop:
    """The live call's closed loop, rebuilding as the receiver said it does (its hello); its messages go to
    `outbox` through `loop`."""
    method = hello.rebuild_method
    if method not in TEMPORAL_METHODS or not hello.rebuild_iterations:
        raise SessionError("the receiver did not say how it rebuilds (an older vsae recv?): a live call needs it")

    def on_modes(first: int, data: bytes) -> None:
        loop.call_soon_threadsafe(outbox.put_nowait, msg.Modes(first=first, data=data))

    def on_update(version: int, data: bytes) -> None:
        if options.update_filter is not None:
            data = options.update_filter(version, data)
        parts = -(-len(data) // msg.CHUNK_BYTES)
        for part in range(parts):
            chunk = data[part * msg.CHUNK_BYTES : (part + 1) * msg.CHUNK_BYTES]
            loop.call_soon_threadsafe(outbox.put_nowait, msg.Update(version=version, part=part, parts=parts, data=chunk))

    return ClosedLoop(codec, frames, options.temporal, fps, total, options.codec, hello.rebuild_iterations, method,
                      on_modes, on_update if options.refresh is not None else None, options.refresh)


async def _drain_outbox(channel: RTCDataChannel, outbox: asyncio.Queue, live: dict) -> None:
    """Send the closed loop's messages in the order it made them, counting their bytes (the guard's and the
    model stream's share of the call's bitrate); None ends it."""
    while (message := await outbox.get()) is not None:
        size = await send_message(channel, message)
        live["guard_message_bytes" if isinstance(message, msg.Modes) else "update_message_bytes"] += size


def _live_stats(closed_loop: ClosedLoop, live: dict, seconds: float) -> dict:
    stats = closed_loop.stats()
    acks = live["acks"]
    stats.update({
        "guard_kbps": round(live["guard_message_bytes"] * 8 / seconds / 1000, 3),
        "model_kbps": round(live["update_message_bytes"] * 8 / seconds / 1000, 3),
        "updates_acked": sum(a.applied for a in acks),
        "updates_refused": sum(not a.applied for a in acks),
    })
    return stats


def receiver_on_this_machine(options: SendOptions) -> bool:
    """The receiver is on loopback: no bottleneck between the two ends to find or to share."""
    try:
        return ipaddress.ip_address(options.host).is_loopback
    except ValueError:
        return options.host == "localhost"


def resolved_model_pace(options: SendOptions) -> str | float:
    """The in-call transfer's pace, with "auto" decided by where the receiver is."""
    if options.model_pace != "auto":
        return options.model_pace
    return "off" if receiver_on_this_machine(options) else "estimate"


def _resolved_mode(mode: str, options: SendOptions) -> bool:
    """An auto/on/off option (SWITCH_MODES): as asked, "auto" on unless the receiver is on this machine (nothing to
    find out there)."""
    return not receiver_on_this_machine(options) if mode == "auto" else mode == "on"


def resolved_probe(options: SendOptions) -> bool:
    """Whether the sender probes the link (sender/probe.py)."""
    return _resolved_mode(options.probe, options)


def resolved_feedback(options: SendOptions) -> bool:
    """Whether the sender asks for transport feedback (receiver/feedback.py)."""
    return _resolved_mode(options.feedback, options)


def resolved_start_kbps(options: SendOptions) -> float | None:
    """The video's first target: as asked, else the request itself to a receiver on this machine (a slow start
    there only costs a short call its picture: the loopback demo's 4 s sent 11 kbps of its 20), else None
    (the track's slow start from START_SHARE)."""
    if options.start_kbps is not None:
        return options.start_kbps
    return options.kbps if receiver_on_this_machine(options) else None


def transfer_chunk_bytes(wire_kbps: float) -> int:
    """The model chunk size for an in-call transfer paced inside a link of about `wire_kbps` (CHUNK_S of it)."""
    return int(min(msg.CHUNK_BYTES, max(msg.MIN_CHUNK_BYTES, wire_kbps * 125 * CHUNK_S)))


async def _ship_model(channel: RTCDataChannel, model: bytes, sha: str, first: int, sent: list[int],
                      pace_kbps: float | None = None, chunk: int = msg.CHUNK_BYTES,
                      pacer: BackgroundPacer | None = None) -> None:
    """Model chunks of `chunk` bytes from chunk `first` on, then model_done; adds the bytes sent to `sent[0]` as
    it goes. `pace_kbps`: at most this rate on average; `pacer`: inside its share of the link (a transfer during
    the video must leave the link to it)."""
    began, shipped = time.monotonic(), 0
    for seq in range(first, -(-len(model) // chunk)):
        if pace_kbps:
            await asyncio.sleep(max(0.0, began + shipped * 8 / (pace_kbps * 1000) - time.monotonic()))
        message = msg.ModelChunk(seq=seq, data=model[seq * chunk : (seq + 1) * chunk])
        size = await (pacer.send(channel, msg.encode(message)) if pacer else send_message(channel, message))
        sent[0] += size
        shipped += size
    sent[0] += await send_message(channel, msg.ModelDone(size=len(model), sha256=sha))


async def _rtp_sent(pc) -> tuple[int, int]:
    """RTP payload bytes and packets the video sender reports (getStats outbound-rtp)."""
    for sender in pc.getSenders():
        if sender.track is not None or sender.kind == "video":
            stats = await sender.getStats()
            for report in stats.values():
                if report.type == "outbound-rtp":
                    return report.bytesSent, report.packetsSent
    return 0, 0


async def _refuse(channel: RTCDataChannel, code: str, text: str) -> None:
    if channel.readyState == "open":
        try:
            await send_message(channel, msg.Error(code=code[:64], message=text[:msg.MAX_TEXT]))
        except (ConnectionError, msg.ProtocolError):
            pass
