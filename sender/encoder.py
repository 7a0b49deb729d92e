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
    # A keyframe at most 3x an average frame, as libwebrtc's VP8 sender caps it (MaxIntraTarget, 300 % at our
    # frame rates): a keyframe (the first, or the answer to a PLI) larger than a narrow link's queue loses its
    # own packets and brings the next PLI (measured at 10 kbps on carphone's 44x36 keys: 750 -> 550 bytes).
    "max-intra-rate": "300",
}
H264_OPTIONS = {"preset": "veryfast", "tune": "zerolatency", "profile": "baseline"}
VP9_OPTIONS = {**VP8_OPTIONS, "row-mt": "1", "aq-mode": "3"}
# SVT-AV1 low-delay: fast preset, no lookahead, CBR.
AV1_OPTIONS = {"preset": "10", "svtav1-params": "pred-struct=1:lookahead=0:rc=2"}
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


class RealtimeEncoder:
    """Encodes uint8 RGB frames (h, w, 3) to one packet payload each, stamped with the given RTP pts."""

    def __init__(self, codec: str, width: int, height: int, kbps: float, fps: float):
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
        return packet

    def flush(self) -> list[av.Packet]:
        """End of stream: whatever the encoder still holds (nothing for the realtime settings but AV1's)."""
        packets = list(self.context.encode(None))
        self.bytes += sum(p.size for p in packets)
        return packets
