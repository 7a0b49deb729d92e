"""What the receiver's DTLS transports took in: every datagram of the call after ICE (the video's SRTP and SRTCP, the
data channels' DTLS records: SCTP data and acknowledgements) and their bytes, as aiortc counts them. A bandwidth
probe's timing (receiver/probes.py) reads the counts at each padding message: what arrived between two of them is
everything that crossed the link meanwhile, not only the video's packets and the messages this side sees.

aiortc keeps the counts private (`RTCDtlsTransport` reports them only through the whole connection's `getStats`), so
`DatagramCounter` reads them by name (`COUNTERS`) and fails loudly, not silently, if a future aiortc renames them (as
receiver/jitter.py does).
"""

from __future__ import annotations

from aiortc import RTCDtlsTransport, RTCPeerConnection

# The private counters read, by name.
COUNTERS = ("_RTCDtlsTransport__rx_packets", "_RTCDtlsTransport__rx_bytes")


class DatagramCounter:
    """`counter()`: (datagrams, their bytes: UDP payloads) the peer connection's DTLS transports received so far. Make it
    after setRemoteDescription (the transports exist from then on)."""

    def __init__(self, pc: RTCPeerConnection) -> None:
        self.pc = pc
        for transport in self.transports():
            missing = [name for name in COUNTERS if not hasattr(transport, name)]
            if missing:
                raise RuntimeError(f"aiortc's RTCDtlsTransport has no {', '.join(missing)}: this aiortc version is not "
                                   "supported by receiver.transport (pin aiortc or update the probes' datagram count)")

    def transports(self) -> list[RTCDtlsTransport]:
        """The connection's DTLS transports, each once (a bundled call has one)."""
        found: dict[int, RTCDtlsTransport] = {}
        for transceiver in self.pc.getTransceivers():
            transport = transceiver.receiver.transport
            if transport is not None:
                found[id(transport)] = transport
        if self.pc.sctp is not None:
            found[id(self.pc.sctp.transport)] = self.pc.sctp.transport
        return list(found.values())

    def __call__(self) -> tuple[int, int]:
        packets = size = 0
        for transport in self.transports():
            packets += getattr(transport, COUNTERS[0])
            size += getattr(transport, COUNTERS[1])
        return packets, size
