"""The low-res stream's video encoder: VP8 or H.264 (the WebRTC track), and VP9 / AV1 for the benchmarks,
through PyAV's FFmpeg at any target bitrate.

aiortc's own encoders clamp the bitrate to >= 250 kbps (VP8) and >= 500 kbps (H.264), raise it on the
receiver's REMB estimate, and offer no public way to change either. vsae therefore encodes the frames
itself, here, and hands aiortc finished `av.Packet`s, which aiortc only packetizes (RTP payload
format, SRTP): the bitrate is exactly what this encoder is told, from a few kbps upward.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from protocol.timing import TIME_BASE

# Realtime settings, as WebRTC senders use them (no lookahead, one-pass CBR, fastest presets).
VP8_OPTIONS = {
    "deadline": "realtime",
    "cpu-used": "8",
    "lag-in-frames": "0",
    "error-resilient": "1",
    "undershoot-pct": "100",
    "overshoot-pct": "15",
    "static-thresh": "0",
}
H264_OPTIONS = {"preset": "veryfast", "tune": "zerolatency", "profile": "baseline"}
VP9_OPTIONS = {**VP8_OPTIONS, "row-mt": "1", "aq-mode": "3"}
# SVT-AV1 low-delay: fast preset, no lookahead, CBR.
AV1_OPTIONS = {"preset": "10", "svtav1-params": "pred-struct=1:lookahead=0:rc=2"}
# A keyframe (the first, or the answer to a PLI, or a new target's) at most this many seconds of the target
# bitrate (VP8's max-intra-rate, a share of an average frame): a keyframe larger than a narrow link's queue
# loses its own tail and brings the next PLI. The fault lab's cap queues 0.3 s. libwebrtc's VP8 sender allows
# 0.3 s (MaxIntraTarget: 30 % of a frame per frame/s, at least 3 frames); at our 7.5 fps that is 0.4 s.
KEYFRAME_MAX_S = 0.2
# ... but never less than one average frame.
KEYFRAME_MIN_SHARE = 1.0
# Rate-control buffer, in seconds of the target bitrate: a one-second buffer as in aiortc's VP8 encoder.
BUFFER_S = 1.0
# Quantizer range: the top of VP8's range so that very low targets can still be held.
VP8_QMIN, VP8_QMAX = 4, 63
CODECS = {"vp8": "libvpx", "h264": "libx264", "vp9": "libvpx-vp9", "av1": "libsvtav1"}
DECODERS = {"vp8": "vp8", "h264": "h264", "vp9": "vp9", "av1": "libdav1d"}
# Smallest frame side each encoder takes; smaller frames are edge-padded (and cropped after decoding).
MIN_SIDE = {"vp8": 2, "h264": 16, "vp9": 8, "av1": 64}
# A keyframe at least this often (frames) even without loss: aiortc's VP8 sender uses 3000.
KEYFRAME_INTERVAL = 3000


def keyframe_share_pct(fps: float, keyframe_max_s: float = KEYFRAME_MAX_S) -> int:
    """VP8's max-intra-rate for a stream at `fps`: a keyframe at most `keyframe_max_s` of the target bitrate."""
    return round(100 * max(KEYFRAME_MIN_SHARE, keyframe_max_s * fps))


class RealtimeEncoder:
    """Encodes uint8 RGB frames (h, w, 3) to one packet payload each, stamped with the given RTP pts.
    `keyframe_max_s`: VP8 keyframes at most this many seconds of the target (None: libvpx's own choice, as
    the offline rate-quality benchmarks use it: no link to fit through)."""

    def __init__(self, codec: str, width: int, height: int, kbps: float, fps: float,
                 keyframe_max_s: float | None = KEYFRAME_MAX_S):
        if codec not in CODECS:
            raise ValueError(f"unknown codec {codec!r}; choose from {', '.join(CODECS)}")
        if width % 2 or height % 2:
            raise ValueError(f"low-res frames must have even sizes for yuv420p, got {width}x{height}")
        self.codec_name = codec
        bitrate = int(kbps * 1000)
        context = av.CodecContext.create(CODECS[codec], "w")
        context.width, context.height, context.pix_fmt = width, height, "yuv420p"
        context.time_base = TIME_BASE  # pts are RTP timestamps, so rate control sees real frame durations
        context.framerate = Fraction(fps).limit_denominator(1001)
        context.bit_rate = bitrate
        context.gop_size = KEYFRAME_INTERVAL
        context.thread_count = 1
        rate = {"minrate": str(bitrate), "maxrate": str(bitrate), "bufsize": str(int(bitrate * BUFFER_S))}
        if codec in ("vp8", "vp9"):
            context.qmin, context.qmax = VP8_QMIN, VP8_QMAX
            context.options = {**(VP8_OPTIONS if codec == "vp8" else VP9_OPTIONS), **rate}
            if codec == "vp8" and keyframe_max_s is not None:
                context.options = {**context.options, "max-intra-rate": str(keyframe_share_pct(fps, keyframe_max_s))}
        elif codec == "h264":
            context.options = {**H264_OPTIONS, "maxrate": rate["maxrate"], "bufsize": rate["bufsize"]}
        else:
            context.options = dict(AV1_OPTIONS)
        self.context = context
        self.bytes = 0
        self.frames = 0

    def encode(self, rgb: np.ndarray, pts: int, keyframe: bool = False) -> av.Packet:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="yuv420p")
        frame.pts, frame.time_base = pts, TIME_BASE
        if keyframe:
            frame.pict_type = av.video.frame.PictureType.I
        data = b"".join(bytes(p) for p in self.context.encode(frame))
        self.bytes += len(data)
        self.frames += 1
        packet = av.Packet(data)
        packet.pts, packet.time_base = pts, TIME_BASE
        packet.opaque = self.codec_name  # which payload format carries it (sender/payload.py: a call may switch codec)
        return packet

    def flush(self) -> list[av.Packet]:
        """End of stream: whatever the encoder still holds (nothing for the realtime settings but AV1's)."""
        packets = list(self.context.encode(None))
        self.bytes += sum(p.size for p in packets)
        return packets
