"""What the video sender hears in RTCP, handed to the bandwidth estimate (sender/bwe.py) and the encoder.

aiortc parses every RTCP packet for a sender in `RTCRtpSender._handle_rtcp_packet` and uses receiver reports,
REMB and PLI/FIR only for its own statistics and encoders, which vsae bypasses (sender/encoder.py); it offers
no public callback. `observe` wraps that private coroutine on one sender instance and passes each packet on
unchanged, after telling `on_report(fraction_lost, rtt_s, expected, received)` about each receiver report block
for this sender's SSRC (`received`: the packets that arrived since the last block and their bytes, sized from
aiortc's packet history), `on_remb(kbps)` about each REMB that names it and `on_feedback(fci)` about each of vsae's
transport feedbacks for it (an application-layer message, protocol/feedback.py; aiortc routes it here by its media
SSRC and ignores it); a PLI or FIR lands in the sender's
`_send_keyframe`, which only flags aiortc's own encoder, so that is replaced by `on_keyframe`. The RTT is computed here from the report's
LSR and DLSR (RFC 3550, A.8), not read from aiortc's private state. `gate_retransmissions` puts a decision
(sender/rtx.py) in front of aiortc's `_retransmit`, which resends every NACKed packet at once. The names
reached are `_PRIVATE` and `_RTX_PRIVATE`; a future aiortc without them fails at install with RtcpHookError,
never silently without an estimate.
"""

from __future__ import annotations

import inspect
from typing import Callable

from aiortc import RTCRtpSender
from aiortc.clock import current_ntp_time
from aiortc.rtcrtpsender import RTP_HISTORY_SIZE
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, RtcpRrPacket, RtcpSrPacket, unpack_remb_fci

from protocol import feedback as transport_feedback
from protocol.feedback import RTP_HEADER  # added to a packet's payload for its size (extensions and SRTP left out)

_PRIVATE = ("_handle_rtcp_packet", "_send_keyframe", "_ssrc")
# The retransmission path: the coroutine that resends one sequence number, and the packet history it reads.
_RTX_PRIVATE = ("_retransmit", "_RTCRtpSender__rtp_history")
# LSR and DLSR are in units of 1/65536 s (the middle 32 bits of an NTP timestamp).
NTP_SHORT = 65536.0
# An RTT above this is no measurement (a report for an SR from before a wrap, or clocks that disagree).
MAX_RTT_S = 10.0


class RtcpHookError(RuntimeError):
    pass


def rtt_from_report(lsr: int, dlsr: int, now_ntp: int | None = None) -> float | None:
    """Seconds from sending our SR to the report about it arriving, less the receiver's hold time (or None)."""
    if not lsr:
        return None  # no SR received yet
    now_ntp = current_ntp_time() if now_ntp is None else now_ntp
    arrival = (now_ntp >> 16) & 0xFFFFFFFF
    rtt = ((arrival - lsr - dlsr) & 0xFFFFFFFF) / NTP_SHORT
    return rtt if rtt < MAX_RTT_S else None


def report_time(lsr: int, dlsr: int) -> float | None:
    """When the receiver wrote a report, on this sender's clock less the one-way delay of the SR it answers (seconds,
    modulo 2^16): the SR's send time (LSR) plus how long the receiver held it (DLSR). The difference of two reports' is
    the receiver's own interval between them, free of the return path's and this side's event loop's delays."""
    return (lsr + dlsr) / NTP_SHORT if lsr else None


def received_since(history: dict, first: int, last: int, lost: int,
                   nacked: Callable[[int], bool] = lambda seq: False) -> tuple[int, int] | None:
    """(packets, bytes with RTP headers) that arrived of the sequence numbers `first`..`last` (extended), `lost` of
    them lost: the count from the report, the bytes that count times the mean size of those packets still in aiortc's
    history and not `nacked` (the lost ones are not the average: a keyframe's large packets, sent back to back, are
    the ones a full queue drops). None when fewer than half of them are there: too few to size the rest by."""
    expected = last - first + 1
    if expected <= 0:
        return None
    sizes, kept = [], []
    for seq in range(first, last + 1):
        packet = history.get(seq % RTP_HISTORY_SIZE)
        if packet is not None and packet.sequence_number == seq & 0xFFFF:
            sizes.append(len(packet.payload) + RTP_HEADER)
            if not nacked(packet.sequence_number):
                kept.append(sizes[-1])
    if 2 * len(sizes) < expected:
        return None
    sizes = kept or sizes
    received = min(expected, max(0, expected - lost))
    return received, round(received * sum(sizes) / len(sizes))


def observe(sender: RTCRtpSender,
            on_report: Callable[[float, float | None, int | None, tuple[int, int, float | None] | None], None],
            on_remb: Callable[[float], None], on_keyframe: Callable[[], None],
            nacked: Callable[[int], bool] = lambda seq: False,
            on_feedback: Callable[[bytes], None] = lambda fci: None) -> None:
    """Call `on_report(fraction_lost 0..1, rtt_s or None, packets expected since the last report or None, (packets,
    bytes, seconds between the two reports at the receiver or None) received since the last report or None)`,
    `on_remb(kbps)` and `on_keyframe()` (PLI, FIR) as RTCP reaches `sender`. `nacked(seq)`: whether the receiver
    NACKed that sequence number (its size is then not a received packet's). `on_feedback(fci)`: vsae's transport
    feedback about this sender's SSRC (an application-layer message, protocol/feedback.py), its FCI unparsed."""
    missing = [name for name in _PRIVATE if not hasattr(sender, name)]
    handler = getattr(sender, "_handle_rtcp_packet", None)
    if missing or not inspect.iscoroutinefunction(handler):
        raise RtcpHookError(f"this aiortc's RTCRtpSender lacks {', '.join(missing) or '_handle_rtcp_packet as a coroutine'}; "
                            "sender/rtcp.py needs updating for it")
    history = getattr(sender, _RTX_PRIVATE[1], None)
    if not isinstance(history, dict):
        raise RtcpHookError(f"this aiortc's RTCRtpSender lacks {_RTX_PRIVATE[1]}; sender/rtcp.py needs updating for it")

    # The extended highest sequence number, the cumulative loss and the time (report_time) of the last report.
    previous: list[tuple[int, int, float | None] | None] = [None]

    async def handle(packet) -> None:
        ssrc = sender._ssrc
        if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            for report in packet.reports:
                if report.ssrc == ssrc:
                    written = report_time(report.lsr, report.dlsr)
                    last, previous[0] = previous[0], (report.highest_sequence, report.packets_lost, written)
                    expected = received = None
                    if last is not None and report.highest_sequence >= last[0]:
                        expected = report.highest_sequence - last[0]
                        count = received_since(history, last[0] + 1, report.highest_sequence, report.packets_lost - last[1],
                                               nacked)
                        interval = None if written is None or last[2] is None else (written - last[2]) % NTP_SHORT
                        received = None if count is None else (*count, interval)
                    on_report(report.fraction_lost / 256.0, rtt_from_report(report.lsr, report.dlsr), expected, received)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP and transport_feedback.is_feedback(packet.fci):
            if packet.media_ssrc == ssrc:
                on_feedback(packet.fci)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                bitrate, ssrcs = 0, []  # not a REMB (another application-layer message): aiortc ignores it too
            if ssrc in ssrcs:
                on_remb(bitrate / 1000.0)
        await handler(packet)

    sender._handle_rtcp_packet = handle
    sender._send_keyframe = on_keyframe


def gate_retransmissions(sender: RTCRtpSender, allow: Callable[[int, int], bool]) -> None:
    """Retransmit a NACKed packet only when `allow(seq, size_bytes)` says so."""
    missing = [name for name in _RTX_PRIVATE if not hasattr(sender, name)]
    retransmit = getattr(sender, "_retransmit", None)
    history = getattr(sender, "_RTCRtpSender__rtp_history", None)
    if missing or not inspect.iscoroutinefunction(retransmit) or not isinstance(history, dict):
        raise RtcpHookError(f"this aiortc's RTCRtpSender lacks {', '.join(missing) or 'its retransmission path'}; "
                            "sender/rtcp.py needs updating for it")

    async def gated(sequence_number: int) -> None:
        packet = history.get(sequence_number % RTP_HISTORY_SIZE)
        if packet is None or packet.sequence_number != sequence_number:
            return  # no longer in the history: aiortc would resend nothing either
        if allow(sequence_number, len(packet.payload) + RTP_HEADER):
            await retransmit(sequence_number)

    sender._retransmit = gated
