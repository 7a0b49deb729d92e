"""Transport feedback (Config.feedback): how the video's packets arrived, sent by the receiver in RTCP.

It travels as an RTCP application-layer feedback message (RFC 4585 section 6.4: payload-specific feedback, FMT 15)
naming the video's SSRC, its FCI our own (`NAME`, as REMB's is "REMB"): aiortc routes it to that SSRC's sender by
the media SSRC and ignores its content, vsae's sender reads it (sender/rtcp.py). Not a data-channel message: SCTP
acknowledges every message it receives, and on the fault lab's 15 kbps cap those acknowledgements of five feedbacks
a second took 3.7 kbps of the forward path (93 bytes each), a quarter of the link; RTCP is unacknowledged.

FCI: NAME, then network order: version (u8), 3 bytes zero, seq (u16), packets (u16), bytes (u32), span_us (u32),
queue_us (u32): 24 bytes. See `Feedback`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .messages import ProtocolError

NAME = b"VSAE"
VERSION = 1
_LAYOUT = struct.Struct("!4sB3xHHIII")
FCI_BYTES = _LAYOUT.size
# seq wraps here (u16): the sender keeps the newest by serial-number arithmetic.
SEQ_MODULO = 1 << 16
MAX_SPAN_US = 60_000_000
# `Feedback.bytes` counts each packet's payload and its RTP fixed header (extensions, SRTP and lower layers left out):
# the size both ends give an RTP packet (sender/rtcp.py sizes its history's packets the same way).
RTP_HEADER = 12


@dataclass(frozen=True)
class Feedback:
    """The video's RTP packets that arrived since the receiver's last feedback: `packets` of them, `bytes` (payload
    and RTP fixed header), arriving over `span_us` (from the last arrival the previous feedback counted to the last
    this one counts); `queue_us`: the least one-way delay among them (abs-send-time against the receiver's clock)
    above the least seen in the call, the queue they waited in. `seq` numbers the feedbacks (modulo SEQ_MODULO)."""

    seq: int
    packets: int
    bytes: int
    span_us: int
    queue_us: int


def pack(feedback: Feedback) -> bytes:
    """The FCI of `feedback` (values clamped to their fields)."""
    return _LAYOUT.pack(NAME, VERSION, feedback.seq % SEQ_MODULO, min(feedback.packets, 0xFFFF),
                        min(feedback.bytes, 0xFFFFFFFF), min(feedback.span_us, MAX_SPAN_US), min(feedback.queue_us, MAX_SPAN_US))


def is_feedback(fci: bytes) -> bool:
    """Whether an application-layer FCI is vsae's transport feedback (not a REMB, nor anyone else's)."""
    return fci[:4] == NAME


def unpack(fci: bytes) -> Feedback:
    """A vsae feedback FCI; raises ProtocolError for anything else."""
    if len(fci) != FCI_BYTES:
        raise ProtocolError("bad_encoding", f"transport feedback of {len(fci)} bytes, expected {FCI_BYTES}")
    name, version, seq, packets, size, span_us, queue_us = _LAYOUT.unpack(fci)
    if name != NAME:
        raise ProtocolError("bad_encoding", "not a vsae transport feedback")
    if version != VERSION:
        raise ProtocolError("version", f"transport feedback version {version}, this side speaks {VERSION}")
    if span_us > MAX_SPAN_US or queue_us > MAX_SPAN_US:
        raise ProtocolError("bad_value", "transport feedback: a span or queue over a minute")
    return Feedback(seq=seq, packets=packets, bytes=size, span_us=span_us, queue_us=queue_us)


def newer(seq: int, than: int | None) -> bool:
    """Whether feedback `seq` is newer than `than` (None: none taken yet), modulo SEQ_MODULO."""
    return than is None or 0 < (seq - than) % SEQ_MODULO < SEQ_MODULO // 2
