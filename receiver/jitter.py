"""The receiver's video jitter buffer: aiortc's, made to drain and to give up on lost frames.

aiortc's video jitter buffer has two habits that wreck a low-bitrate real-time stream on a lossy link:

- It hands out at most one complete frame per arriving packet. After a hole is filled (a NACKed packet
  retransmitted), the frames queued behind it leave one per new packet: the backlog never shrinks, latency
  stays up by that many frames, and the last frames of a stream never leave at all.
- It waits for a missing packet until 512 later packets arrive. At ~1 packet per frame that is more than a
  minute of video, so a packet that retransmission cannot recover (an outage longer than the sender's RTP
  history, a lost retransmission) stalls the picture for a minute.

`DrainingJitterBuffer` hands every complete frame to the decoder as soon as it is complete (its last packet,
the one with the RTP marker bit, is in: no wait for the next frame's first packet), repeats the NACK for a
hole every `NACK_RETRY_S` (aiortc asks only once), and gives up on
a hole once the frames waiting behind it are more than `MAX_WAIT_S` of media time older than the newest
packet: it drops them, then drops every frame up to the next keyframe (frames in between reference what was
lost and would decode as garbage), asking the sender for one with an RTCP PLI at once and every
`PLI_RETRY_S` until it comes. The receiver conceals the skipped span by latent interpolation.

It is installed on each video `RTCRtpReceiver` of a peer connection before media flows. aiortc has no public
hook for this, so `install` reaches private attributes of `RTCRtpReceiver` by name (`_PRIVATE`), and fails
loudly (not silently falling back) if a future aiortc renames them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from aiortc import RTCPeerConnection, RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, RtpPacket
from aiortc.utils import uint16_add

# Give up on a missing packet once the frames waiting behind it are this much older (media time) than the
# newest packet: room for two NACK round trips (the fault lab's worst RTT is ~260 ms) plus the frame
# interval it takes to notice the loss.
MAX_WAIT_S = 0.8
# aiortc NACKs a missing packet once, when a later one reveals the gap; a lost NACK or retransmission is never
# asked for again. While a hole blocks the buffer, NACK what is still missing again this often (about the
# lab's worst RTT: sooner would only duplicate retransmissions under way).
NACK_RETRY_S = 0.25
# At most this many sequence numbers per repeated NACK, and each of them repeated at most NACK_REPEATS times
# (on a congested link retransmissions only add load).
NACK_MAX = 16
NACK_REPEATS = 2
# While waiting for a keyframe after giving up, ask again this often (a PLI is an RTCP packet: it can be lost).
PLI_RETRY_S = 0.5
# aiortc's own video buffer size (packets).
CAPACITY = 512
CLOCK_RATE = 90_000
_PRIVATE = ("_RTCRtpReceiver__jitter_buffer", "_RTCRtpReceiver__decoder_queue", "_RTCRtpReceiver__timestamp_mapper",
            "_RTCRtpReceiver__decoder_thread", "_RTCRtpReceiver__codecs", "_RTCRtpReceiver__nack_generator",
            "_send_rtcp_nack", "_send_rtcp", "_RTCRtpReceiver__rtcp_ssrc")


def is_keyframe(mime: str, data: bytes) -> bool:
    """Whether a depayloaded frame can be decoded on its own (VP8 key frame, H.264 IDR)."""
    if not data:
        return False
    if mime.lower() == "video/vp8":
        return data[0] & 0x01 == 0  # VP8 frame tag: bit 0 is 0 for key frames (RFC 6386 9.1)
    if mime.lower() == "video/h264":
        # aiortc's H.264 depayloader writes Annex B: NAL units after 00 00 01 start codes; IDR is type 5.
        start = data.find(b"\x00\x00\x01")
        while start != -1 and start + 3 < len(data):
            if data[start + 3] & 0x1F == 5:
                return True
            start = data.find(b"\x00\x00\x01", start + 3)
        return False
    return True  # unknown codec: never hold frames back


def starts_frame(mime: str, payload: bytes) -> bool:
    """Whether an RTP packet is its frame's first (VP8 payload descriptor: S bit set, partition 0). Other codecs:
    assumed, as aiortc does."""
    if mime.lower() == "video/vp8":
        return bool(payload) and payload[0] & 0x10 != 0 and payload[0] & 0x07 == 0
    return True


def _ts_after(a: int, b: int) -> int:
    """RTP timestamp a minus b, modulo 2**32, as a signed number."""
    d = (a - b) & 0xFFFFFFFF
    return d - (1 << 32) if d >= 1 << 31 else d


class DrainingJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer that drains every complete frame and skips unrecoverable holes."""

    def __init__(self, receiver: RTCRtpReceiver, capacity: int = CAPACITY, max_wait_s: float = MAX_WAIT_S,
                 clock: Callable[[], float] = time.monotonic, spawn: Callable = asyncio.ensure_future):
        super().__init__(capacity, is_video=True)
        self._receiver = receiver
        self._spawn = spawn  # runs the receiver's NACK coroutine
        self._max_wait_ticks = int(max_wait_s * CLOCK_RATE)
        self._clock = clock
        self.awaiting_keyframe = False
        self._last_pli = 0.0
        self._hole_nacked: float | None = None  # when the hole at the head was last NACKed
        self._repeats: dict[int, int] = {}  # sequence number -> times NACKed again by us
        self._skip_began: float | None = None
        self._last_released: int | None = None  # RTP timestamp of the last frame handed out
        # Counts, for the receiver's stats.
        self.skips = 0  # holes given up on
        self.frames_skipped = 0  # complete or partial frames dropped with them, or while awaiting a keyframe
        self.plis = 0
        self.renacks = 0  # NACKs repeated for a hole (see NACK_RETRY_S)
        self.recoveries_ms: list[float] = []  # from each skip to the keyframe that ended it
        self.bytes_received = 0  # RTP payload bytes that reached the buffer (the live view's kbps)
        self.frames_by_codec: dict[str, int] = {}  # frames handed to the decoder, by codec name (VP8, H264)
        # Told of each packet as it arrives (receiver/feedback.py: the transport feedback), with the arrival time.
        self.on_arrival: Callable[[RtpPacket, float], None] | None = None

    # -- aiortc's entry point ------------------------------------------------------------------------
    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        self.bytes_received += len(packet.payload)
        if self.on_arrival is not None:
            self.on_arrival(packet, self._clock())
        pli, _ = super().add(packet)  # places the packet (aiortc's misorder and overflow rules); releases nothing
        frames = self._drain()
        if self._stale(packet):
            self._skip_to(packet)
            pli = True
            frames += self._drain()  # the newest frame may be whole already (and a keyframe)
        else:
            self._renack(packet)
        now = self._clock()
        if self.awaiting_keyframe and now - self._last_pli >= PLI_RETRY_S:
            pli = True
        if pli:
            self._last_pli = now
            self.plis += 1
        if not frames:
            return pli, None
        # aiortc queues the frame we return with the arriving packet's codec; the ones before it go to its decoder
        # queue first, in order. Where the codec changed mid-call (sender/payload.py) and the last frame is of
        # another codec than that packet, every frame goes from here, each with its own codec.
        last, codec = frames[-1]
        if codec is self._codec(packet):
            self._enqueue(frames[:-1])
            return pli, last
        self._enqueue(frames)
        return pli, None

    def send_feedback(self, media_ssrc: int, fci: bytes) -> None:
        """Send an RTCP application-layer feedback message (RFC 4585, PSFB FMT 15) about `media_ssrc` with this FCI
        (protocol/feedback.py), as aiortc sends its PLIs: from the receiver's RTCP SSRC, once it has one."""
        rtcp_ssrc = getattr(self._receiver, "_RTCRtpReceiver__rtcp_ssrc", None)
        if rtcp_ssrc is not None:
            self._spawn(self._receiver._send_rtcp(RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=media_ssrc,
                                                                 fci=fci)))

    def _remove_frame(self, sequence_number: int) -> None:
        return None  # frames leave through _drain only

    def _drain(self) -> list[tuple[JitterFrame, object]]:
        """Every complete frame at the head, with its codec (its first packet's payload type): its packets
        contiguous up to one with the RTP marker bit (the frame's last), or up to the next frame's first packet
        (aiortc's own rule). A head frame whose first packet is missing (lost before the first packet that arrived,
        or before a skip) is dropped, and the frames after it wait for a keyframe: they reference it."""
        frames = []
        while True:
            packets: list[RtpPacket] = []
            complete = False
            for count in range(self.capacity):
                held = self._packets[(self._origin + count) % self.capacity]
                if held is None:
                    break
                if packets and held.timestamp != packets[0].timestamp:
                    complete = True
                    break
                packets.append(held)
                if held.marker:
                    complete = True
                    break
            if not (complete and packets):
                return frames
            self.remove(len(packets))
            self._last_released = packets[0].timestamp
            frame = JitterFrame(data=b"".join(p._data for p in packets), timestamp=packets[0].timestamp)
            codec = self._codec(packets[0])
            mime = codec.mimeType
            if not starts_frame(mime, packets[0].payload):
                self.frames_skipped += 1
                self._await_keyframe()
            elif self.awaiting_keyframe and not is_keyframe(mime, frame.data):
                self.frames_skipped += 1  # it references what was lost
            else:
                if self.awaiting_keyframe:
                    self.awaiting_keyframe = False
                    self.recoveries_ms.append(round((self._clock() - self._skip_began) * 1000, 1))
                frames.append((frame, codec))
                name = mime.split("/")[-1]
                self.frames_by_codec[name] = self.frames_by_codec.get(name, 0) + 1

    # -- giving up on a hole -------------------------------------------------------------------------
    def _oldest_held(self) -> RtpPacket | None:
        for count in range(self.capacity):
            held = self._packets[(self._origin + count) % self.capacity]
            if held is not None:
                return held
        return None

    def _stale(self, newest: RtpPacket) -> bool:
        """A hole blocks the buffer and waiting longer for it would hand out frames more than MAX_WAIT_S (media
        time) behind the newest packet. The missing packets belong to frames after the last one handed out, so
        a hole at the head is dated by that frame; else by the oldest packet still held (an incomplete frame)."""
        oldest = self._oldest_held()
        if oldest is None:
            return False
        head_missing = self._packets[self._origin % self.capacity] is None
        since = self._last_released if head_missing and self._last_released is not None else oldest.timestamp
        return _ts_after(newest.timestamp, since) > self._max_wait_ticks

    def _renack(self, newest: RtpPacket) -> None:
        """NACK the packets a hole at the head still misses, every NACK_RETRY_S after aiortc's own first NACK."""
        now = self._clock()
        if self._packets[self._origin % self.capacity] is not None or self._oldest_held() is None:
            self._hole_nacked = None
            return
        if self._hole_nacked is None:  # a new hole: aiortc NACKed it just now
            self._hole_nacked = now
        if now - self._hole_nacked < NACK_RETRY_S:
            return
        missing = []
        for count in range(min(uint16_add(newest.sequence_number, -self._origin), self.capacity)):
            seq = uint16_add(self._origin, count)
            if self._packets[seq % self.capacity] is None and self._repeats.get(seq, 0) < NACK_REPEATS:
                missing.append(seq)
            if len(missing) == NACK_MAX:
                break
        if missing:
            self._hole_nacked = now
            self.renacks += 1
            self._repeats = {seq: self._repeats.get(seq, 0) + 1 for seq in missing}  # only the current hole's
            self._spawn(self._receiver._send_rtcp_nack(newest.ssrc, missing))

    def _skip_to(self, newest: RtpPacket) -> None:
        """Drop every packet of frames older than `newest`'s and wait for a keyframe."""
        if self._packets[newest.sequence_number % self.capacity] is not newest:
            return  # aiortc's rules did not place it (too old): nothing to skip to
        start = newest.sequence_number
        while True:  # keep the packets of the newest frame that came before it
            before = self._packets[uint16_add(start, -1) % self.capacity]
            if before is None or before.timestamp != newest.timestamp:
                break
            start = uint16_add(start, -1)
        dropped_ts = set()
        for count in range(uint16_add(start, -self._origin)):
            held = self._packets[(self._origin + count) % self.capacity]
            if held is not None:
                dropped_ts.add(held.timestamp)
        self.remove(uint16_add(start, -self._origin))
        self._forget_missing(start)
        self._last_released = None
        self.skips += 1
        self.frames_skipped += len(dropped_ts)
        self._await_keyframe()

    def _forget_missing(self, start: int) -> None:
        """Stop aiortc NACKing the packets given up on (everything before `start`). It NACKs every packet still
        missing each time a new one goes missing: on a congested link the retransmissions of abandoned packets
        are lost again and asked for again, and the link collapses (measured: 3x the media's packets)."""
        nack = getattr(self._receiver, "_RTCRtpReceiver__nack_generator")
        nack.missing = {seq for seq in nack.missing if uint16_add(seq, -start) < 0x8000}

    def _await_keyframe(self) -> None:
        if not self.awaiting_keyframe:
            self.awaiting_keyframe = True
            self._skip_began = self._clock()

    # -- aiortc's receiver, by name ------------------------------------------------------------------
    def _codec(self, packet: RtpPacket):
        return getattr(self._receiver, "_RTCRtpReceiver__codecs")[packet.payload_type]

    def _enqueue(self, frames: list[tuple[JitterFrame, object]]) -> None:
        """What aiortc's `_handle_rtp_packet` does with the frame `add` returns, for other frames: each goes to the
        decoder thread with its codec (which opens a new decoder when the codec changes)."""
        if not frames or getattr(self._receiver, "_RTCRtpReceiver__decoder_thread") is None:
            return
        mapper = getattr(self._receiver, "_RTCRtpReceiver__timestamp_mapper")
        queue = getattr(self._receiver, "_RTCRtpReceiver__decoder_queue")
        for frame, codec in frames:
            frame.timestamp = mapper.map(frame.timestamp)
            queue.put((codec, frame))

    def stats(self) -> dict:
        return {"jitter_skips": self.skips, "frames_skipped_jitter": self.frames_skipped, "pli_sent": self.plis,
                "nack_repeats": self.renacks, "recovery_ms": list(self.recoveries_ms),
                "frames_by_codec": dict(self.frames_by_codec)}


def install(pc: RTCPeerConnection) -> list[DrainingJitterBuffer]:
    """Give every video receiver of `pc` a DrainingJitterBuffer (call after setRemoteDescription, before media)."""
    buffers = []
    for receiver in pc.getReceivers():
        if receiver.track is None or receiver.track.kind != "video":
            continue
        missing = [name for name in _PRIVATE if not hasattr(receiver, name)]
        if missing:
            raise RuntimeError(f"aiortc's RTCRtpReceiver has no {', '.join(missing)}: this aiortc version is not "
                               "supported by receiver.jitter (pin aiortc or update the jitter buffer)")
        buffer = DrainingJitterBuffer(receiver)
        setattr(receiver, "_RTCRtpReceiver__jitter_buffer", buffer)
        buffers.append(buffer)
    return buffers
