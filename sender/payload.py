"""The video's RTP payload format, switched mid-call: VP8 and H.264 on one stream (one SSRC), as the shape asks.

aiortc sends one codec per transceiver: `RTCRtpSender.send` starts `_run_rtp(parameters.codecs[0])`, which stamps
every packet with that codec's payload type, and `_next_encoded_frame` packs each pre-encoded `av.Packet` with one
packetizer made for that codec. The receiver needs nothing new: aiortc's receiver looks up each packet's codec by
its payload type (RTX by its `apt`), and its decoder thread opens a new decoder when the codec changes. An SDP that
offers both codecs (protocol.peer.prefer_codec) is all it takes there; receiver/jitter.py keeps each frame's codec.

`install(sender, on_negotiated)` wraps private names of one sender instance (`_PRIVATE`):
- `send`: learns the payload types the answer kept for each codec and for their retransmission formats, and tells
  `on_negotiated(codecs)` which of ours the receiver took;
- `_run_rtp`: started with a stand-in for the first codec whose payload type is the current codec's;
- `_next_encoded_frame`: packs each packet with its own codec's packetizer (`av.Packet.opaque`, set by
  sender/encoder.py) and makes that codec the current one;
- `_retransmit`: a resent packet goes in the retransmission format of its own payload type (`__rtx_payload_type`).
A future aiortc without them fails at install with PayloadHookError, never silently on one codec.
"""

from __future__ import annotations

from typing import Callable

import av
from aiortc import RTCRtpCodecParameters, RTCRtpSender
from aiortc.codecs import get_encoder, is_rtx
from aiortc.rtcrtpsender import RTP_HISTORY_SIZE, RTCEncodedFrame

from protocol.peer import CODEC_MIME

_PRIVATE = ("send", "_run_rtp", "_next_encoded_frame", "_retransmit", "_enabled", "_RTCRtpSender__rtx_payload_type",
            "_RTCRtpSender__rtp_history")
CODEC_OF_MIME = {mime.lower(): name for name, mime in CODEC_MIME.items()}


class PayloadHookError(RuntimeError):
    pass


class CurrentCodec:
    """Stands for the codec aiortc's `_run_rtp` was started with; it reads `payloadType` for every packet."""

    def __init__(self, switch: "PayloadSwitch"):
        self._switch = switch

    def __getattr__(self, name: str):
        return getattr(self._switch.current, name)


class PayloadSwitch:
    """One sender's codecs as negotiated (`negotiated`: our codec name -> its parameters), the current one, and each
    change (`switches`: the codec and the RTP timestamp of its first frame)."""

    def __init__(self, on_negotiated: Callable[[tuple[str, ...]], None] | None = None):
        self.on_negotiated = on_negotiated
        self.negotiated: dict[str, RTCRtpCodecParameters] = {}
        self.rtx_of: dict[int, int] = {}  # payload type -> its retransmission format's
        self.current: RTCRtpCodecParameters | None = None
        self.packers: dict[str, object] = {}  # aiortc's packetizer per codec (VP8 keeps its picture id across runs)
        self.switches: list[dict] = []

    def learn(self, codecs: list[RTCRtpCodecParameters]) -> None:
        """The send parameters' codecs: the first is what aiortc starts with."""
        for codec in codecs:
            if is_rtx(codec):
                apt = codec.parameters.get("apt")
                if isinstance(apt, int):
                    self.rtx_of.setdefault(apt, codec.payloadType)
            else:
                name = CODEC_OF_MIME.get(codec.mimeType.lower())
                if name is not None:
                    self.negotiated.setdefault(name, codec)
        self.current = codecs[0] if codecs else None

    def codec_name(self) -> str | None:
        return None if self.current is None else CODEC_OF_MIME.get(self.current.mimeType.lower())

    def pack(self, packet: av.Packet) -> tuple[list[bytes], int]:
        """The RTP payloads of one encoded frame in its own codec's format, which becomes the current one."""
        name = packet.opaque if isinstance(packet.opaque, str) else self.codec_name()
        codec = self.negotiated.get(name)
        if codec is None:
            raise PayloadHookError(f"a {name} frame, but the receiver took only {', '.join(self.negotiated) or 'none'}")
        packer = self.packers.get(name)
        if packer is None:
            packer = self.packers[name] = get_encoder(codec)
        payloads, timestamp = packer.pack(packet)
        if codec is not self.current:
            self.current = codec
            self.switches.append({"codec": name, "payload_type": codec.payloadType, "rtp_timestamp": timestamp})
        return payloads, timestamp


def install(sender: RTCRtpSender, on_negotiated: Callable[[tuple[str, ...]], None] | None = None) -> PayloadSwitch:
    """Let `sender` (before negotiation) switch codec per frame; returns the switch (its negotiated codecs, once
    known, and each change)."""
    missing = [name for name in _PRIVATE if not hasattr(sender, name)]
    if missing:
        raise PayloadHookError(f"aiortc's RTCRtpSender has no {', '.join(missing)}: this aiortc version is not "
                               "supported by sender.payload (pin aiortc or update the codec switch)")
    switch = PayloadSwitch(on_negotiated)
    send, run_rtp, retransmit = sender.send, sender._run_rtp, sender._retransmit
    history = getattr(sender, "_RTCRtpSender__rtp_history")

    async def send_with(parameters):
        switch.learn(list(parameters.codecs))
        if switch.on_negotiated is not None:
            switch.on_negotiated(tuple(switch.negotiated))
        await send(parameters)

    async def run_rtp_with(codec):
        await run_rtp(CurrentCodec(switch) if switch.current is not None else codec)

    async def next_encoded_frame(codec) -> RTCEncodedFrame | None:
        data = await sender.track.recv()
        if not sender._enabled:
            return None
        if not isinstance(data, av.Packet):
            raise PayloadHookError("sender.payload packs encoded frames only (av.Packet), not raw frames")
        payloads, timestamp = switch.pack(data)
        return RTCEncodedFrame(payloads, timestamp, None) if payloads else None

    async def retransmit_with(sequence_number: int) -> None:
        packet = history.get(sequence_number % RTP_HISTORY_SIZE)
        if packet is not None and packet.sequence_number == sequence_number:
            setattr(sender, "_RTCRtpSender__rtx_payload_type", switch.rtx_of.get(packet.payload_type))
        await retransmit(sequence_number)

    sender.send, sender._run_rtp = send_with, run_rtp_with
    sender._next_encoded_frame, sender._retransmit = next_encoded_frame, retransmit_with
    return switch
